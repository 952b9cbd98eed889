"""Checkpoints in DINet's layout, written atomically, loaded with clear errors.

`netG_model_epoch_{N}.pth` = {"epoch": N + 1, "state_dict": {"net_g", "net_dI"[, "net_dV"]},
"optimizer": {...}} as DINet writes it, plus what a resume and a later stage need: "scheduler",
"rng", "global_step", "generator_config", "mouth_region_size", "audio_feature", "lab", "audio_window" and "options"
(every flag of the run that wrote it). Trained with --ema,
state_dict's "net_g" is the weights' moving average (what dubbing and the next stage load) and
"net_g_training" the trained weights a resume continues from.
Keys with or without DataParallel's `module.` prefix load.

SyncNets: {"state_dict": {"net": ...}} as DINet's `syncnet_256mouth.pth`, plus "syncnet_config" (architecture,
mouth size, input size, audio feature) when we trained it; a published file is read as DINet's architecture
with the audio width of its weights.
"""
import os
import pickle
import re
import zipfile
import zlib

import numpy as np
import torch

from common.errors import UserError, permission_denied
from common.files import write_atomically

from .dinet import DINet, GeneratorConfig
from .syncnet import SyncNetConfig, build_syncnet

# numpy's reconstruction of uint32 arrays (earlier versions stored the RNG states so), under numpy 1's and 2's
# module names: the only globals a checkpoint may name beyond the plain types torch's weights_only loader takes
_reconstruct = np.zeros(0, np.uint32).__reduce__()[0]
LEGACY_RNG_GLOBALS = [(_reconstruct, "numpy.core.multiarray._reconstruct"),
                      (_reconstruct, "numpy._core.multiarray._reconstruct"),
                      np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def checkpoint_digest(obj):
    """Two CRC-32s of `obj` (as zip and PNG use; every error of up to 32 bits is caught), in a fixed order (dict
    keys sorted): of every tensor's bytes, read from its memory in place, and of everything else: each key, each
    value with its type, each tensor's dtype and shape. Stored in the checkpoint and checked on load, because
    torch.load reads flipped bytes without complaint."""
    tensors = values = 0

    def add(text):
        nonlocal values
        values = zlib.crc32(text.encode(), values)

    def visit(value):
        nonlocal tensors
        if isinstance(value, (torch.Tensor, np.ndarray)):  # arrays: the RNG states of earlier versions
            flat = (value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                    if isinstance(value, torch.Tensor) else np.ascontiguousarray(value).reshape(-1).view(np.uint8))
            tensors = zlib.crc32(memoryview(flat), tensors)
            add(f"tensor {value.dtype} {tuple(value.shape)}\0")
        elif isinstance(value, dict):
            add(f"dict {len(value)}\0")
            for key in sorted(value, key=str):
                add(f"{type(key).__name__} {key!r}\0")
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            add(f"list {len(value)}\0")
            for item in value:
                visit(item)
        else:  # int, float, str, bool, None: the \0 ends the repr, which never holds one
            add(f"{type(value).__name__} {value!r}\0")
    visit(obj)
    return f"crc32:{tensors:08x}:{values:08x}"


def atomic_save(obj, path):
    """torch.save with an integrity checksum, straight into the temporary file of write_atomically (no copy of
    the checkpoint in memory)."""
    obj = {**obj, "integrity": checkpoint_digest(obj)}
    write_atomically(path, lambda f: torch.save(obj, f), what="checkpoint", rerun="run again with --resume auto")


class RefusedCheckpoint(UserError):
    """A file that is not plain weights: no crash writes one, so --resume auto stops at it instead of skipping it."""


def load_checkpoint(path, flag="--resume", expected="a netG_model_epoch_N.pth", needs=None):
    """The checkpoint at `path` (its integrity checked), or exit naming `flag`, the file and the fix; `needs`:
    the network it must hold, readable as that kind ("net_g": a generator's, "net": a SyncNet's).
    Unpickled with weights_only: tensors and plain values, never code."""
    if os.path.isdir(path):  # a run's result folder, say
        raise UserError(f"{flag} {path}: a folder, not a checkpoint file; pass {expected} in it")
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such checkpoint file; check the path")
    check_not_inflating(path, flag, f"pass {expected}")
    with torch.serialization.safe_globals(LEGACY_RNG_GLOBALS):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if not zipfile.is_zipfile(path):  # torch.save writes a zip: this is something else
                checkpoint = None
            else:
                unsafe = code_in(path)
                reason = (f"it calls {', '.join(sorted(unsafe)[:3])}, which can run code" if unsafe else
                          "it holds objects other than tensors and plain values, or is damaged")
                raise RefusedCheckpoint(f"{flag} {path}: refusing to unpickle it, it is not a plain weights file "
                                        f"({reason}); delete it and use a checkpoint of tensors and plain values "
                                        f"only, as this repository and DINet write") from None
        except PermissionError:
            raise permission_denied(f"{flag} {path}") from None
        except Exception:
            checkpoint = None
    if checkpoint is None:
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive; its index comes last
        raise UserError(f"{flag} {path}: cannot read this checkpoint; " + (
            "it is truncated or damaged (a save or copy that did not finish), use an earlier checkpoint or copy it "
            "again" if zip_start else f"it is not a PyTorch file, pass {expected}"))
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{flag} {path}: not a DINet checkpoint (no 'state_dict'); pass {expected}")
    expanded = next((name for name, tensor in tensors_in(checkpoint)
                     if tensor.untyped_storage().nbytes() < tensor.numel() * tensor.element_size()), None)
    if expanded:  # before anything copies it (the checksum, a network of its shape), each value as much memory
        raise RefusedCheckpoint(f"{flag} {path}: refusing to read it, its {expanded} repeats a few stored values as "
                                f"far more (a file crafted to take far more memory than its size); pass {expected}")
    check_integrity(checkpoint, path, flag)
    try:
        check_recorded(checkpoint)
    except ValueError as error:
        raise UserError(f"{flag} {path}: {error}; pass {expected}") from None
    if needs:
        kind, read_config, build = NETWORKS[needs]
        if needs not in checkpoint["state_dict"]:
            raise UserError(f"{flag} {path}: not a {kind} checkpoint (no state_dict['{needs}']); pass {expected}")
        try:
            config = read_config(checkpoint)
            with torch.device("meta"):  # allocates nothing: a configuration its weights do not fit is refused unbuilt
                load_network(build(config), checkpoint, needs, path, flag, assign=True)
        except ValueError as error:  # a recorded configuration this version cannot build
            raise UserError(f"{flag} {path}: {error}; pass {expected}") from None
        except (KeyError, IndexError, AttributeError, TypeError) as error:
            what = f"no {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
            raise UserError(f"{flag} {path}: its {needs} weights are not a {kind}'s ({what}); pass {expected}") from None
        # training skips non-finite steps, so such weights come from elsewhere: they would dub a blank square
        broken = next((key for key, value in checkpoint["state_dict"][needs].items()
                       if value.is_floating_point() and not torch.isfinite(value).all()), None)
        if broken:
            raise UserError(f"{flag} {path}: its {needs} weight {broken} holds NaN or infinite values (a damaged or "
                            f"crafted file); pass {expected}")
    return checkpoint


# what a checkpoint records beside its weights that dubbing, training and the app read, and the type of each
RECORDED = {"epoch": int, "iteration": int, "global_step": int, "mouth_region_size": int, "audio_feature": str,
            "lab": str, "validation_split": dict, "validation_best": dict, "audio_window": int, "options": dict}
PLAIN = (str, int, float, bool, type(None))  # the types of a recorded flag's value
LARGEST_MOUTH = 1024  # four times DINet's largest: a face crop of 1664 x 1280 pixels


def recordable_mouth_size(size):
    """Whether a file may record `size` (an int) as its mouth size: a multiple of 8 from 16 to LARGEST_MOUTH."""
    return 16 <= size <= LARGEST_MOUTH and size % 8 == 0


def check_recorded(checkpoint):
    """A ValueError naming the first value recorded beside the weights that is not what this repository writes
    there: a crafted file's would end in a traceback where it is read, or as a mouth size, in crops of any size."""
    for key, kind in RECORDED.items():
        value = checkpoint.get(key)
        if value is not None and type(value) is not kind:
            raise ValueError(f"its {key} ({str(value)[:40]}) is not {'an' if kind is int else 'a'} {kind.__name__}")
    size = checkpoint.get("mouth_region_size")
    if size is not None and not recordable_mouth_size(size):
        raise ValueError(f"its mouth_region_size {size} is not a multiple of 8 from 16 to {LARGEST_MOUTH}")
    options = checkpoint.get("options") or {}
    if not all(type(name) is str and type(value) in PLAIN for name, value in options.items()):
        raise ValueError("its options are not flags with plain values")
    videos = (checkpoint.get("validation_split") or {}).get("videos", [])
    if not isinstance(videos, list) or not all(isinstance(video, str) for video in videos):
        raise ValueError("its validation_split's videos are not a list of names")


def recorded_options(opt):
    """A run's flags as its checkpoints record them: plain values, which json and a weights_only load take."""
    return {name: value if type(value) in PLAIN else str(value) for name, value in vars(opt).items()}


def check_not_inflating(path, flag, fix):
    """A RefusedCheckpoint "FLAG PATH: ...; FIX" when the torch.save file `path` holds compressed entries: torch.save
    stores them as they are, and a crafted file's could inflate to far more memory than its size when read."""
    try:
        with zipfile.ZipFile(path) as archive:
            compressed = any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # not a zip (older torch.save) or unreadable: the load says
        return
    if compressed:
        raise RefusedCheckpoint(f"{flag} {path}: refusing to read it, its entries are compressed, which torch.save "
                                f"never writes (a file crafted to inflate to far more memory than its size); {fix}")


def code_in(path):
    """The functions and classes beyond plain weights that unpickling the torch.save file `path` would call,
    read without unpickling it."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a damaged file
        return []


def tensors_in(value, name=""):
    """(where, tensor) of every tensor in a checkpoint's dicts and lists, where as "state_dict.net_g.conv.weight"."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, (dict, list, tuple)):
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            yield from tensors_in(item, f"{name}.{key}" if name else str(key))


def check_integrity(checkpoint, path, flag):
    """Remove the checksum from `checkpoint`; a UserError unless it matches what was loaded."""
    stored = checkpoint.pop("integrity", None)
    if stored is None:  # DINet's own checkpoints carry none
        return
    digest = checkpoint_digest(checkpoint)
    # "crc32:T": written before the checksum covered more than the tensors; those are still checked
    if stored not in (digest, digest.rsplit(":", 1)[0]):
        raise UserError(f"{flag} {path}: corrupt checkpoint (what it holds does not match the checksum written with "
                         f"it); use an earlier checkpoint, or --resume auto to take the newest good one")


def checkpoint_name(prefix, epoch, iteration=None):
    """DINet's `{prefix}_{epoch}.pth` after a whole epoch; `{prefix}_{epoch}_iter_{I}.pth` after I iterations of it."""
    return f"{prefix}_{epoch}.pth" if iteration is None else f"{prefix}_{epoch}_iter_{iteration}.pth"


def checkpoints_newest_first(folder, prefix):
    """(progress, path) of the run's checkpoints in `folder`, the furthest into training first."""
    pattern = re.compile(re.escape(prefix) + r"_(\d+)(?:_iter_(\d+))?\.pth$")
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        match = pattern.fullmatch(name)
        if match:
            epoch, iteration = int(match[1]), match[2]
            # a whole epoch E is where epoch E + 1 starts
            found.append(((epoch + 1, 0) if iteration is None else (epoch, int(iteration)), os.path.join(folder, name)))
    return sorted(found, reverse=True)


def newest_valid_checkpoint(folder, prefix, report=print):
    """(path, checkpoint) of the newest checkpoint in `folder` that loads and passes its checksum, or
    (None, None); unreadable ones are reported and skipped."""
    for _, path in checkpoints_newest_first(folder, prefix):
        try:
            return path, load_checkpoint(path, "--resume auto")
        except RefusedCheckpoint:
            raise
        except UserError as error:
            report(f"skipping {error}")
    return None, None


def prune_step_checkpoints(folder, prefix, keep, written):
    """Keep the newest `keep` step checkpoints (`_iter_` files) and the one just `written`, which holds the run
    (a run resumed from an earlier one may find newer files); whole-epoch checkpoints all stay, as in DINet."""
    steps = [path for (_, path) in checkpoints_newest_first(folder, prefix) if "_iter_" in os.path.basename(path)]
    for path in steps[keep:]:
        if path != written:
            os.unlink(path)


def strip_module_prefix(state_dict):
    return {key[len("module."):] if key.startswith("module.") else key: value for key, value in state_dict.items()}


def generator_config_of(checkpoint):
    """The GeneratorConfig a checkpoint was trained with; DINet-made checkpoints are read from their weights."""
    if "generator_config" in checkpoint:
        return GeneratorConfig.from_dict(checkpoint["generator_config"])
    weights = strip_module_prefix(checkpoint["state_dict"]["net_g"])
    return GeneratorConfig(
        source_channel=weights["source_in_conv.0.conv.weight"].shape[1],
        ref_channel=weights["ref_in_conv.0.conv.weight"].shape[1],
        audio_channel=weights["audio_encoder.0.conv.weight"].shape[1],
        extra_same_block="source_in_conv.3.conv.weight" in weights,
    )


def load_network(network, checkpoint, name, path, flag, assign=False):
    """Load state_dict[name] into `network` (strict; `assign`: its tensors taken in, as a network on the meta device
    needs), or exit naming the file and the mismatch."""
    if name not in checkpoint["state_dict"]:
        raise UserError(f"{flag} {path}: the checkpoint has no {name!r} weights")
    try:
        network.load_state_dict(strip_module_prefix(checkpoint["state_dict"][name]), assign=assign)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise UserError(f"{flag} {path}: its {name} does not fit this architecture ({first})") from None


def check_generator_config(checkpoint, expected: GeneratorConfig, path, flag):
    found = generator_config_of(checkpoint)
    if found != expected:
        raise UserError(f"{flag} {path}: trained as [{found.describe()}, audio_channel={found.audio_channel}] but this run "
                         f"builds [{expected.describe()}, audio_channel={expected.audio_channel}]; pass the matching --lab "
                         f"and data, or another checkpoint")


def syncnet_config_of(checkpoint):
    """The SyncNetConfig a SyncNet checkpoint records; a published DINet one is read from its weights."""
    if "syncnet_config" in checkpoint:
        return SyncNetConfig.from_dict(checkpoint["syncnet_config"])
    weights = strip_module_prefix(checkpoint["state_dict"]["net"])
    audio_channel = weights["audio_encoder.audio_conv.0.conv.weight"].shape[1]
    return SyncNetConfig(arch="dinet" if "merge_encoder.0.weight" in weights else "embedding",
                         audio_channel=audio_channel, audio_feature="deepspeech" if audio_channel == 29 else "unknown",
                         mouth_region_size=None, input_size=None,
                         embedding_dim=weights["audio_encoder.audio_conv.7.conv.weight"].shape[0])


# what load_checkpoint's `needs` names, how its configuration is read and the network built
NETWORKS = {"net_g": ("generator", generator_config_of, DINet.from_config),
            "net": ("SyncNet", syncnet_config_of, build_syncnet)}


def load_syncnet(path, flag="--pretrained_syncnet_path"):
    """(frozen SyncNet in eval mode, its SyncNetConfig) from a checkpoint, or exit naming the file and the fix."""
    checkpoint = load_checkpoint(path, flag, needs="net", expected="the .pth train_syncnet.py writes, or DINet's "
                                                                  "syncnet_256mouth.pth")
    config = syncnet_config_of(checkpoint)
    network = build_syncnet(config)
    load_network(network, checkpoint, "net", path, flag)
    network.requires_grad_(False)
    return network.eval(), config


def check_syncnet_fits(config, path, mouth_region_size, audio_feature, audio_channel, flag="--pretrained_syncnet_path"):
    """Exit when a SyncNet was trained on other data than the generator's: audio width or feature, or mouth size."""
    retrain = (f"train one on this data: python train_syncnet.py --train_data JSON "
               f"--mouth_region_size {mouth_region_size}")
    if config.audio_channel != audio_channel:
        raise UserError(f"{flag} {path}: this SyncNet reads {config.audio_channel}-d {config.audio_feature} audio, the "
                         f"training data has {audio_channel}-d {audio_feature} features; {retrain}")
    if config.audio_feature not in ("unknown", audio_feature) and audio_feature is not None:
        raise UserError(f"{flag} {path}: this SyncNet was trained on {config.audio_feature} audio, the training data "
                         f"has {audio_feature} features; {retrain}")
    if config.mouth_region_size is not None and config.mouth_region_size != mouth_region_size:
        raise UserError(f"{flag} {path}: this SyncNet was trained on mouth {config.mouth_region_size} crops, this run "
                         f"uses --mouth_region_size {mouth_region_size}; {retrain}")
