"""syncnet_python's SyncNet (models/lse_syncnet.py) and its LSE protocol (evaluation/sync.py): its syncnet_v2.model
loads as the plain state dict it is, anything else is refused in one line without unpickling code, and the
protocol pairs 5 frames with the 20 MFCC steps under them and finds the lag between them."""
import os
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import ROOT
from torch import nn

from common.errors import UserError
from evaluation.sync import syncnet_v2_faces, syncnet_v2_score
from models.checkpoint import atomic_save
from models.lse_syncnet import LseSyncNet, load_lse_syncnet
from models.syncnet import SyncNetConfig, build_syncnet


@pytest.fixture(scope="module")
def repository_syncnet(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("repository_syncnet") / "syncnet.pth")
    config = SyncNetConfig(arch="embedding", audio_channel=80, audio_feature="mel", mouth_region_size=64, input_size=32)
    atomic_save({"state_dict": {"net": build_syncnet(config).state_dict()}, "syncnet_config": config.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def syncnet_v2(tmp_path_factory):
    """A randomly initialised LseSyncNet saved as syncnet_python's syncnet_v2.model is: its state dict, with
    BatchNorm statistics that are not the defaults."""
    torch.manual_seed(0)
    network = LseSyncNet()
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    path = str(tmp_path_factory.mktemp("syncnet_v2") / "syncnet_v2.model")
    torch.save(network.state_dict(), path)
    return network.eval(), path


def test_syncnet_v2_model_loads_as_a_state_dict_with_or_without_batch_counters(syncnet_v2, tmp_path):
    """The file loads frozen, in eval mode, computing what the saved network computes; so does one saved before
    PyTorch 0.4.1, whose BatchNorms have no num_batches_tracked (eval mode does not read it)."""
    network, path = syncnet_v2
    old = {key: value for key, value in network.state_dict().items() if not key.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.model")
    lips, audio = torch.rand(2, 3, 5, 224, 224) * 255, torch.randn(2, 1, 13, 20)
    for loaded in (load_lse_syncnet(path), load_lse_syncnet(str(tmp_path / "old.model"))):
        assert not loaded.training and not any(parameter.requires_grad for parameter in loaded.parameters())
        with torch.no_grad():
            assert torch.equal(loaded.forward_lip(lips), network.forward_lip(lips))
            assert torch.equal(loaded.forward_aud(audio), network.forward_aud(audio))


class WritesAFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = str(tmp_path / "ran")
    torch.save({"netcnnaud.0.weight": WritesAFile(marker)}, tmp_path / "evil.model")
    with pytest.raises(UserError) as error:
        load_lse_syncnet(str(tmp_path / "evil.model"))
    message = str(error.value)
    assert message.startswith(f"--lse_syncnet_path {tmp_path / 'evil.model'}: refusing to unpickle it")
    assert "open" in message and "syncnet_v2.model" in message and "\n" not in message
    assert not os.path.exists(marker)


def test_another_networks_weights_are_named_in_one_short_line(syncnet_v2, repository_syncnet, tmp_path):
    """However many weights do not fit (all 100 of them for another network), one short line says how many and
    names one."""
    network, _ = syncnet_v2
    state = network.state_dict()
    state.pop("netcnnlip.0.weight")
    state["netcnnaud.0.weight"] = torch.zeros(64, 1, 5, 5)
    torch.save(state, tmp_path / "damaged.model")
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).state_dict(), tmp_path / "other.model")
    for name, expected in (("damaged", "1 weights missing, e.g. netcnnlip.0.weight; 1 of another shape, e.g. "
                                       "netcnnaud.0.weight"),
                           ("other", "weights missing, e.g. netcnnaud.0.weight; 7 unknown weights, e.g. 0.weight")):
        with pytest.raises(UserError) as error:
            load_lse_syncnet(str(tmp_path / f"{name}.model"))
        message = str(error.value)
        assert expected in message and len(message) - len(str(tmp_path)) < 250 and "\n" not in message, message
    with pytest.raises(UserError, match="a checkpoint holding more than weights.*goes to --syncnet_path"):
        load_lse_syncnet(repository_syncnet)


class MeanBrightness(nn.Module):
    """Lip code: the mean of each of the 5 frames; audio code: the mean of MFCC 0 over each frame's 4 steps."""

    def forward_lip(self, lips):           # (B, 3, 5, h, w)
        return lips.mean(dim=(1, 3, 4))

    def forward_aud(self, audio):          # (B, 1, 13, 20)
        return audio[:, 0, 0].unflatten(1, (5, 4)).mean(dim=2)


def test_syncnet_v2_score_pairs_5_frames_with_their_20_mfcc_steps_and_finds_the_lag():
    brightness = np.random.default_rng(2).uniform(20, 230, 60)
    faces = np.repeat(brightness, 4 * 4 * 3).reshape(60, 4, 4, 3).astype(np.uint8)
    mfcc = np.zeros((13, 240))
    mfcc[0] = np.repeat(faces[:, 0, 0, 0].astype(np.float64), 4)  # what each frame's lip code sees, 4 steps a frame
    aligned = syncnet_v2_score(MeanBrightness(), faces, mfcc, 60)
    assert aligned.offset == 0 and aligned.lse_d < 1e-4 and aligned.lse_c > 10
    late = syncnet_v2_score(MeanBrightness(), faces, np.roll(mfcc, 3 * 4, axis=1), 60)  # the audio 3 frames late
    assert late.offset == 3 and late.lse_c > 10


def test_syncnet_v2_faces_are_bgr_squares_from_above_the_face_to_below_the_chin():
    """syncnet_python's crop of a face box of half-size s centred at (x, y): rows y - s .. y + 1.8 s, columns
    x - 1.4 s .. x + 1.4 s, grey 110 outside the frame, resized to 224 x 224, BGR."""
    frames = np.zeros((3, 200, 300, 3), np.uint8)
    frames[:, 80:136, 72:128] = (255, 0, 0)                  # red (RGB) exactly where the crop goes
    box = np.array([[80.0, 80.0], [120.0, 120.0]])           # landmarks spanning x, y 80..120: s = 20
    landmarks = np.repeat(np.resize(box, (68, 2))[None], 3, axis=0)
    faces = syncnet_v2_faces(frames, landmarks)
    assert faces.shape == (3, 224, 224, 3)
    assert (faces[:, 2:-2, 2:-2] == (0, 0, 255)).all()        # red in BGR, all over
    at_the_edge = syncnet_v2_faces(frames, landmarks - 90)   # centred at (10, 10): its top 10 of 56 rows outside
    assert (at_the_edge[:, :35] == 110).all() and (at_the_edge[:, 50:, 80:] == 0).all()


def run_evaluate(*args):
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_evaluate_tells_which_flag_each_syncnet_goes_to(syncnet_v2, repository_syncnet, tmp_path):
    """A SyncNet of this repository given as syncnet_python's, and the other way round: one line each, exit 1."""
    _, syncnet_v2_path = syncnet_v2
    video = str(tmp_path / "video.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=25:duration=1", "-f", "lavfi", "-i", "sine=duration=1", "-shortest",
                    video], check=True)
    for flag, path, expected in (("--syncnet_path", syncnet_v2_path, "pass it to --lse_syncnet_path"),
                                 ("--lse_syncnet_path", repository_syncnet, "goes to --syncnet_path")):
        result = run_evaluate("--videos", video, flag, path, "--csv", str(tmp_path / "scores.csv"), "--device", "cpu")
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert last.startswith(f"{flag} {path}: ") and expected in last, last
    assert not os.path.exists(tmp_path / "scores.csv")
