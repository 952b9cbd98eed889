"""`bench.py --gpu_check OUT`: the one command that measures every speed target on a GPU, run here in its tiny mode so
that it cannot rot before a GPU runs it."""
import json
import sys

import pytest

from common.errors import UserError


@pytest.mark.long
def test_gpu_check_measures_every_target_writes_its_tables_and_a_failing_part_costs_that_part_alone(tmp_path,
                                                                                                     monkeypatch):
    """The command as a user runs it (its main), the loader's part failing as a CUDA error would: device time is
    scarce, so every other part is still measured, the failed part's row says why, the tables are written, and the
    command ends with one line naming the part."""
    from benchmark import cli
    out = tmp_path / "check"
    argv = ["--gpu_check", str(out), "--quick", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["bench.py", *argv])  # training rows run as `python -m benchmark` with them

    def failing(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setitem(cli.TASKS, "loader", failing)
    with pytest.raises(UserError) as stopped:
        cli.main()
    assert str(stopped.value) == "1 row(s) failed: loader: RuntimeError: CUDA error: an illegal memory access was " \
                                 "encountered"
    result = json.loads((out / "gpu_check.json").read_text())
    assert [row for row in result["rows"] if "error" in row] == [
        {"task": "loader", "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}]
    rows = {(row["task"], row.get("mouth"), row.get("baseline", False), row.get("compiled")): row
            for row in result["rows"]}
    published, ours = rows[("train_frame", 64, True, None)], rows[("train_frame", 64, False, "off")]
    assert ours["speedup_vs_published"] == ours["samples_per_s"] / published["samples_per_s"]
    assert not ours["cuda_graph"]
    real = rows[("real_run", 64, False, "off")]
    assert real["steps"] >= 1 and real["share_of_bench"] == real["samples_per_s"] / ours["samples_per_s"]
    dubbing, encoder = rows[("inference", 64, False, None)], rows[("encode_alone", None, False, None)]
    assert dubbing["frames_per_s"] > 0 and encoder["frames_per_s"] > 0
    assert dubbing["decoder"] == encoder["decoder"] == "software"  # no GPU here: no NVDEC asked for
    targets = {line["target"].split(":")[0]: line for line in result["targets"]}
    # every target has its line; those of the sizes the tiny mode leaves out say so
    assert set(targets) == {"frame 64/bs24", "frame 128/bs12", "frame 256/bs4", "clip 256/bs3",
                            "a real frame-stage run >= 90% of bench's synthetic rate", "dubbing at mouth 64, 256x256"}
    assert targets["frame 128/bs12"]["met"] is None and targets["frame 128/bs12"]["measured"] == "not measured"
    assert targets["frame 64/bs24"]["value"] == ours["speedup_vs_published"]
    assert targets["dubbing at mouth 64, 256x256"]["value"] == dubbing["frames_per_s"] / encoder["frames_per_s"]
    table = (out / "gpu_check.md").read_text()
    assert "| target | measured | met |" in table and "real_run" in table
    assert "| loader |  | | failed: RuntimeError: CUDA error" in table
    # what each part cost, the failed one included, to fit the check to the minutes a GPU is lent for
    parts = ["baseline", "train_frame", "train_clip", "loader", "inference", "encode_alone", "real_run",
             "profile (off)"]
    assert list(result["part_seconds"]) == parts and result["part_seconds"]["real_run"] > 1
    assert f"The check took {sum(result['part_seconds'].values()):.0f} s: baseline " in table
    stages = table.split("Dubbing's stages")[1]  # where dubbing waited, to see on the GPU what it waits for
    assert f"- mouth 64 {dubbing['precision']}, {dubbing['frames']} frames" in stages
    assert "host threads 1, software decoding" in stages
    assert all(stage in stages for stage in ("decode", "references", "crops", "generator", "blend", "encode"))
    # where a training step's time goes: its operations by time, and here no GPU to be busy
    profile = rows[("profile", 64, False, "off")]
    assert profile["device_busy"] is None and profile["seconds_per_iter"] > 0
    assert "aten::convolution" in (out / profile["operations"]).read_text()
    assert f"eager {1000 * profile['seconds_per_iter']:.1f} ms a step, no GPU (operations by time: profile_off.txt)" \
        in table


def test_graph_numerics_compares_seeded_runs_and_a_graph_not_used_is_not_counted_as_met():
    """Where the step cannot be a CUDA graph (here, a CPU) the three runs are the same eager steps: equal to the bit,
    and the target says it was not measured rather than met."""
    import argparse

    import torch

    from benchmark.gpu_check import graph_numerics, markdown, targets
    opt = argparse.Namespace(quick=True, video=(256, 256), mouths={64})
    numerics_line = lambda lines: next(line for line in lines if line["target"].startswith("the CUDA-graph step's"))
    row = graph_numerics(torch.device("cpu"), steps=2, batch=1, decayed=1)
    assert row["loss_difference"] == row["eager_loss_difference"] == 0 and not row["cuda_graph"]
    lines = targets([row], opt)
    line = numerics_line(lines)
    assert line["met"] is None and line["measured"] == "not measured"
    assert "| graph_numerics (CUDA graph asked for, not used) | 64 | 1 |" in markdown([row], lines, "cpu", {})
    on_a_gpu = dict(row, cuda_graph=True, loss_difference=0.002, capture_peak_gb=1.8, recapture_peak_gb=1.9)
    line = numerics_line(targets([on_a_gpu], opt))
    assert line["met"] and line["measured"] == ("0.002 at most (eager against eager: 0); peak memory 1.80 GB to the "
                                                "first capture's replays, 1.90 GB over the recapture at half the "
                                                "learning rate")


def test_gpu_check_into_a_folder_that_cannot_be_made_ends_in_one_line_naming_the_flag(monkeypatch):
    """/proc takes no new folder, even from root (for whom permissions alone do not tell)."""
    from benchmark import cli
    monkeypatch.setattr(sys, "argv", ["bench.py", "--gpu_check", "/proc/dub-gpu-check", "--quick", "--device", "cpu"])
    with pytest.raises(UserError, match="^--gpu_check /proc/dub-gpu-check: cannot write there .*; pass a folder you "
                                        "can write to$"):
        cli.main()


def test_a_process_past_its_time_is_stopped_with_every_process_it_started():
    """The check's rows run in processes that start others (ffmpeg, loader workers); stopped at the budget, none
    may go on using the device's time, nor hold the pipe it is read through."""
    import os
    import subprocess
    import time

    from benchmark.processes import run_within
    marker = "31.4159"  # a sleep no other process runs
    started = time.perf_counter()
    with pytest.raises(subprocess.TimeoutExpired):
        run_within(["bash", "-c", f"sleep {marker} & sleep {marker}; wait"], 1.0)
    assert time.perf_counter() - started < 10

    def sleeping():
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found += [pid] if f.read().split(b"\0")[:2] == [b"sleep", marker.encode()] else []
            except OSError:  # ended meanwhile
                pass
        return found
    deadline = time.perf_counter() + 5
    while sleeping() and time.perf_counter() < deadline:  # SIGKILL is delivered, not waited for
        time.sleep(0.05)
    assert not sleeping()
    assert run_within([sys.executable, "-c", "print('done')"], 30).stdout == "done\n"


def test_the_check_keeps_to_its_budget_and_names_what_it_left_out(tmp_path, monkeypatch, capsys):
    """A budget shorter than the first row: that row's process is stopped when it is spent, no later part starts,
    the tables name every row and part left out, and the check ends without an error (nothing failed)."""
    import time

    from benchmark import cli
    out = tmp_path / "check"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--gpu_check", str(out), "--quick", "--device", "cpu",
                                      "--gpu_check_minutes", "0.05"])
    started = time.perf_counter()
    cli.main()
    seconds = time.perf_counter() - started
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["seconds"] < 3 + 10 and seconds < 3 + 30  # 3 s of budget, then the check ends
    why = "not measured: the check's 0.05-minute budget (--gpu_check_minutes) ran out"
    assert result["rows"][0] == dict(task="train_frame", mouth=64, precision="fp32", baseline=True, not_measured=why)
    assert [row["task"] for row in result["rows"][1:]] == ["train_frame", "train_clip", "loader", "inference",
                                                           "encode_alone", "real_run", "profile (off)"]
    assert all(row == dict(task=row["task"], not_measured=why) for row in result["rows"][1:])
    assert all(line["measured"] == "not measured" and line["met"] is None for line in result["targets"])
    table = (out / "gpu_check.md").read_text()
    assert f"| train_frame (published) | 64 | | {why} |" in table
    assert ("Not measured, the budget spent: train_frame 64, train_frame, train_clip, loader, inference, "
            "encode_alone, real_run, profile (off); --gpu_check_minutes gives the check more.") in table
    printed = capsys.readouterr().out  # each part as it starts, with the time left, and why it was left out
    assert "--gpu_check: real_run, 0.0 of 0.05 minutes left\nreal_run: " + why in printed


def test_a_training_target_counts_the_fastest_of_our_rows_and_names_it():
    """The clip stage is measured in fp32 eagerly, as a CUDA graph and as one in bf16: its line is the fastest's,
    saying which it is, and the rows table tells the bf16 row from the fp32 one."""
    import argparse

    from benchmark.gpu_check import markdown, targets
    opt = argparse.Namespace(quick=False, video=(1080, 1920), mouths={256})
    row = dict(task="train_clip", mouth=256, batch=3, precision="fp32", seconds_per_iter=0.5)
    rows = [dict(row, baseline=True, samples_per_s=6.0),
            dict(row, baseline=False, compiled="off", cuda_graph=False, samples_per_s=12.0, mfu=0.23),
            dict(row, baseline=False, compiled="reduce-overhead", cuda_graph=True, samples_per_s=15.0, mfu=0.29),
            dict(row, baseline=False, precision="bf16", compiled="reduce-overhead", cuda_graph=True,
                 samples_per_s=19.5, mfu=0.19)]
    lines = targets(rows, opt)
    clip = next(line for line in lines if line["target"].startswith("clip 256/bs3"))
    assert clip["value"] == 19.5 / 6.0 and clip["met"]
    assert clip["measured"] == "3.25x (19.5 against 6 samples/s; ours bf16, a CUDA graph, MFU 19.0%)"
    table = markdown(rows, lines, "NVIDIA H200", {})
    assert "| train_clip (bf16) (CUDA graph) | 256 | 3 | 19.5 |" in table
    assert "| train_clip (CUDA graph) | 256 | 3 | 15 |" in table


def test_a_bench_run_counts_each_training_stages_flops_once_for_all_its_row_processes(tmp_path, monkeypatch):
    """Every row of a stage (the published iteration's, each precision's, eager or a CUDA graph) counts the same
    network, and a count runs a whole step: the first row's process counts it, the later ones read it."""
    import torch

    from benchmark import training
    counted = tmp_path / "flops.json"
    training.training_flops.cache_clear()
    flops = training.training_flops("train_frame", 64, torch.device("cpu"), "lab1", str(counted))
    assert 100e9 < flops < 120e9 and json.loads(counted.read_text()) == {"train_frame 64 lab1": flops}

    def counting(*args):
        raise AssertionError("counted again")
    monkeypatch.setattr(training, "count_flops", counting)
    training.training_flops.cache_clear()  # as in a new process
    assert training.training_flops("train_frame", 64, torch.device("cpu"), "lab1", str(counted)) == flops
    with pytest.raises(AssertionError, match="counted again"):
        training.training_flops("train_frame", 128, torch.device("cpu"), "lab1", str(counted))
    training.training_flops.cache_clear()
