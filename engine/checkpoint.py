"""Checkpoints in DINet's layout, written atomically, loaded with clear errors.

`netG_model_epoch_{N}.pth` = {"epoch": N + 1, "state_dict": {"net_g", "net_dI"[, "net_dV"]},
"optimizer": {...}} as DINet writes it, plus what a resume and a later stage need: "scheduler",
"rng", "global_step", "generator_config", "mouth_region_size", "audio_feature", "lab".
Keys with or without DataParallel's `module.` prefix load.
"""
import os
import tempfile

import torch

from models.dinet import GeneratorConfig


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, flushed to disk, then renamed: the file is complete or absent."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def load_checkpoint(path, flag="--resume"):
    if not os.path.isfile(path):
        raise SystemExit(f"{flag} {path}: no such checkpoint file; check the path")
    try:
        # weights_only=False: our checkpoints carry RNG states (numpy arrays). Load only files you trust.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise SystemExit(f"{flag} {path}: cannot read this checkpoint ({type(error).__name__}); "
                         f"it is truncated or not a PyTorch file, use an earlier checkpoint") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise SystemExit(f"{flag} {path}: not a DINet checkpoint (no 'state_dict'); pass a netG_model_epoch_N.pth")
    return checkpoint


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


def load_network(network, checkpoint, name, path, flag):
    """Load state_dict[name] into `network` (strict), or exit naming the file and the mismatch."""
    if name not in checkpoint["state_dict"]:
        raise SystemExit(f"{flag} {path}: the checkpoint has no {name!r} weights")
    try:
        network.load_state_dict(strip_module_prefix(checkpoint["state_dict"][name]))
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise SystemExit(f"{flag} {path}: its {name} does not fit this architecture ({first})") from None


def check_generator_config(checkpoint, expected: GeneratorConfig, path, flag):
    found = generator_config_of(checkpoint)
    if found != expected:
        raise SystemExit(f"{flag} {path}: trained as [{found.describe()}, audio_channel={found.audio_channel}] but this run "
                         f"builds [{expected.describe()}, audio_channel={expected.audio_channel}]; pass the matching --lab "
                         f"and data, or another checkpoint")
