"""Checkpoints in DINet's layout, written atomically, loaded with clear errors.

`netG_model_epoch_{N}.pth` = {"epoch": N + 1, "state_dict": {"net_g", "net_dI"[, "net_dV"]},
"optimizer": {...}} as DINet writes it, plus what a resume and a later stage need: "scheduler",
"rng", "global_step", "generator_config", "mouth_region_size", "audio_feature", "lab".
Keys with or without DataParallel's `module.` prefix load.

SyncNets: {"state_dict": {"net": ...}} as DINet's `syncnet_256mouth.pth`, plus "syncnet_config" (architecture,
mouth size, input size, audio feature) when we trained it; a published file is read as DINet's architecture
with the audio width of its weights.
"""
import os
import tempfile

import torch

from models.dinet import GeneratorConfig
from models.syncnet import SyncNetConfig, build_syncnet


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


def load_checkpoint(path, flag="--resume", expected="a netG_model_epoch_N.pth"):
    if not os.path.isfile(path):
        raise SystemExit(f"{flag} {path}: no such checkpoint file; check the path")
    try:
        # weights_only=False: our checkpoints carry RNG states (numpy arrays). Load only files you trust.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise SystemExit(f"{flag} {path}: cannot read this checkpoint ({type(error).__name__}); "
                         f"it is truncated or not a PyTorch file, use an earlier checkpoint") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise SystemExit(f"{flag} {path}: not a DINet checkpoint (no 'state_dict'); pass {expected}")
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


def load_syncnet(path, flag="--pretrained_syncnet_path"):
    """(frozen SyncNet in eval mode, its SyncNetConfig) from a checkpoint, or exit naming the file and the fix."""
    checkpoint = load_checkpoint(path, flag, expected="a SyncNet .pth ({'state_dict': {'net': ...}}) from train_syncnet.py")
    if "net" not in checkpoint["state_dict"]:
        raise SystemExit(f"{flag} {path}: not a SyncNet checkpoint (no state_dict['net']); pass the .pth "
                         f"train_syncnet.py writes, or DINet's syncnet_256mouth.pth")
    try:
        config = syncnet_config_of(checkpoint)
    except KeyError:
        raise SystemExit(f"{flag} {path}: its weights are not a SyncNet's; pass the .pth train_syncnet.py writes") from None
    network = build_syncnet(config)
    load_network(network, checkpoint, "net", path, flag)
    network.requires_grad_(False)
    return network.eval(), config


def check_syncnet_fits(config, path, mouth_region_size, audio_feature, audio_channel, flag="--pretrained_syncnet_path"):
    """Exit when a SyncNet was trained on other data than the generator's: audio width or feature, or mouth size."""
    retrain = (f"train one on this data: python train_syncnet.py --train_data JSON "
               f"--mouth_region_size {mouth_region_size}")
    if config.audio_channel != audio_channel:
        raise SystemExit(f"{flag} {path}: this SyncNet reads {config.audio_channel}-d {config.audio_feature} audio, the "
                         f"training data has {audio_channel}-d {audio_feature} features; {retrain}")
    if config.audio_feature not in ("unknown", audio_feature) and audio_feature is not None:
        raise SystemExit(f"{flag} {path}: this SyncNet was trained on {config.audio_feature} audio, the training data "
                         f"has {audio_feature} features; {retrain}")
    if config.mouth_region_size is not None and config.mouth_region_size != mouth_region_size:
        raise SystemExit(f"{flag} {path}: this SyncNet was trained on mouth {config.mouth_region_size} crops, this run "
                         f"uses --mouth_region_size {mouth_region_size}; {retrain}")
