"""Checkpoints load as data, never as code, and whatever they hold is checked: every command's checkpoint flag
refuses a file whose unpickling would run code, DINet's plain state dicts still load, the checksum covers every
value, and a checkpoint is an ordinary file under the user's umask."""
import glob
import os
import random
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
import torch

from common.errors import UserError
from conftest import ROOT
from dubbing.pipeline import load_generator
from engine.trainer import set_rng_state
from models import DINet, Discriminator, GeneratorConfig
from models.checkpoint import atomic_save, load_checkpoint
from test_bad_input import COMMANDS, assets, fill  # noqa: F401  (fixture: tiny data, checkpoints, 1 s media)
from test_clip_training import clip_assets  # noqa: F401  (fixture the assets need)
from test_inference import checkpoint  # noqa: F401  (fixture the assets need)


class RunsCode:
    """Unpickling this runs a shell command, as a crafted checkpoint downloaded from the internet could."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def run(command, args, values):
    """`python SCRIPT` with the command's base arguments and `args`, as a user runs it."""
    script, base = COMMANDS[command]
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *fill(base, values), *fill(args, values)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)


def assert_one_line(result, *pieces):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    for piece in pieces:
        assert piece in last, result.stderr[-3000:]


def outputs(folder):
    return sorted(path for pattern in ("*.mp4", "*.csv", "*.pth", "*.json")
                  for path in glob.glob(os.path.join(folder, "**", pattern), recursive=True))


def case(command, flag, args):
    return pytest.param(command, flag, args, id=f"{command} {flag}")


EVERY_CHECKPOINT_FLAG = [  # {bad}: the file under test
    case("inference", "--pretrained_clip_DINet_path", "--pretrained_clip_DINet_path {bad}"),
    case("frame", "--coarse_model_path", "--coarse2fine --coarse_model_path {bad}"),
    case("frame", "--resume", "--resume {bad}"),
    case("clip", "--pretrained_frame_DINet_path", "--pretrained_frame_DINet_path {bad}"),
    case("syncnet", "--resume", "--resume {bad}"),
]


@pytest.mark.parametrize("command,flag,args", [
    *EVERY_CHECKPOINT_FLAG,
    case("frame", "--resume auto", "--resume auto"),  # {bad} lies in the result folder as the newest checkpoint
    case("clip", "--pretrained_syncnet_path", "--pretrained_syncnet_path {bad}"),
    case("evaluate", "--syncnet_path", "--syncnet_path {bad}"),
])
def test_checkpoint_with_code_in_it_is_refused_on_every_path(assets, tmp_path, command, flag, args):
    marker = tmp_path / "MARKER"
    # in the result folder for --resume auto to find; elsewhere, as a run refuses a result folder holding one
    bad = tmp_path / ("run" if flag == "--resume auto" else "downloaded") / "netG_model_epoch_5.pth"
    bad.parent.mkdir()
    torch.save({"epoch": 6, "state_dict": {"net_g": {}, "net": {}}, "hook": RunsCode(f"touch {marker}")}, bad)
    result = run(command, args, {**assets, "tmp": str(tmp_path), "bad": str(bad)})
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert_one_line(result, f"{flag} {bad}: refusing to unpickle it, it is not a plain weights file",
                    "posix.system")
    assert outputs(tmp_path) == [str(bad)]  # nothing written


def inflating(path, **saved):
    """`saved`, torch.save'd to `path` with its zip entries compressed, which torch.save never does: zeros take a
    few kilobytes on disk, and torch.load would inflate them back in memory, as a crafted file can to any size."""
    torch.save(saved, path)
    with zipfile.ZipFile(path) as archive:
        entries = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)


@pytest.mark.parametrize("command,flag,args", [  # every path reads through load_checkpoint (the test above)
    EVERY_CHECKPOINT_FLAG[0],
    case("frame", "--resume auto", "--resume auto"),  # a refused file stops the search, as one with code does
])
def test_checkpoint_whose_entries_inflate_is_refused_before_it_is_read(assets, tmp_path, command, flag, args):
    bad = tmp_path / ("run" if flag == "--resume auto" else "downloaded") / "netG_model_epoch_5.pth"
    bad.parent.mkdir()
    inflating(bad, epoch=6, state_dict={"net_g": {"w": torch.zeros(1 << 22)}, "net": {"w": torch.zeros(1 << 22)}})
    assert bad.stat().st_size < 100_000
    result = run(command, args, {**assets, "tmp": str(tmp_path), "bad": str(bad)})
    assert_one_line(result, f"{flag} {bad}: refusing to read it, its entries are compressed, which torch.save never "
                            f"writes")
    assert outputs(tmp_path) == [str(bad)]


