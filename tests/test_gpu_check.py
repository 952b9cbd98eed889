"""`bench.py --gpu_check OUT`: the one command that measures every speed target on a GPU, run here in its tiny mode so
that it cannot rot before a GPU runs it."""
import json
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_measures_every_target_and_writes_its_tables(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, "bench.py", "--gpu_check", str(out), "--quick", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    rows = {(row["task"], row.get("mouth"), row.get("baseline", False), row.get("compiled")): row
            for row in result["rows"]}
    published, ours = rows[("train_frame", 64, True, None)], rows[("train_frame", 64, False, "off")]
    assert ours["speedup_vs_published"] == ours["samples_per_s"] / published["samples_per_s"]
    assert not ours["cuda_graph"]
    real = rows[("real_run", 64, False, None)]
    assert real["steps"] >= 1 and real["share_of_bench"] == real["samples_per_s"] / ours["samples_per_s"]
    assert rows[("loader", 64, False, None)]["samples_per_s"] > 0
    dubbing, encoder = rows[("inference", 64, False, None)], rows[("encode_alone", None, False, None)]
    assert dubbing["frames_per_s"] > 0 and encoder["frames_per_s"] > 0
    targets = {line["target"].split(":")[0]: line for line in result["targets"]}
    # every target has its line; those of the sizes the tiny mode leaves out say so
    assert set(targets) == {"frame 64/bs24", "frame 128/bs12", "frame 256/bs4", "clip 256/bs3",
                            "a real frame-stage run >= 90% of bench's synthetic rate", "dubbing at mouth 64, 256x256"}
    assert targets["frame 128/bs12"]["met"] is None and targets["frame 128/bs12"]["measured"] == "not measured"
    assert targets["frame 64/bs24"]["value"] == ours["speedup_vs_published"]
    assert targets["dubbing at mouth 64, 256x256"]["value"] == dubbing["frames_per_s"] / encoder["frames_per_s"]
    table = (out / "gpu_check.md").read_text()
    assert "| target | measured | met |" in table and "real_run" in table
    stages = table.split("Dubbing's stages")[1]  # where dubbing waited, to see on the GPU what it waits for
    assert f"- mouth 64 {dubbing['precision']}, {dubbing['frames']} frames" in stages and "host threads 1" in stages
    assert all(stage in stages for stage in ("decode", "references", "crops", "generator", "blend", "encode"))


def test_a_failing_part_costs_that_part_alone_and_the_tables_are_still_written(tmp_path, monkeypatch):
    """Device time is scarce: a part that fails (here dubbing, as a CUDA error would) leaves the other parts measured,
    its own row saying why, and its target 'not measured'; the encoder's ceiling makes its own input video."""
    from contextlib import closing

    from benchmark.cli import TASKS, build_parser, run
    from benchmark.dubbing import DubbingBench
    from benchmark.gpu_check import gpu_check
    out = tmp_path / "check"
    argv = ["--gpu_check", str(out), "--quick", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["bench.py", *argv])  # training rows run as `python -m benchmark` with them
    opt = build_parser().parse_args(argv)

    def failing(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    with closing(DubbingBench(opt)) as dubbing:
        gpu_check(opt, run, dict(TASKS, inference=failing), dubbing)
    result = json.loads((out / "gpu_check.json").read_text())
    failed = [row for row in result["rows"] if "error" in row]
    assert failed == [{"task": "inference", "error": "RuntimeError: CUDA error: an illegal memory access was "
                                                     "encountered"}]
    measured = {row["task"] for row in result["rows"] if "error" not in row}
    assert {"train_frame", "loader", "real_run", "encode_alone"} <= measured
    targets = {line["target"].split(":")[0]: line for line in result["targets"]}
    assert targets["dubbing at mouth 64, 256x256"]["measured"] == "not measured"
    assert targets["frame 64/bs24"]["value"] > 0
    assert "failed: RuntimeError: CUDA error" in (out / "gpu_check.md").read_text()
