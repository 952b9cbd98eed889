"""Nothing lost: step checkpoints, --resume auto, corrupt checkpoints, non-finite losses, SIGTERM, SIGKILL at
random points, and a full disk."""
import glob
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.errors import UserError
from conftest import ROOT
from engine.trainer import FrameStage
from models.checkpoint import load_checkpoint, newest_valid_checkpoint
from test_frame_training import FAST, metrics, run_frame

SCRIPT = os.path.join(ROOT, "train_DINet_frame.py")
# 3 epochs of 4 iterations (2 videos x 2 samples, batch 1), a checkpoint after every iteration
KILL_RUN = ["--vgg19_weights", "random", "--device", "cpu", "--num_workers", "0", "--augment_num", "2",
            "--batch_size", "1", "--non_decay", "2", "--decay", "1", "--checkpoint", "1", "--save_every_steps", "1"]


def last_losses_per_step(result_path):
    """{step: losses} of the logged steps."""
    return {row["step"]: {k: v for k, v in row.items() if k.startswith("Loss")} for row in metrics(result_path)}


def test_resume_from_a_step_checkpoint_replays_the_rest_of_the_epoch_exactly(tiny_json, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_frame(tiny_json, whole, "--augment_num", "4")
    run_frame(tiny_json, part, "--augment_num", "4", "--save_every_steps", "3", "--non_decay", "0")  # epoch 1 only
    step_checkpoint = part / "netG_model_epoch_1_iter_3.pth"
    assert step_checkpoint.exists()
    assert load_checkpoint(str(step_checkpoint))["iteration"] == 3
    os.remove(part / "netG_model_epoch_1.pth")  # as if killed after iteration 3 of epoch 1
    run_frame(tiny_json, part, "--augment_num", "4", "--resume", "auto")
    assert "resumed from" in (part / "log.txt").read_text()
    assert metrics(part) == metrics(whole)  # each step once, in order: those after the checkpoint replaced


def test_resume_auto_skips_a_corrupt_newest_checkpoint_and_truncation_is_named(tiny_json, tmp_path):
    run_frame(tiny_json, tmp_path)  # epochs 1 and 2
    newest = tmp_path / "netG_model_epoch_2.pth"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: torch.load alone would not notice
    newest.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt checkpoint"):
        load_checkpoint(str(newest))
    reports = []
    path, checkpoint = newest_valid_checkpoint(str(tmp_path), "netG_model_epoch", reports.append)
    assert path.endswith("netG_model_epoch_1.pth") and checkpoint["epoch"] == 2
    assert "netG_model_epoch_2.pth" in reports[0]
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "netG_model_epoch_1.pth").read_bytes()[:100000])
    with pytest.raises(UserError, match=r"truncated or damaged \(a save or copy that did not finish\), use an earlier"):
        load_checkpoint(str(truncated))