def test_weights_files_whose_entries_inflate_are_refused_before_they_are_read(tmp_path):
    from app import build_parser, check_options, holds
    from evaluation.reconstruction import InceptionFeatures
    from models.face_recognition import load_face_recognition
    from models.lse_syncnet import load_lse_syncnet
    from models.vgg19 import load_vgg19_features
    bad = tmp_path / "weights.pth"
    inflating(bad, **{"features.0.weight": torch.zeros(1 << 22)})
    for flag, load in (("--lse_syncnet_path", load_lse_syncnet), ("--identity_weights", load_face_recognition),
                       ("--vgg19_weights", load_vgg19_features), ("--inception_weights", InceptionFeatures)):
        with pytest.raises(UserError, match=f"^{flag} {bad}: refusing to read it, its entries are compressed"):
            load(str(bad))
    inflating(bad, state_dict={"net_g": {}})
    assert not holds(str(bad), "net_g")  # the app lists it not: reading its pickle would inflate it
    with pytest.raises(UserError, match=f"^--checkpoint {bad}: refusing to read it, its entries are compressed"):
        check_options(build_parser().parse_args(["--checkpoint", str(bad)]))  # nor starts with it


@pytest.mark.parametrize("recorded,reason", [
    ({"mouth_region_size": 1 << 20}, "its mouth_region_size 1048576 is not a multiple of 8 from 16 to 1024"),
    ({"mouth_region_size": "64"}, r"its mouth_region_size \(64\) is not an int"),
    ({"validation_split": "all"}, r"its validation_split \(all\) is not a dict"),
    ({"validation_split": {"videos": 3}}, "its validation_split's videos are not a list of names"),
    ({"audio_feature": "rot13"}, "records 'rot13' audio features, which its 80-wide audio input cannot read"),
    ({"options": {"batch_size": [1] * 10 ** 6}}, "its options are not flags with plain values"),
    # terabytes of weights for a network of the file's: refused before one is allocated
    ({"generator_config": {"ref_channel": 3 * 10 ** 8}},
     r"its net_g does not fit this architecture \(size mismatch for ref_in_conv.0.conv.weight"),
], ids=["mouth size of a million", "mouth size as text", "split as text", "split's videos as a number",
        "unknown audio feature", "options holding a list", "network larger than its weights"])
