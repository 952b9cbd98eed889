"""`bench.py --gpu_check OUT`: every speed target measured in one run (an estimated 5-9 minutes on one H100/H200, not
yet timed on one), within a budget (--gpu_check_minutes, 6 by default: a part starts only while time is left, a
row's process still running when it is spent is stopped with every process it started, and the rows and parts left
out are named), written to OUT/gpu_check.json (rows and targets) and OUT/gpu_check.md (the tables) after every
part, in this order: bench's training rows, the loader, dubbing and the encoder alone, the real run, the CUDA-graph
rows, the graph's numerics, the real run as a CUDA graph and the clip stage's graph in bf16, where dubbing decoded
with the GPU's decoder (NVDEC) dubbing at mouth 64 with ffmpeg's software decoder, and last the frame step under the
profiler. With --quick the same rows, tiny, at mouth 64 (a CPU test runs it so that it cannot rot; on a CPU it leaves
out the CUDA-graph parts).

- training, fp32: the published iteration and ours (eager, and the step as one CUDA graph: --compile reduce-overhead)
  at frame 64/bs24, 128/bs12, 256/bs4 and clip 256/bs3, samples/s, ours against the published (the fastest of ours,
  named), MFU on a known GPU; and the clip stage's CUDA graph in bf16 too;
- a real training run: `data_processing.py --make_demo_data`, then `train_DINet_frame.py` (mouth 64, batch 24, its
  default loader workers, no crop cache: every JPEG decoded, as on a data set larger than the cache) for
  --real_run_seconds, its samples/s from its log as it grows, stopped by SIGTERM, against the bench row's rate; the
  same with --compile reduce-overhead against the CUDA-graph row; and bench's loader rows;
- the CUDA-graph step's numerics: its losses over a few seeded steps, and a few more recaptured at a new learning
  rate, against the eager step's; its peak memory over the first capture and the recapture;
- dubbing end to end at 1080x1920 per mouth size (decoding as inference.py does: with NVDEC where it can), against
  ffmpeg encoding the same video alone with the same x264 settings (and the GPU's decoder where this ffmpeg has
  one, the faster of the two).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import imageio_ffmpeg
import torch

from common.errors import UserError
from common.files import make_folder, write_atomically
from media.encoder import DEFAULT_PRESET, FAST_MOTION_SEARCH

from .measure import STAGES, out_of_time, seconds_left, selected, unmeasured
from .processes import ROOT, kill_group, run_within

TRAINING_SPEEDUP, REAL_RUN_SHARE, DUBBING_SHARE = 3.0, 0.9, 0.8  # the targets
GRAPH_LOSS_TOLERANCE = 0.01  # the CUDA graph's losses against the eager step's, relative
REAL_RUN = dict(mouth=64, batch=24, workers=None)  # training's default workers
QUICK_REAL_RUN = dict(mouth=64, batch=2, workers=1)


def configure(opt):
    """The bench options of the check: fp32 training rows with the published ones, the loader, dubbing without the
    published loop (its target is the encoder's rate)."""
    opt.tasks = "baseline,train_frame,train_clip,loader,inference"
    opt.precision = "fp32"
    opt.published_loop = "off"
    if opt.quick:
        opt.mouths = {64}
        opt.train_iterations, opt.train_warmup = 1, 1
        opt.video, opt.video_seconds = (256, 256), 0.4
    else:
        opt.train_iterations, opt.train_warmup = 20, 5


def real_training_run(opt, folder, bench_rows, device, compile="off"):
    """The frame stage trained as a user runs it, on the procedural demo data: samples/s while its log grows
    (after its first steps), then SIGTERM; returns a row. `compile`: its --compile (reduce-overhead: the step as a
    CUDA graph, captured while the loader's threads pin the next batches)."""
    setting = QUICK_REAL_RUN if opt.quick else REAL_RUN
    data = os.path.join(folder, "demo_data")
    if not os.path.exists(data):
        subprocess.run([sys.executable, "data_processing.py", "--make_demo_data", "--demo_dir", data, "--num_videos",
                        "2" if opt.quick else "4", "--seed", "0"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    result = os.path.join(folder, f"real_run_{compile}")
    command = [sys.executable, "train_DINet_frame.py", "--train_data", os.path.join(data, "training_json.json"),
               "--result_path", result, "--mouth_region_size", str(setting["mouth"]), "--batch_size",
               str(setting["batch"]), "--augment_num", "100000", "--frame_cache_mb", "0", "--vgg19_weights", "random",
               "--amp", "off", "--compile", compile]  # the rest as the lab runs it: grids, TensorBoard, the log line
    if setting["workers"] is not None:
        command += ["--num_workers", str(setting["workers"])]
    if opt.device:
        command += ["--device", opt.device]
    metrics = os.path.join(result, "metrics.jsonl")
    warm_steps, window = (2, 5.0) if opt.quick else (10, opt.real_run_seconds)
    errors = os.path.join(folder, "real_run.stderr")  # a file, not a pipe: its progress bar would fill one and stall it
    with open(errors, "w") as stderr:  # its own process group: its loader workers go with it if it must be killed
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
    first = last = None  # (time, steps logged)
    try:
        while process.poll() is None and seconds_left(opt) != 0:
            steps = count_lines(metrics)
            now = time.perf_counter()
            if first is None and steps >= warm_steps:
                first = (now, steps)
            if first is not None:
                last = (now, steps)
                if now - first[0] >= window and steps > first[1]:
                    break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # it stops after a checkpoint, as a user's Ctrl-C would
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_group(process)
            process.wait()
    if first is None or last[1] <= first[1]:
        if seconds_left(opt) == 0:
            raise subprocess.TimeoutExpired(command, window)  # the check's budget ran out first
        with open(errors) as f:
            raise UserError(f"the real training run logged too few steps: {f.read().strip()[-2000:]}")
    rate = (last[1] - first[1]) * setting["batch"] / (last[0] - first[0])
    from engine.trainer import loader_workers
    row = dict(task="real_run", mouth=setting["mouth"], batch=setting["batch"], precision="fp32", compiled=compile,
               num_workers=loader_workers(setting["workers"], device), samples_per_s=rate, steps=last[1] - first[1],
               seconds=last[0] - first[0])
    if compile == "reduce-overhead":  # it says so in its log where it trained without the graph
        from engine.graphs import WITHOUT_GRAPHS
        with open(os.path.join(result, "log.txt")) as f:
            row["cuda_graph"] = WITHOUT_GRAPHS not in f.read()
    bench = find(bench_rows, task="train_frame", mouth=setting["mouth"], baseline=False, compiled=compile)
    if bench:
        row["share_of_bench"] = rate / bench["samples_per_s"]
    return row


def frame_step(device, batch, mode):
    """(runner, batch, counters): the frame stage at mouth 64 from seed 0 on a synthetic batch, as bench's rows build
    it, and its step as training runs it under --compile `mode`, quietly."""
    from engine.distributed import Runtime
    from engine.graphs import StepRunner

    from .training import training_stage
    torch.manual_seed(0)
    stage, data = training_stage("train_frame", 64, batch, device, "fp32", True, "lab1", mode)
    return StepRunner(stage, Runtime(device), mode, say=lambda line: None), data, torch.zeros(2, device=device)


def graph_numerics(device, steps=6, batch=4, decayed=3):
    """The frame stage at mouth 64 on one seeded synthetic batch for `steps` steps, then `decayed` more at half the
    learning rates (a new rate: a new capture, as each epoch of DINet's decay makes), eagerly twice (the device's
    own run-to-run difference) and with --compile reduce-overhead (eager warm-up steps, then captured and replayed):
    the largest relative difference of a loss from the first eager run's, and on a GPU the graph run's peak memory
    up to the first capture's replays and over the recapture's, in a row."""
    runs, on_gpu = {}, device.type == "cuda"
    for name, mode in (("eager", "off"), ("eager again", "off"), ("graph", "reduce-overhead")):
        runner, data, counters = frame_step(device, batch, mode)
        losses = []
        for step in range(steps + decayed):
            if step in (0, steps) and on_gpu:  # at `steps`: the peak up to the first capture's replays
                peak = torch.cuda.max_memory_allocated(device) / 1e9
                torch.cuda.reset_peak_memory_stats(device)
            if step == steps:
                for optimizer in runner.stage.optimizers.values():
                    for group in optimizer.param_groups:
                        group["lr"] /= 2
            names, values, counters, _ = runner(data, counters)
            losses.append(values[:len(names)].tolist())
        runs[name] = torch.tensor(losses, dtype=torch.float64)
    difference = lambda name: ((runs[name] - runs["eager"]).abs() / runs["eager"].abs().clamp_min(1e-6)).max().item()
    row = dict(task="graph_numerics", mouth=64, batch=batch, steps=steps, decayed_steps=decayed,
               compiled="reduce-overhead", cuda_graph=runner.graph is not None, loss_difference=difference("graph"),
               eager_loss_difference=difference("eager again"))
    if on_gpu and row["cuda_graph"]:  # the graph run's
        row.update(capture_peak_gb=peak, recapture_peak_gb=torch.cuda.max_memory_allocated(device) / 1e9)
    return row


def profile_step(opt, device, mode="off"):
    """Where a training step's time goes (frame 64/bs24, tiny with --quick): a few steps under torch.profiler after
    the warm-up (and the capture, as a CUDA graph); in a row, the device's busy share of their wall time (its kernels'
    time over it: low means it waits on launches or the host); the operations by time in OUT/profile_<mode>.txt."""
    from torch.profiler import ProfilerActivity, profile

    from engine.graphs import WARMUP_STEPS
    batch, steps = (QUICK_REAL_RUN if opt.quick else REAL_RUN)["batch"], 2 if opt.quick else 10
    on_gpu = device.type == "cuda"
    runner, data, counters = frame_step(device, batch, mode)
    synchronize = torch.cuda.synchronize if on_gpu else lambda: None
    for _ in range(WARMUP_STEPS + 2 if mode == "reduce-overhead" else 2):  # a graph's: its warm-up, capture, replay
        runner(data, counters)
    synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            runner(data, counters)
        synchronize()
        seconds = time.perf_counter() - started
    averages = profiler.key_averages()
    name = f"profile_{mode}.txt"
    table = averages.table(sort_by="self_device_time_total" if on_gpu else "self_cpu_time_total", row_limit=30)
    write_atomically(os.path.join(opt.gpu_check, name), lambda f: f.write(table), mode="w")
    busy = sum(event.self_device_time_total for event in averages) / 1e6 / seconds if on_gpu else None
    return dict(task="profile", mouth=64, batch=batch, compiled=mode, cuda_graph=runner.graph is not None,
                steps=steps, seconds_per_iter=seconds / steps, device_busy=busy, operations=name)


def count_lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def encode_alone(opt, video, folder, device):
    """ffmpeg decoding `video` and encoding it with dubbing's x264 settings and nothing else, frames/s: with the
    software decoder, and with CUDA's where this ffmpeg has it and the device is a GPU; the faster one."""
    from dubbing.pipeline import encoder_threads, nvdec_device
    from media.ffmpeg import cuda_decoding, probe
    threads = encoder_threads(device)
    info = probe(video)
    frames = round(info["duration"] * info["fps"])
    nvdec = nvdec_device(device)  # where dubbing would decode with NVDEC
    decoders = [("software", [])] + ([("cuda", cuda_decoding(nvdec))] if nvdec is not None else [])
    rows = []
    for name, decoder in decoders:
        output = os.path.join(folder, f"encode_alone_{name}.mp4")
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *decoder, "-i", video,
                   "-map", "0:v", "-c:v", "libx264", "-preset", DEFAULT_PRESET, "-pix_fmt", "yuv420p", "-crf", "18",
                   "-x264-params", FAST_MOTION_SEARCH, *(["-threads", str(threads)] if threads else []), output]
        started = time.perf_counter()
        done = run_within(command, seconds_left(opt))
        seconds = time.perf_counter() - started
        if done.returncode == 0:
            rows.append(dict(task="encode_alone", decoder=name, frames=frames, seconds=seconds,
                             frames_per_s=frames / seconds))
    if not rows:
        raise UserError(f"ffmpeg could not encode {video} alone: {done.stderr.strip()[-500:]}")
    return max(rows, key=lambda row: row["frames_per_s"])


def find(rows, **fields):
    """The fastest row with these fields (None: none measured)."""
    found = [row for row in rows if not unmeasured(row) and all(row.get(k) == v for k, v in fields.items())]
    return max(found, key=lambda row: row.get("samples_per_s", row.get("frames_per_s", 0)), default=None)


def rate_text(value):
    """A rate with three significant digits, never in exponent form (1234.5 -> 1234)."""
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def targets(rows, opt):
    """One line per target: what it asks, what was measured, and whether it is met (None: not measured)."""
    lines = []

    def line(target, value, goal, measured, at_most=False):
        lines.append(dict(target=target, measured="not measured" if value is None else measured(), value=value,
                          met=None if value is None else value <= goal if at_most else value >= goal))

    for task, stages in (("train_frame", STAGES), ("train_clip", ((256, 3),))):
        for mouth, batch in stages:
            ours = find(rows, task=task, mouth=mouth, baseline=False)
            published = find(rows, task=task, mouth=mouth, baseline=True)
            ratio = ours["samples_per_s"] / published["samples_per_s"] if ours and published else None
            line(f"{'frame' if task == 'train_frame' else 'clip'} {mouth}/bs{batch}: ours >= {TRAINING_SPEEDUP:g}x the "
                 f"published iteration's samples/s", ratio, TRAINING_SPEEDUP,
                 lambda: f"{ratio:.2f}x ({rate_text(ours['samples_per_s'])} against "
                         f"{rate_text(published['samples_per_s'])} samples/s; ours {ours['precision']}, "
                         f"{'a CUDA graph' if ours.get('cuda_graph') else 'eager'}"
                         f"{', MFU %.1f%%' % (100 * ours['mfu']) if 'mfu' in ours else ''})")
    for compiled, what in (("off", ""), ("reduce-overhead", " with --compile reduce-overhead")):
        real = find(rows, task="real_run", compiled=compiled)
        if compiled == "off" or real:  # the lab's command always has its line; the CUDA graph's where it ran
            share = real.get("share_of_bench") if real else None
            line(f"a real frame-stage run{what} >= {REAL_RUN_SHARE:.0%} of bench's synthetic rate", share,
                 REAL_RUN_SHARE, lambda: f"{share:.0%} ({rate_text(real['samples_per_s'])} samples/s, "
                                         f"{real['num_workers']} workers)")
    numerics = find(rows, task="graph_numerics")
    if numerics:
        line(f"the CUDA-graph step's losses within {GRAPH_LOSS_TOLERANCE:.0%} of the eager step's (frame 64, "
             f"{numerics['steps']} steps on one seeded batch, {numerics['decayed_steps']} more recaptured at half "
             f"the learning rate)",
             numerics["loss_difference"] if numerics["cuda_graph"] else None, GRAPH_LOSS_TOLERANCE,
             lambda: f"{numerics['loss_difference']:.2g} at most (eager against eager: "
                     f"{numerics['eager_loss_difference']:.2g}); peak memory {numerics['capture_peak_gb']:.2f} GB "
                     f"to the first capture's replays, {numerics['recapture_peak_gb']:.2f} GB over the recapture at "
                     f"half the learning rate", at_most=True)
    encode = find(rows, task="encode_alone")
    for mouth in (64,) if opt.quick else [mouth for mouth, _ in selected(STAGES, opt.mouths)]:  # dubbing's sizes
        row = find(rows, task="inference", mouth=mouth)
        share = row["frames_per_s"] / encode["frames_per_s"] if row and encode else None
        line(f"dubbing at mouth {mouth}, {opt.video[0]}x{opt.video[1]}: >= {DUBBING_SHARE:.0%} of ffmpeg encoding "
             f"the video alone", share, DUBBING_SHARE,
             lambda: f"{share:.0%} ({rate_text(row['frames_per_s'])} against {rate_text(encode['frames_per_s'])} "
                     f"frames/s, {encode['decoder']} decoding)")
    return lines


def markdown(rows, lines, device_name, part_seconds):
    text = [f"# Speed targets on {device_name}", "", "| target | measured | met |", "|---|---|---|"]
    text += [f"| {line['target']} | {line['measured']} | "
             f"{'-' if line['met'] is None else 'yes' if line['met'] else '**no**'} |" for line in lines]
    text += ["", "| row | mouth | batch | samples or frames / s | s / iter | GFLOP/s | MFU | GB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        graph = "CUDA graph" if row.get("cuda_graph") else "CUDA graph asked for, not used" \
            if row.get("compiled") == "reduce-overhead" else None
        notes = ["published" if row.get("baseline") else None, "bf16" if row.get("precision") == "bf16" else None,
                 graph, row.get("decoder"),
                 f"{row['num_workers']} workers; cache warm, every JPEG decoded "
                 f"{rate_text(row['decoded_samples_per_s'])}/s" if "decoded_samples_per_s" in row else None]
        name = row["task"] + "".join(f" ({note})" for note in notes if note)
        if unmeasured(row):
            text.append(f"| {name} | {row.get('mouth', '')} | | {unmeasured(row)} | | | | |")
            continue
        rate = row.get("samples_per_s", row.get("frames_per_s"))
        cell = lambda key, spec: format(row[key], spec) if row.get(key) is not None else ""
        text.append(f"| {name} | {row.get('mouth', '')} | {row.get('batch', '')} | {rate_text(rate) if rate else ''} | "
                    f"{cell('seconds_per_iter', '.4f')} | {cell('achieved_gflops_per_s', '.0f')} | "
                    f"{format(row['mfu'], '.1%') if 'mfu' in row else ''} | {cell('peak_memory_gb', '.1f')} |")
    stages = [row for row in rows if "stage_seconds" in row]  # where dubbing's time went, busy seconds per stage
    text += ["", "Dubbing's stages (seconds each was busy; they overlap):", ""] if stages else []
    text += [f"- mouth {row['mouth']} {row['precision']}, {row['frames']} frames in {row['seconds']:.2f} s, "
             f"host threads {row.get('host_threads', 1)}, {row.get('decoder', 'software')} decoding"
             f"{' (not NVDEC: %s)' % row['hardware_failure'] if row.get('hardware_failure') else ''}: " +
             ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in row["stage_seconds"].items() if stage != "total")
             for row in stages]
    profiles = [row for row in rows if row["task"] == "profile"]  # a failed part's row is named by its part
    text += ["", "Under the profiler (frame 64): " + "; ".join(
        f"{'the CUDA graph' if row['cuda_graph'] else 'eager'} {1000 * row['seconds_per_iter']:.1f} ms a step, "
        + (f"the GPU busy {row['device_busy']:.0%} of it" if row["device_busy"] is not None else "no GPU")
        + f" (operations by time: {row['operations']})" for row in profiles)] if profiles else []
    text += ["", f"The check took {sum(part_seconds.values()):.0f} s: " +
             ", ".join(f"{label} {seconds:.0f} s" for label, seconds in part_seconds.items())]
    left_out = not_measured(rows)
    text += ["", left_out] if left_out else []
    return "\n".join(text) + "\n"


def not_measured(rows):
    """One line naming the rows and parts the budget left out (None: none)."""
    names = [" ".join(str(row[key]) for key in ("task", "mouth") if key in row)
             for row in rows if "not_measured" in row]
    return f"Not measured, the budget spent: {', '.join(names)}; --gpu_check_minutes gives the check more." \
        if names else None


def gpu_check(opt, run, tasks, dubbing):
    """Measure the check's parts in turn: bench's rows task by task (`run(opt, tasks)`; `dubbing` is its
    DubbingBench), the training rows again as CUDA graphs, the real run and the encoder alone. A part that fails
    costs that part alone (a row with its error); OUT/gpu_check.* are rewritten after every part, so a check stopped
    early keeps what it measured. Returns the result written."""
    make_folder(opt.gpu_check, "--gpu_check")
    configure(opt)
    started = time.perf_counter()
    opt.deadline = started + 60 * opt.gpu_check_minutes  # the budget: seconds_left(opt)
    device = torch.device(opt.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []

    part_seconds = {}  # what each part cost of the device's time, to fit the check to it

    def part(label, measure):
        part_started = time.perf_counter()
        print(f"--gpu_check: {label}, {seconds_left(opt) / 60:.1f} of {opt.gpu_check_minutes:g} minutes left",
              flush=True)
        try:
            if seconds_left(opt) == 0:
                raise subprocess.TimeoutExpired(label, 0)
            measure()
        except subprocess.TimeoutExpired:  # the budget ran out before or during it: the rows it measured are kept
            rows.append(dict(task=label, not_measured=out_of_time(opt)))
            print(f"{label}: {rows[-1]['not_measured']}", flush=True)
        except Exception as error:  # any failure: reported as its part's row, the other parts still measured
            message = (str(error).strip().splitlines() or [""])[-1]
            rows.append(dict(task=label, error=f"{type(error).__name__}: {message}"[:300]))
            print(f"{label}: failed: {rows[-1]['error']}", flush=True)
        part_seconds[label] = round(time.perf_counter() - part_started, 1)
        result = dict(device=name, seconds=time.perf_counter() - started, part_seconds=part_seconds, rows=rows,
                      targets=targets(rows, opt))
        write_atomically(os.path.join(opt.gpu_check, "gpu_check.json"), lambda f: json.dump(result, f, indent=1),
                         mode="w")
        table = markdown(rows, result["targets"], name, part_seconds)
        write_atomically(os.path.join(opt.gpu_check, "gpu_check.md"), lambda f: f.write(table), mode="w")
        return result, table

    def measure_rows(**settings):
        return lambda: run(argparse.Namespace(**{**vars(opt), **settings}), tasks, rows)

    with tempfile.TemporaryDirectory(prefix="bench-check-") as folder:
        def real_run(compile="off"):
            rows.append(real_training_run(opt, folder, rows, device, compile))
            print(f"real training run (--compile {compile}): {rows[-1]['samples_per_s']:.1f} samples/s", flush=True)

        def encoder():
            from .dubbing import inference_inputs
            video = dubbing.inputs[0] if dubbing.inputs else inference_inputs(opt, folder)[0]  # what dubbing dubbed
            rows.append(encode_alone(opt, video, folder, device))
            print(f"ffmpeg encoding alone: {rows[-1]['frames_per_s']:.1f} frames/s ({rows[-1]['decoder']} decoding)",
                  flush=True)
        # each target's rows as early as they can come, the CUDA graph rows (an alternative) last
        for task in opt.tasks.split(","):
            result, table = part(task, measure_rows(tasks=task))
        result, table = part("encode_alone", encoder)
        result, table = part("real_run", real_run)
        graphs = device.type == "cuda" or not opt.quick  # elsewhere the step runs without them: the same rows again
        if graphs:
            for task in ("train_frame", "train_clip"):
                result, table = part(f"{task} (CUDA graph)", measure_rows(tasks=task, compile="reduce-overhead"))
            result, table = part("graph_numerics", lambda: rows.append(graph_numerics(device)))
            result, table = part("real_run (CUDA graph)", lambda: real_run("reduce-overhead"))
            # the clip stage is the most compute-bound: where bf16 beats TF32 there, the target's line counts it
            result, table = part("train_clip (bf16, CUDA graph)",
                                 measure_rows(tasks="train_clip", precision="bf16", compile="reduce-overhead"))
        if find(rows, task="inference", decoder="cuda"):  # dubbing decoded with NVDEC: software's row beside it
            result, table = part("inference (software decoding)",
                                 measure_rows(tasks="inference", mouths={64}, dub_decoder="software"))
        # where the step's time goes, to act on a missed target without another check
        for mode in ("off", "reduce-overhead") if graphs else ("off",):
            result, table = part(f"profile ({mode})", lambda: rows.append(profile_step(opt, device, mode)))
    print(table)
    return result
