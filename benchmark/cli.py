"""The command line of the benchmark: which rows to measure, each training row in a process of its own, the table."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import closing

import torch

import benchmark
from common.devices import resolve_amp
from common.errors import ArgumentParser, UserError
from common.files import write_atomically
from config.ranges import integer, number

from .dubbing import DubbingBench
from .generator import bench_generator
from .gpu_check import gpu_check
from .loader import bench_loader
from .measure import CLIP_STAGES, STAGES, out_of_time, seconds_left, selected, unmeasured
from .processes import ROOT, run_within
from .training import bench_baseline, bench_train_clip, bench_train_frame

# the stages (frame or clip) and their (mouth, batch) rows of each training task, each row measured in a process of
# its own
TRAINING_TASKS = {"baseline": (("train_frame", STAGES), ("train_clip", CLIP_STAGES)),
                  "train_frame": (("train_frame", STAGES),), "train_clip": (("train_clip", CLIP_STAGES),)}
# inference is DubbingBench.rows, made per run
TASKS = {"generator": bench_generator, "train_frame": bench_train_frame, "train_clip": bench_train_clip,
         "baseline": bench_baseline, "inference": None, "loader": bench_loader}


def training_row_in_process(opt, task, stage, precision, mouth):
    """The row of one training task, stage (train_frame, train_clip), precision and mouth size, measured by this script in a process of its
    own: a row that runs out of memory (the kernel kills it) or fails costs that row alone, reported as such."""
    with tempfile.TemporaryDirectory(prefix="bench-row-") as folder:
        path = os.path.join(folder, "rows.json")
        # argparse keeps the last of a repeated flag: the row's own settings override the command line's
        command = [sys.executable, "-m", "benchmark", *sys.argv[1:], "--tasks", task, "--precision", precision,
                   "--mouths", str(mouth), "--train_iterations", str(opt.train_iterations), "--train_warmup",
                   str(opt.train_warmup), "--compile", opt.compile, "--stage", stage, "--json", path, "--in_process",
                   "--flops_counted", opt.flops_counted]
        try:
            done = run_within(command, seconds_left(opt), cwd=ROOT)
        except subprocess.TimeoutExpired:
            return [dict(task=stage, mouth=mouth, precision=precision, baseline=task == "baseline",
                         not_measured=out_of_time(opt))]
        if done.returncode == 0:
            with open(path) as f:
                return json.load(f)
    if done.returncode in (-9, 137):
        error = "killed by the system, most likely out of memory"
    else:
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return [dict(task=stage, mouth=mouth, precision=precision, baseline=task == "baseline", error=error)]


# dense tensor-core peaks (TFLOP/s) of the datacenter GPUs met so far, from NVIDIA's datasheets (SXM parts); fp32
# rows are counted against TF32's, which cuDNN's convolutions use by default in PyTorch
GPU_PEAKS = {"H100": {"bf16": 989.0, "fp32": 494.5}, "H200": {"bf16": 989.0, "fp32": 494.5},
             "A100": {"bf16": 312.0, "fp32": 156.0}}


def video_size(text):
    """--video WxH as (width, height): even sides (the H.264 4:2:0 source drawn for it), 64 or more."""
    try:
        width, height = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 1080x1920, got {text}") from None
    if min(width, height) < 64 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"must be WxH with even sides of 64 or more, got {text}")
    return width, height


def peak_tflops(given, device):
    """{precision: TFLOP/s} for MFU: --peak_tflops as one number for every precision or as bf16=X,fp32=Y; without
    it, GPU_PEAKS for a GPU whose name holds a key there; else {} (no MFU)."""
    if given:
        try:
            peaks = ({"bf16": float(given), "fp32": float(given)} if "=" not in given else
                     {name: float(value) for name, value in (item.split("=") for item in given.split(","))})
        except ValueError:
            raise UserError(f"--peak_tflops {given}: not a number nor bf16=X,fp32=Y; pass e.g. "
                             f"--peak_tflops 989 or --peak_tflops bf16=989,fp32=494.5") from None
        if not all(peak in number(above=0) for peak in peaks.values()):
            raise UserError(f"--peak_tflops {given}: a peak must be a number > 0; pass e.g. --peak_tflops 989")
        return peaks
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peaks for key, peaks in GPU_PEAKS.items() if key in name), {})
    return {}


def print_table(rows, peaks):
    header = (f"{'task':<12}{'mouth':>6}{'batch':>6}{'prec':>21}{'samples/s':>11}{'s/iter':>9}{'GFLOP/sample':>14}"
              f"{'GFLOP/s':>10}{'GB':>6}")
    if peaks:
        header += f"{'MFU':>7}"
    print(header)
    for row in rows:
        if unmeasured(row):
            how = row["precision"] + (" (published way)" if row.get("baseline") else "")
            print(f"{row['task']:<12}{row['mouth']:>6}{'':>6}{how:>21}  {unmeasured(row)}", flush=True)
            continue
        rate = row.get("samples_per_s", row.get("frames_per_s"))
        how = row["precision"] + "".join(tag for tag, on in (
            ("+NHWC", row.get("channels_last")), ("+3dAdaAT", row.get("adaat") == "published"),
            ("+ref1x", row.get("reference_once")), ("+cmp", row.get("compiled") in (True, "default")),
            ("+graph", row.get("compiled") == "reduce-overhead")) if on)
        cell = lambda key, width, spec: format(row[key], f">{width}{spec}") if row.get(key) else " " * width
        line = (f"{row['task']:<12}{row['mouth']:>6}{row['batch']:>6}{how:>21}{rate:>11.2f}{cell('seconds_per_iter', 9, '.3f')}"
                f"{cell('gflops_per_sample', 14, '.1f')}{cell('achieved_gflops_per_s', 10, '.0f')}"
                f"{cell('peak_memory_gb', 6, '.1f')}")
        if "mfu" in row:
            line += f"{row['mfu']:>7.1%}"
        if row["task"] == "inference" and row.get("baseline"):
            line += f"  the published loop ({row['frames']} frames: JPEG frames, batch 1, XVID)"
        if "speedup_vs_published" in row:
            line += f"  {row['speedup_vs_published']:.2f}x the published " + (
                "loop" if row["task"] == "inference" else "iteration")
        if len(row.get("runs_frames_per_s", ())) > 1:
            line += f"  (median of {len(row['runs_frames_per_s'])} runs: " + \
                    " ".join(f"{rate:.2f}" for rate in row["runs_frames_per_s"]) + ")"
        if "psnr_vs_fp32" in row:
            line += f"  PSNR vs fp32 {row['psnr_vs_fp32']:.1f} dB (face boxes {row['face_psnr_vs_fp32']:.1f} dB)"
        if row["task"] == "loader":
            line += (f"  cached; every JPEG decoded {row['decoded_samples_per_s']:.1f} samples/s; "
                     f"{row['num_workers']} workers")
        print(line, flush=True)


def build_parser():
    parser = ArgumentParser(prog="bench.py", description=benchmark.__doc__.splitlines()[0],
                            epilog="\n".join(benchmark.__doc__.splitlines()[2:]),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="baseline,train_frame,train_clip,inference,loader",
                        help="comma list of " + ", ".join(TASKS) + " (baseline: the published code's way, fp32 only)")
    parser.add_argument("--channels_last", default="on", choices=("on", "off"), help="for the training rows")
    parser.add_argument("--precision", default="auto", help="comma list of fp32, bf16; auto: both where the device "
                        "computes bf16 natively (GPUs from Ampere on, CPUs with AVX512-BF16 or AMX), else fp32")
    parser.add_argument("--device", default=None)
    parser.add_argument("--lab", default="lab1")
    parser.add_argument("--mouths", default="64,128,256", type=lambda text: {int(m) for m in text.split(",")},
                        help="comma list: the mouth sizes of the training and dubbing rows (the clip stage is 256; "
                             "in fp32 on a CPU it needs more than 24 GB of memory)")
    parser.add_argument("--iterations", type=integer(1), default=5, help="timed generator calls")
    parser.add_argument("--warmup", type=integer(0), default=2)
    parser.add_argument("--train_iterations", type=integer(1), default=2, help="timed training iterations")
    parser.add_argument("--train_warmup", type=integer(0), default=1, help="untimed training iterations first")
    parser.add_argument("--compile", default="off", choices=("on", "off", "reduce-overhead"),
                        help="on: torch.compile the generator (generator and training rows; the warm-up calls compile: "
                             "give --warmup >= 2); reduce-overhead: the training rows' step as one CUDA graph, as "
                             "training's --compile reduce-overhead (give --train_warmup >= 4)")
    parser.add_argument("--generator_batch", type=integer(1), default=64, help="batch for generator throughput on GPU")
    parser.add_argument("--inference_batch", type=integer(1), default=16)
    parser.add_argument("--video", type=video_size, default="1080x1920",
                        help="inference: WxH of the video to dub (1080x1920: the published figure's; the sample clip "
                             "of ../shared/data when present, else the demo face on it)")
    parser.add_argument("--video_seconds", type=number(0.4), default=10.0,
                        help="inference: seconds of video and speech (10 frames or more: the shortest video data "
                             "preparation takes)")
    parser.add_argument("--published_loop", default="on", choices=("on", "off"),
                        help="inference: also run DINet's published inference loop on the same video and machine "
                             "(benchmark/published/; its own row, and each row's speed-up over it)")
    parser.add_argument("--inference_repeats", type=integer(1), default=1,
                        help="inference: runs of each dubbing row, in turn with runs of the published loop (for the "
                             "first precision); rows give their runs' median frames/s (and every run's in the JSON)")
    parser.add_argument("--dub_decoder", default="auto", choices=("auto", "software"),
                        help="inference: what decodes the video: auto as inference.py (NVDEC on a GPU where ffmpeg "
                             "can), or ffmpeg's software decoder")
    parser.add_argument("--num_workers", type=integer(0), default=None,
                        help="loader: worker processes (default: training's for the device)")
    parser.add_argument("--loader_augment_num", type=integer(1), default=32, help="loader: samples per video per epoch")
    parser.add_argument("--quick", action="store_true", help="batch <= 2 for training rows (smoke test)")
    parser.add_argument("--train_batch", type=integer(1), default=None,
                        help="batch of every training row instead of the lab's (where memory is short)")
    parser.add_argument("--peak_tflops", default=None, help="device peak TFLOP/s for model-FLOP utilisation (MFU): "
                        "one number, or per precision as bf16=989,fp32=494.5 (known for H100, H200, A100)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--gpu_check", default=None, metavar="OUT",
                        help="measure every speed target in one run (its own choice of rows and settings, with --quick "
                             "a tiny one) and write OUT/gpu_check.json and .md after every part")
    parser.add_argument("--gpu_check_minutes", type=number(above=0), default=6.0,
                        help="--gpu_check's budget: a part starts only while time is left, a row's process still "
                             "running when it is spent is stopped, and the rows left out are named (every part: an "
                             "estimated 5-9 minutes on one GPU, each target's rows first)")
    parser.add_argument("--real_run_seconds", type=number(1), default=20.0,
                        help="--gpu_check: seconds each real training run is timed for, after its first 10 steps")
    parser.add_argument("--in_process", action="store_true", help=argparse.SUPPRESS)  # a training row's own process
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # its stage, of the baseline's two
    parser.add_argument("--flops_counted", default=None, help=argparse.SUPPRESS)  # the FLOPs its run's rows counted
    return parser


def main():
    opt = build_parser().parse_args()
    with closing(DubbingBench(opt)) as dubbing, tempfile.TemporaryDirectory(prefix="bench-flops-") as folder:
        if not opt.in_process:  # the training rows' processes count each stage's FLOPs once
            opt.flops_counted = os.path.join(folder, "flops.json")
        tasks = dict(TASKS, inference=dubbing.rows)
        if opt.gpu_check and not opt.in_process:
            rows = gpu_check(opt, run, tasks, dubbing)["rows"]
        else:
            rows, _ = run(opt, tasks)
    if not opt.in_process:
        check_failures(rows)


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run(opt, tasks, rows=None):
    """Measure and print the rows of opt.tasks, added to `rows` (those measured before, each training row's speed-up
    found among them); returns (rows, device)."""
    device = torch.device(opt.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if opt.precision == "auto":
        opt.precision = "fp32,bf16" if resolve_amp("auto", device) == "bf16" else "fp32"
        if opt.precision == "fp32" and not opt.in_process:
            print("bf16 rows skipped: this device has no native bf16 (emulated, it is several times slower than "
                  "fp32); --precision fp32,bf16 measures them anyway")
    for flag, given, known in (("--tasks", opt.tasks.split(","), tasks), ("--precision", opt.precision.split(","),
                               ("fp32", "bf16")), ("--mouths", opt.mouths, [mouth for mouth, _ in STAGES])):
        unknown = [str(value) for value in given if value not in known]
        if unknown:
            raise UserError(f"{flag}: {', '.join(unknown)} unknown; pass a comma list of "
                             f"{', '.join(str(value) for value in known)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {device_name(device)}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    peaks = peak_tflops(opt.peak_tflops, device)
    if peaks:
        print("MFU against peaks of " + ", ".join(f"{name} {value:g}" for name, value in peaks.items()) + " TFLOP/s")
    rows = [] if rows is None else rows
    for task in opt.tasks.split(","):
        precisions = {"baseline": ("fp32",), "loader": ("-",)}.get(task, opt.precision.split(","))
        for precision in precisions:
            if task in TRAINING_TASKS and not opt.in_process:
                new_rows = [row for stage, stages in TRAINING_TASKS[task] for mouth, _ in selected(stages, opt.mouths)
                            for row in training_row_in_process(opt, task, stage, precision, mouth)]
            else:
                new_rows = tasks[task](opt, device, precision, opt.lab)
            for row in new_rows:
                published = next((old for old in rows if old.get("baseline") and "samples_per_s" in old and all(
                    old.get(key) == row.get(key) for key in ("task", "mouth", "batch"))), None)
                if published and not row.get("baseline") and "samples_per_s" in row:
                    row["speedup_vs_published"] = row["samples_per_s"] / published["samples_per_s"]
                if row.get("achieved_gflops_per_s") and row["precision"] in peaks:
                    row["mfu"] = row["achieved_gflops_per_s"] / (peaks[row["precision"]] * 1e3)
            print_table(new_rows, peaks)
            rows += new_rows
            if opt.json:  # after every task: a run cut short keeps the rows it measured
                write_atomically(opt.json, lambda f: json.dump(rows, f, indent=1), mode="w")
    return rows, device


def check_failures(rows):
    failed = [row for row in rows if "error" in row]
    if failed:
        raise UserError(f"{len(failed)} row(s) failed: " + "; ".join(
            " ".join(str(row[key]) for key in ("task", "mouth", "precision") if key in row) + f": {row['error']}"
            for row in failed))  # a --gpu_check part's row names its part alone