def test_what_a_checkpoint_records_beside_its_weights_is_checked_before_it_is_used(tmp_path, recorded, reason):
    torch.manual_seed(0)
    network = DINet(3, 15, 80)
    config = {**network.config.to_dict(), **recorded.pop("generator_config", {})}
    path = tmp_path / "netG_best.pth"
    atomic_save({"epoch": 2, "state_dict": {"net_g": network.state_dict()}, "generator_config": config,
                 "mouth_region_size": 64, "audio_feature": "mel", **recorded}, str(path))
    with pytest.raises(UserError, match=f"^--pretrained_clip_DINet_path {path}: {reason}"):
        load_generator(str(path), torch.device("cpu"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_generator_whose_weights_are_not_finite_is_refused_instead_of_dubbing_a_blank_mouth(tmp_path, value):
    torch.manual_seed(0)
    network = DINet(3, 15, 80)
    weights = network.state_dict()
    weights["audio_encoder.0.conv.weight"][0, 0, 0] = value
    path = tmp_path / "netG_best.pth"
    atomic_save({"epoch": 2, "state_dict": {"net_g": weights}, "generator_config": network.config.to_dict(),
                 "mouth_region_size": 64, "audio_feature": "mel"}, str(path))
    with pytest.raises(UserError, match=f"^--pretrained_clip_DINet_path {path}: its net_g weight "
                                        f"audio_encoder.0.conv.weight holds NaN or infinite values"):
        load_generator(str(path), torch.device("cpu"))


def test_a_weights_path_that_is_not_a_file_is_refused_before_it_is_read(tmp_path):
    """A pipe or a device (a link to /dev/zero) named like a weights file would be read without end."""
    from models.lse_syncnet import load_lse_syncnet
    pipe = tmp_path / "syncnet_v2.model"
    os.mkfifo(pipe)
    refusals = []

    def load():
        try:
            load_lse_syncnet(str(pipe))
        except UserError as error:
            refusals.append(str(error))
    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(5)
    blocked = reader.is_alive()
    if blocked:  # a writer that closes at once ends its read
        open(pipe, "wb").close()
    assert not blocked and refusals == [f"--lse_syncnet_path {pipe}: no such file; pass syncnet_python's "
                                        f"syncnet_v2.model (a SyncNet of this repository goes to --syncnet_path)"]


def test_weights_repeating_a_few_stored_values_as_a_huge_network_are_refused_before_it_is_built(tmp_path):
    """A network as large as the file's recorded configuration says, each weight one stored zero expanded to its
    shape: the file takes 100 KB, the network (and the checksum's copy of its first layer) 12.5 GB."""
    config = {**DINet(3, 15, 80).config.to_dict(), "ref_channel": 10 ** 6}
    with torch.device("meta"):
        network = DINet.from_config(GeneratorConfig.from_dict(config))
    weights = {key: torch.zeros((), dtype=value.dtype).expand(value.shape)
               for key, value in network.state_dict().items()}
    path = tmp_path / "netG_best.pth"
    torch.save({"epoch": 2, "state_dict": {"net_g": weights}, "generator_config": config, "mouth_region_size": 64,
                "audio_feature": "mel", "integrity": "crc32:0:0"}, path)
    with pytest.raises(UserError, match=f"^--pretrained_clip_DINet_path {path}: refusing to read it, its "
                                        f"state_dict.net_g.[.\\w]+ repeats a few stored values as far more"):
        load_generator(str(path), torch.device("cpu"))


def test_a_weights_file_of_tensors_under_numbers_is_not_a_state_dict(tmp_path):
    from models.face_recognition import load_face_recognition
    path = tmp_path / "backbone.pth"
    torch.save({0: torch.zeros(3), "fc.weight": torch.zeros(512, 512)}, path)
    with pytest.raises(UserError, match=f"^--identity_weights {path}: a checkpoint holding more than weights, not a "
                                        f"plain state dict"):
        load_face_recognition(str(path))


def earlier_checkpoint():
    """What this repository wrote before its checkpoints loaded as weights only: numpy's RNG state as an array
    (made here with the same seeds) and a CRC-32 of the tensors alone, the value its atomic_save wrote."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    state = {"epoch": 3, "iteration": 0, "global_step": 12,
             "state_dict": {"net_g": {"w": torch.arange(1000, dtype=torch.float32)}},
             "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                     "cuda": []}, "lab": "lab1"}
    return {**state, "integrity": "crc32:ead80cff"}


def test_checkpoints_of_earlier_versions_load_with_numpys_rng_arrays_and_nothing_else(tmp_path):
    earlier = tmp_path / "netG_model_epoch_2.pth"
    torch.save(earlier_checkpoint(), earlier)
    checkpoint = load_checkpoint(str(earlier))
    assert checkpoint["global_step"] == 12
    np.random.seed(1)
    set_rng_state(checkpoint["rng"])
    restored = np.random.rand(3), random.random(), torch.rand(3)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    assert np.array_equal(restored[0], np.random.rand(3)) and restored[1] == random.random()
    assert torch.equal(restored[2], torch.rand(3))

    data = bytearray(earlier.read_bytes())
    offset = data.index(torch.tensor(500.0).numpy().tobytes())  # inside the weights: their checksum is still read
    data[offset] ^= 0x01
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt checkpoint"):
        load_checkpoint(str(tmp_path / "flipped.pth"))

    other_array = tmp_path / "float_array.pth"  # numpy arrays beyond the RNG's uint32 ones are not weights
    torch.save({**earlier_checkpoint(), "extra": np.zeros(3)}, other_array)
    with pytest.raises(UserError, match=f"--resume {other_array}: refusing to unpickle it, it is not a plain"):
        load_checkpoint(str(other_array))


def edit(checkpoint, change):
    """Apply `change` to a checkpoint as a flipped bit would, leaving its stored checksum as it was."""
    if change == "global_step":
        checkpoint["global_step"] += 1
    elif change == "epoch":
        checkpoint["epoch"] = 13
    elif change == "learning_rate":
        checkpoint["optimizer"]["net_g"]["param_groups"][0]["lr"] *= 2
    elif change == "config_string":
        checkpoint["generator_config"]["warp"] = "adain"
    elif change == "tensor_shape":  # the same bytes in another shape
        checkpoint["state_dict"]["net_g"]["bias"] = checkpoint["state_dict"]["net_g"]["bias"].reshape(2, 4)
    elif change == "tensor_dtype":
        checkpoint["state_dict"]["net_g"]["bias"] = checkpoint["state_dict"]["net_g"]["bias"].view(torch.int32)


@pytest.mark.parametrize("change", ["untouched", "global_step", "epoch", "learning_rate", "config_string",
                                    "tensor_shape", "tensor_dtype"])
def test_the_checksum_covers_every_value_not_only_the_tensors(tmp_path, change):
    torch.manual_seed(0)
    network = torch.nn.Linear(8, 8)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    network(torch.rand(2, 8)).sum().backward()
    optimizer.step()
    path = tmp_path / "netG_model_epoch_1.pth"
    atomic_save({"epoch": 2, "global_step": 40, "state_dict": {"net_g": network.state_dict()},
                 "optimizer": {"net_g": optimizer.state_dict()}, "lab": "lab1",
                 "generator_config": DINet(3, 15, 29).config.to_dict()}, str(path))
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint, change)
    torch.save(checkpoint, path)
    if change == "untouched":
        assert load_checkpoint(str(path))["global_step"] == 40
    else:
        with pytest.raises(UserError, match=f"--resume {path}: corrupt checkpoint"):
            load_checkpoint(str(path))


@pytest.mark.parametrize("command,flag,args", EVERY_CHECKPOINT_FLAG)
def test_checkpoint_without_dinets_weights_is_one_line_on_every_path(assets, tmp_path, command, flag, args):
    bad = tmp_path / "other.pth"
    other = {"weight": torch.zeros(4, 4)}  # some other network's state dict
    torch.save({"epoch": 3, "state_dict": {"net_g": other, "net": other}}, bad)
    result = run(command, args, {**assets, "tmp": str(tmp_path), "bad": str(bad)})
    kind = "a SyncNet's" if command == "syncnet" else "a generator's"
    assert_one_line(result, f"{flag} {bad}: its net", f"weights are not {kind} (no '", "pass ")


def dinet_layout(path):
    """A checkpoint as DINet's training writes it (and as its published files are): plain state dicts with
    DataParallel's `module.` prefix and the optimizers' states, nothing about the mouth size or audio feature."""
    torch.manual_seed(0)
    net_g, net_d = DINet(3, 15, 29), Discriminator(3, 64, 4, 256)
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=1e-4) for name, net in (("net_g", net_g),
                                                                                        ("net_dI", net_d))}
    torch.save({"epoch": 3, "state_dict": {name: {"module." + key: value for key, value in net.state_dict().items()}
                                           for name, net in (("net_g", net_g), ("net_dI", net_d))},
                "optimizer": {name: optimizer.state_dict() for name, optimizer in optimizers.items()}}, path)
    return net_g


def test_dinets_checkpoint_loads_at_the_mouth_size_given_and_without_it_asks_for_it(assets, tmp_path):
    path = tmp_path / "clip_training_DINet_256mouth.pth"
    network = dinet_layout(path)
    result = run("inference", "--pretrained_clip_DINet_path {dinet}", {**assets, "tmp": str(tmp_path),
                                                                        "dinet": str(path)})
    assert_one_line(result, f"--pretrained_clip_DINet_path {path}: the checkpoint does not record its mouth size",
                    "pass --mouth_region_size")
    assert outputs(tmp_path) == [str(path)]
    generator = load_generator(str(path), torch.device("cpu"), mouth_size=128)
    assert (generator.mouth_size, generator.audio_feature) == (128, "deepspeech")
    loaded = generator.network.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in network.state_dict().items())


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=lambda umask: f"umask {umask:03o}")
def test_a_checkpoint_gets_the_mode_of_any_new_file_under_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_save({"state_dict": {"net_g": {"w": torch.zeros(3)}}}, str(tmp_path / "netG_model_epoch_1.pth"))
        (tmp_path / "log.txt").write_text("an ordinary file\n")
    finally:
        os.umask(previous)
    mode = os.stat(tmp_path / "netG_model_epoch_1.pth").st_mode & 0o777
    assert mode == 0o666 & ~umask == os.stat(tmp_path / "log.txt").st_mode & 0o777


@pytest.mark.parametrize("recorded", [{"input_size": 1 << 20}, {"input_size": "256"}, {"mouth_region_size": -64}])
def test_a_syncnet_checkpoint_asking_for_mouths_of_any_size_is_refused(tmp_path, recorded):
    """Mouths are resized to the SyncNet's recorded input size: a crafted one would ask for any amount of memory."""
    from models.checkpoint import load_syncnet
    from models.syncnet import SyncNetConfig, build_syncnet
    config = SyncNetConfig(arch="embedding", audio_channel=80, audio_feature="mel", mouth_region_size=64,
                           input_size=64)
    path = tmp_path / "syncnet.pth"
    atomic_save({"state_dict": {"net": build_syncnet(config).state_dict()},
                 "syncnet_config": {**config.to_dict(), **recorded}}, str(path))
    with pytest.raises(UserError, match=f"^--syncnet_path {path}: .*(must be a multiple of 32|not a mouth size)"):
        load_syncnet(str(path), "--syncnet_path")
