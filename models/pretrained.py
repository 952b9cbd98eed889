"""Loading the weights of frozen feature networks (VGG19, LPIPS' VGG16, the TREPA video encoder) the same way:
torchvision's weights enum (its download and cache), or a local .pth, with one clear line when neither works."""
import os

import torch

from common.errors import UserError

from .checkpoint import check_not_inflating


def pretrained_state(weights, enum, flag, description, keyword="pretrained"):
    """The state dict for `weights` (`keyword` for torchvision's `enum`, or a path); exits naming `flag` and the fix."""
    if weights == keyword:
        try:
            return enum.get_state_dict(progress=True)
        except Exception as error:  # no network, proxy, corrupt cache: all end the same way for the user
            filename = os.path.basename(enum.url)
            raise UserError(f"could not fetch {description} weights ({type(error).__name__}); put {filename} in "
                             f"{torch.hub.get_dir()}/checkpoints, or pass {flag} PATH to a state dict, "
                             f"or {flag} random") from None
    if not os.path.isfile(weights):
        raise UserError(f"{flag} {weights}: no such file; pass {keyword}, random or a {description} .pth path")
    check_not_inflating(weights, flag, f"pass a {description} .pth, {keyword} or random")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{flag} {weights}: cannot read it ({type(error).__name__}); "
                         f"pass a {description} .pth, {keyword} or random") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                              for key, value in state.items()):
        held = "a dict holding more than named tensors" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise UserError(f"{flag} {weights}: {held}, not a state dict; pass a {description} .pth, {keyword} or random")
    return state
