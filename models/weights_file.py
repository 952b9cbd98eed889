"""Networks published as a plain PyTorch state dict (syncnet_python's syncnet_v2.model, arcface_torch's
backbone.pth) loaded from a path a user gives: read as weights only, never unpickled as code, and every way the
file can be wrong told in one line naming the flag, the file and the fix."""
import os
import pickle

import torch

from common.errors import UserError, permission_denied

from .checkpoint import check_not_inflating, code_in


def read_state_dict(path, flag, fix):
    """The state dict in the file at `path`, or UserError "FLAG PATH: why; FIX"."""
    if not os.path.isfile(path):  # a pipe or a device (a link to /dev/zero) would be read without end
        raise UserError(f"{flag} {path}: no such file; {fix}")
    check_not_inflating(path, flag, fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = code_in(path)
        why = f"it calls {', '.join(sorted(unsafe)[:3])}, which can run code" if unsafe else "not plain weights"
        raise UserError(f"{flag} {path}: refusing to unpickle it ({why}); {fix}") from None
    except PermissionError:
        raise permission_denied(f"{flag} {path}") from None
    except Exception as error:
        raise UserError(f"{flag} {path}: not a PyTorch file ({type(error).__name__}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                              for key, value in state.items()):
        held = "a checkpoint holding more than weights" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise UserError(f"{flag} {path}: {held}, not a plain state dict; {fix}")
    return state


def load_state_dict_into(network, state, path, flag, fix):
    """`network` with `state` loaded, frozen, in eval mode; a state dict of another network is named by what does
    not fit. BatchNorm's batch counters may be missing (files saved before PyTorch 0.4.1 have none; eval ignores
    them)."""
    expected = network.state_dict()
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    wrong = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or wrong:
        reasons = [f"{len(keys)} {what}, e.g. {keys[0]}" for keys, what in
                   ((missing, "weights missing"), (unexpected, "unknown weights"), (wrong, "of another shape"))
                   if keys]
        raise UserError(f"{flag} {path}: not the network expected ({'; '.join(reasons)}); {fix}")
    network.load_state_dict(state, strict=False)
    network.requires_grad_(False)
    return network.eval()
