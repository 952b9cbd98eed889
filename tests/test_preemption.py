"""Preemption with data-loader workers: SIGTERM or SIGINT to the whole process group (how Slurm, scancel and
torchrun's agent stop a job, and what Ctrl-C in a terminal does) stops a run after the current iteration with a
checkpoint and the resume hint, and `--resume auto` continues it. Real training processes, each in a process
group of its own, signalled with os.killpg."""
import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from models.checkpoint import load_checkpoint
from test_training_faults import last_losses_per_step, logged_steps

SCRIPT = os.path.join(ROOT, "train_DINet_frame.py")
# one epoch of 3 iterations (of the 4 batches of 2 videos x 2 samples); no VGG19, fp32: the cheapest DINet step
RUN = ["--vgg19_weights", "random", "--device", "cpu", "--augment_num", "2", "--batch_size", "1", "--non_decay", "1",
       "--decay", "0", "--checkpoint", "1", "--iterations_per_epoch", "3", "--lamb_perception", "0", "--amp", "off"]
STOPPED = re.compile(r"stopped by (\w+) at epoch 1 iteration (\d): (\S+) holds the run; "
                     r"continue with the same command and --resume auto")
NOTICE = "stopping after this iteration, with a checkpoint"


def start(result_path, tiny_json, *extra, launcher=()):
    """A training run in a process group of its own (as a job under a scheduler)."""
    return subprocess.Popen([sys.executable, *launcher, SCRIPT, "--train_data", tiny_json, "--result_path",
                             str(result_path), *RUN, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, process_group=0,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_steps(process, result_path, steps):
    while logged_steps(result_path) < steps:
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.05)


def finish(process):
    output, _ = process.communicate(timeout=300)
    return output


def loader_workers(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def check_stopped(result_path, signal_name):
    """The log's stop line names a checkpoint that exists, loads, and holds every step the run logged."""
    stopped = STOPPED.search((result_path / "log.txt").read_text())
    assert stopped, (result_path / "log.txt").read_text()[-2000:]
    assert stopped[1] == signal_name
    checkpoint = load_checkpoint(stopped[3])
    assert checkpoint["global_step"] == logged_steps(result_path) == int(stopped[2])
    return stopped[3]


@pytest.mark.parametrize("workers", ["2", "0"])
def test_sigterm_to_the_process_group_stops_with_a_checkpoint_and_resume_auto_continues(tiny_json, tmp_path, workers):
    run = start(tmp_path, tiny_json, "--num_workers", workers)
    wait_for_steps(run, tmp_path, 1)
    os.killpg(run.pid, signal.SIGTERM)  # the main process and its loader workers alike, as scancel does
    output = finish(run)
    assert run.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output and output.count(NOTICE) == 1
    path = check_stopped(tmp_path, "SIGTERM")
    resumed = start(tmp_path, tiny_json, "--num_workers", workers, "--resume", "auto")
    output = finish(resumed)
    assert resumed.returncode == 0, output[-3000:]
    assert f"resumed from {path}" in (tmp_path / "log.txt").read_text()
    assert sorted(last_losses_per_step(tmp_path)) == [0, 1, 2]


def test_ctrl_c_in_a_terminal_stops_the_same_way_with_one_notice(tiny_json, tmp_path):
    run = start(tmp_path, tiny_json, "--num_workers", "2")
    wait_for_steps(run, tmp_path, 1)
    os.killpg(run.pid, signal.SIGINT)  # a terminal sends Ctrl-C to its whole foreground process group
    output = finish(run)
    assert run.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback" not in output
    assert output.count(NOTICE) == 1  # the workers neither stop nor speak
    check_stopped(tmp_path, "SIGINT")


def test_a_signal_to_a_loader_worker_alone_is_ignored_and_the_main_process_decides(tiny_json, tmp_path):
    # 6 iterations: each line is logged when the next step is done, so 2 lines mean 3 steps, and the stop must come
    # before the epoch ends
    run = start(tmp_path, tiny_json, "--num_workers", "2", "--augment_num", "4", "--iterations_per_epoch", "6")
    wait_for_steps(run, tmp_path, 1)
    workers = loader_workers(run.pid)
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker, signal.SIGTERM)
        os.kill(worker, signal.SIGINT)
    wait_for_steps(run, tmp_path, 2)  # training goes on
    assert loader_workers(run.pid) == workers
    run.send_signal(signal.SIGTERM)
    output = finish(run)
    assert run.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output
    check_stopped(tmp_path, "SIGTERM")


def test_torchrun_killed_with_its_process_group_stops_every_rank_after_the_same_iteration(tiny_json, tmp_path):
    """torchrun's agent runs each rank in a process group of its own: the group's SIGTERM reaches the agent, which sends
    it to each rank's group (the rank and its loader workers) and SIGKILLs them after --shutdown_timeout."""
    result_path, logs = tmp_path / "run", tmp_path / "ranks"
    run = start(result_path, tiny_json, "--num_workers", "1",
                launcher=["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--log_dir", str(logs), "--redirects", "3"])
    wait_for_steps(run, result_path, 1)
    os.killpg(run.pid, signal.SIGTERM)
    finish(run)  # torchrun's own exit: its agent re-raises the signal as an exception, with a traceback
    path = check_stopped(result_path, "SIGTERM")
    ranks = sorted(glob.glob(str(logs / "**" / "stderr.log"), recursive=True))
    assert len(ranks) == 2
    for rank in ranks:
        text = open(rank).read()
        assert "Traceback" not in text, text[-3000:]
    assert [str(p) for p in result_path.glob("*.pth")] == [path]  # rank 0 alone writes


def test_the_step_checkpoint_just_written_stays_when_the_folder_holds_newer_ones(tiny_json, tmp_path):
    """Resumed from an earlier step checkpoint, a run finds the later ones of the run it replaces: it keeps the newest
    --keep_step_checkpoints of them and the one it has just written and named in the log."""
    from config.config import training_parser
    from engine.trainer import train

    def run(*extra):
        train(training_parser("test", str(tmp_path)).parse_args(
            ["--train_data", tiny_json, "--result_path", str(tmp_path), *RUN, "--num_workers", "0",
             "--save_every_steps", "1", *extra]))

    run("--keep_step_checkpoints", "3")
    assert sorted(p.name for p in tmp_path.glob("*_iter_*.pth")) == [f"netG_model_epoch_1_iter_{i}.pth"
                                                                     for i in (1, 2, 3)]
    run("--keep_step_checkpoints", "1", "--resume", str(tmp_path / "netG_model_epoch_1_iter_1.pth"),
        "--iterations_per_epoch", "2")
    written = tmp_path / "netG_model_epoch_1_iter_2.pth"
    assert f"checkpoint saved: {written}" in (tmp_path / "log.txt").read_text()
    assert load_checkpoint(str(written))["global_step"] == 2
    assert sorted(p.name for p in tmp_path.glob("*_iter_*.pth")) == [written.name, "netG_model_epoch_1_iter_3.pth"]