class NonFiniteInput(FrameStage):
    """DINet's frame stage whose inputs named in `poisoned` turn NaN at the steps in `bad_steps` (a fault
    injected for the test)."""

    bad_steps = ()
    poisoned = ("audio",)

    def step(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls - 1 in self.bad_steps:
            batch = {**batch, **{key: batch[key] * float("nan") for key in self.poisoned}}
        return super().step(batch)


def test_a_non_finite_step_is_skipped_and_counted_and_leaves_the_networks_finite(tiny_json, tmp_path):
    """NaN audio: a NaN sampling grid makes AdaAT's grid_sample return zeros, so depending on the precision the
    loss may stay finite while the gradients are NaN. Either way the step is skipped and no weight turns NaN."""
    from config.config import training_parser
    from engine.trainer import train
    opt = training_parser("test", str(tmp_path)).parse_args(
        ["--train_data", tiny_json, "--result_path", str(tmp_path), *FAST, "--non_decay", "0"])
    NonFiniteInput.bad_steps, NonFiniteInput.poisoned = (1,), ("audio",)
    stage = train(opt, NonFiniteInput)
    log = (tmp_path / "log.txt").read_text()
    assert "non-finite at epoch 1 iteration 1 (step 1)" in log
    assert "1 step(s) had a non-finite loss or gradients and were skipped" in log
    for network in stage.networks().values():
        assert all(torch.isfinite(tensor).all() for tensor in network.state_dict().values())
    assert [row["step"] for row in metrics(tmp_path)] == [0]  # the skipped step is not logged as a loss


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_consecutive_non_finite_steps_stop_the_run_naming_the_step_and_loss(tiny_json, tmp_path, amp):
    from config.config import training_parser
    from engine.trainer import train
    opt = training_parser("test", str(tmp_path)).parse_args(
        ["--train_data", tiny_json, "--result_path", str(tmp_path), *FAST, "--augment_num", "6",
         "--max_non_finite", "2", "--amp", amp, "--batch_size", "1"])  # bf16 is emulated (slow) on many CPUs
    NonFiniteInput.bad_steps, NonFiniteInput.poisoned = range(0, 100), ("audio", "source_masked")
    with pytest.raises(UserError, match=r"2 non-finite steps in a row, the last at epoch 1 iteration 1 \(step 1, "
                                         r"Loss_DI=nan .*; Loss_DI, Loss_GI\+Loss_perception not finite\)"):
        train(opt, NonFiniteInput)


def start(result_path, tiny_json, *extra, **kwargs):
    return subprocess.Popen([sys.executable, SCRIPT, "--train_data", tiny_json, "--result_path", str(result_path),
                             *KILL_RUN, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def logged_steps(result_path):
    path = os.path.join(result_path, "metrics.jsonl")
    return sum(1 for _ in open(path)) if os.path.exists(path) else 0


@pytest.mark.long
def test_sigterm_stops_after_a_checkpoint_and_resume_auto_finishes(tiny_json, tmp_path):
    process = start(tmp_path, tiny_json, "--resume", "auto")
    while logged_steps(tmp_path) < 2 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "stopped by SIGTERM" in output and "--resume auto" in output
    path, checkpoint = newest_valid_checkpoint(str(tmp_path), "netG_model_epoch")
    assert checkpoint["global_step"] == logged_steps(tmp_path)  # nothing trained is lost
    finished = start(tmp_path, tiny_json, "--resume", "auto")
    output, _ = finished.communicate(timeout=300)
    assert finished.returncode == 0, output[-2000:]
    assert sorted(last_losses_per_step(tmp_path)) == list(range(12))


def temporaries(result_path):
    return glob.glob(str(result_path / ".*.partial*"))


@pytest.mark.long
def test_sigkill_at_six_random_points_mid_write_included_loses_at_most_one_checkpoint_interval(tiny_json, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert start(reference, tiny_json, "--save_every_steps", "0").wait(timeout=300) == 0  # saving changes no loss
    chooser = random.Random(7)
    kills = mid_write = 0
    while kills < 6:
        before, left_before = logged_steps(killed), set(temporaries(killed))
        process = start(killed, tiny_json, "--resume", "auto")
        wait_steps, extra = chooser.randint(0, 2), chooser.uniform(0, 1.5)
        while logged_steps(killed) < before + wait_steps and process.poll() is None:
            time.sleep(0.02)
        if mid_write < (kills + 2) // 2:  # kills 1, 3 and 5 (the next one again if it missed) land in a write
            while not set(temporaries(killed)) - left_before and process.poll() is None:
                time.sleep(0.002)
        else:
            time.sleep(extra)
        if process.poll() is not None:
            break  # finished before this kill
        process.kill()
        process.wait()
        kills += 1
        mid_write += bool(set(temporaries(killed)) - left_before)  # the write it cut short left its temporary file
        for path in glob.glob(str(killed / "*.pth")):
            load_checkpoint(path)  # every checkpoint complete and its checksum right (temporaries are hidden)
        newest = newest_valid_checkpoint(str(killed), "netG_model_epoch", lambda text: None)[1]
        trained = max(last_losses_per_step(killed), default=-1) + 1 if logged_steps(killed) else 0
        assert (newest["global_step"] if newest else 0) >= trained - 1  # the interval is one step
    assert kills == 6 and mid_write >= 3
    final = start(killed, tiny_json, "--resume", "auto")
    output, _ = final.communicate(timeout=300)
    assert final.returncode == 0, output[-2000:]
    assert last_losses_per_step(killed) == last_losses_per_step(reference)
    assert not temporaries(killed)  # the resumed runs removed what the killed writes left


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (50 * 2 ** 20, 50 * 2 ** 20))


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one_and_says_so(tiny_json, tmp_path):
    first = start(tmp_path, tiny_json, "--non_decay", "0", "--decay", "1", "--save_every_steps", "0")
    assert first.wait(timeout=300) == 0
    previous = (tmp_path / "netG_model_epoch_1.pth").read_bytes()
    full = start(tmp_path, tiny_json, "--resume", "auto", "--non_decay", "1", "--decay", "1", "--save_every_steps", "0",
                 preexec_fn=limit_file_size)
    output, _ = full.communicate(timeout=300)
    assert full.returncode == 1
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert "netG_model_epoch_2.pth: checkpoint not written, the disk is full" in last and "--resume auto" in last
    assert not (tmp_path / "netG_model_epoch_2.pth").exists()
    assert (tmp_path / "netG_model_epoch_1.pth").read_bytes() == previous
    assert not glob.glob(str(tmp_path / ".*.partial*"))


WRITERS = {  # the two ways a video is written: whole (write_video) and streamed while dubbing (VideoEncoder)
    "write_video": "from media.encoder import write_video\ndef write(): write_video({out!r}, frames)",
    "VideoEncoder": ("from media.encoder import VideoEncoder\ndef write():\n"
                     "    encoder = VideoEncoder({out!r}, 256, 256)\n"
                     "    for frame in frames: encoder.write(frame)\n    encoder.close()"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_disk_while_writing_a_video_keeps_the_previous_one_and_says_so(tmp_path, writer):
    from media.encoder import write_video
    import numpy as np
    out = tmp_path / "dubbed.mp4"
    write_video(str(out), [np.zeros((64, 64, 3), np.uint8)] * 5)
    previous = out.read_bytes()
    noise = ("import numpy as np; rng = np.random.default_rng(0)\n"
             "frames = (rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(100))\n"
             + WRITERS[writer].format(out=str(out)) + "\nfrom common.errors import run_command; run_command(write)")
    full = subprocess.run([sys.executable, "-c", noise], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: (signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
                                              resource.setrlimit(resource.RLIMIT_FSIZE, (2 ** 20, 2 ** 20))))
    assert full.returncode != 0 and "Traceback" not in full.stderr
    assert "dubbed.mp4: not written, the disk is full" in full.stderr and "the earlier dubbed.mp4 is intact" in full.stderr
    assert out.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["dubbed.mp4"]
