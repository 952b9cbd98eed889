"""train_syncnet.py as a new user runs it: its defaults learn lip sync from the demo data, a training set too small
to learn from is refused before any work, and a run that sits at chance says so with what to try."""
import re
import subprocess
import sys

import pytest

from config.config import syncnet_parser
from conftest import ROOT, write_dinet_json
from data.procedural_faces import make_demo_data
from engine.syncnet_stage import SyncNetStage
from engine.trainer import train
from models.checkpoint import load_syncnet

CPU = ["--device", "cpu", "--num_workers", "0"]
AT_CHANCE = "warning: held-out accuracy has been at chance"


def train_syncnet(json_path, folder, *flags, timeout=600):
    """Run train_syncnet.py as a user would, with its output in `folder`; returns the finished process."""
    return subprocess.run([sys.executable, "train_syncnet.py", f"--train_data={json_path}",
                           f"--result_path={folder / 'run'}", f"--syncnet_path={folder / 's.pth'}", *CPU, *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def held_out_accuracy(result):
    assert result.returncode == 0, result.stderr[-2000:]
    return float(re.fullmatch(r"held-out accuracy: (\d\.\d{4})", result.stdout.strip().splitlines()[-1]).group(1))


@pytest.mark.parametrize("videos, clips, problem", [
    (2, 24, "1 training video(s) with 116 windows"),  # one video held out leaves one to learn from
    (6, 1, "5 training video(s) with 5 windows"),     # a 9-frame clip per video: one window each
])
def test_a_training_set_too_small_to_learn_from_is_refused_in_one_line_before_any_work(tmp_path, videos, clips,
                                                                                       problem):
    json_path = write_dinet_json(str(tmp_path), videos=videos, clips=clips)
    result = train_syncnet(json_path, tmp_path, "--mouth_region_size", "64")
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{json_path}: too small to train a SyncNet on: {problem}")
    assert "at least 2 videos and 100 windows" in lines[0] and "prepare more or longer videos" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.pth").exists()


def noise_run(folder, *flags):
    """A SyncNet trained on frames and audio of random noise (nothing links them): 3 epochs of 40 steps."""
    json_path = write_dinet_json(str(folder), videos=5, clips=6)
    opt = syncnet_parser("test", str(folder / "run")).parse_args(
        ["--train_data", json_path, "--result_path", str(folder / "run"), "--syncnet_path", str(folder / "s.pth"),
         *CPU, "--mouth_region_size", "64", "--syncnet_input_size", "32", "--batch_size", "2", "--amp", "off",
         "--non_decay", "3", "--decay", "0", "--iterations_per_epoch", "40", "--checkpoint", "3", *flags])
    train(opt, SyncNetStage)
    return (folder / "run" / "log.txt").read_text().splitlines()


@pytest.mark.parametrize("flags, hint", [
    (["--lr", "0"], "--lr 0 freezes the network; pass --lr 0.0003"),
    ([], "check the learning rate (--lr 0.0003; 0.0003 learns the demo set), the off-sync examples (--batch_size 2"),
])
def test_a_run_at_chance_for_several_epochs_says_so_with_a_hint(tmp_path, flags, hint):
    log = noise_run(tmp_path, *flags)
    warnings = [line for line in log if line.startswith(AT_CHANCE)]
    assert len(warnings) == 1, log[-8:]
    assert "for 3 epochs (120 steps)" in warnings[0] and hint in warnings[0], warnings[0]
    assert log.index(warnings[0]) > max(i for i, line in enumerate(log) if line.startswith("===> Epoch[3] held-out"))


@pytest.mark.long
def test_the_defaults_learn_lip_sync_in_a_few_epochs_without_a_chance_warning(tmp_path):
    """Every SyncNet flag at its default, at mouth 32 (read at 32 x 32) and a short schedule: 150 steps of 16
    windows from 7 training videos tell the held-out video's in-sync windows from its off-sync ones, and the file
    records the audio features it learnt from."""
    json_path = make_demo_data(str(tmp_path / "demo"), num_videos=8, seconds=3.0, seed=0)
    result = train_syncnet(json_path, tmp_path, "--mouth_region_size", "32", "--non_decay", "10", "--decay", "0",
                           "--checkpoint", "10")
    assert held_out_accuracy(result) >= 0.75
    assert AT_CHANCE not in result.stdout
    assert load_syncnet(str(tmp_path / "s.pth"))[1].audio_feature == "mel"


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["auto", "off"])
def test_the_defaults_reach_090_held_out_on_the_10_video_demo_set(tmp_path, amp):
    """The command a new user types (about 15 minutes on 2 cores)."""
    json_path = make_demo_data(str(tmp_path / "demo"), num_videos=10, seed=0)
    result = train_syncnet(json_path, tmp_path, "--mouth_region_size", "64", "--batch_size", "16", "--non_decay", "30",
                           "--decay", "0", "--amp", amp, timeout=3600)
    assert held_out_accuracy(result) >= 0.9
