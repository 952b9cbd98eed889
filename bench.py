"""Speed, measured: training and dubbing throughput per stage and precision, with FLOPs and FLOP/s.

    python bench.py                         # every task on the default device, fp32 and bf16
    python bench.py --tasks generator --device cuda --precision bf16 --peak_tflops bf16=989
    python bench.py --json bench.json       # also the rows as a JSON list

Tasks:
  generator    generator forward only, frames per second at mouth 64/128/256, on the copy optimize_for_inference
               makes of it (channels_last): the whole network, and as dubbing runs it (+ref1x: the references
               encoded once); batch 1 on a CPU, --generator_batch on a GPU
  train_frame  one frame-stage iteration (G, D, VGG19 perception; synthetic batch, so the data loader is not
               counted) at the lab's batch sizes: 64/bs24, 128/bs12, 256/bs4
  inference    the whole dubbing pipeline (decode, crops, features, generator, blend, encode; landmarks given)
               on a --video WxH video (default 1080x1920, the published figure's: the sample clip of
               ../shared/data when present, else the demo face placed on such a frame), frames per second,
               end_to_end = true, the seconds of each stage, and for bf16 the PSNR of the output against the fp32
               output (whole frames, and the face boxes alone); first, DINet's published inference loop on the
               same video and machine (benchmark/published/, a row with baseline = true), and each row's
               speed-up over it (--published_loop off skips it); --inference_repeats N runs each N times, the
               published loop and ours in turn, and gives the median runs (the lower middle one of an even
               count)
  loader       the frame stage's data loader at mouth 64, batch 24 (workers, seeded sampler, crop cache) on
               demo data, samples per second: the training step's rate must stay below it
GFLOPs are counted with torch.utils.flop_counter on the plain model (a multiply-add is 2 FLOPs; lab1 at mouth 64
is DINet's 22.4 per frame); a training row counts this repository's iteration, the baseline's too (which computes
more).
Model-FLOP utilisation (MFU) = achieved / peak, with --peak_tflops or on a GPU named in GPU_PEAKS. Each training
row runs in a process of its own and reports its peak memory (GB: resident set on a CPU, allocated on a GPU); one
that runs out of memory is reported as failed and the others are still measured (--train_batch: a smaller batch).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from copy import deepcopy
from types import SimpleNamespace

import imageio_ffmpeg
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmark.published import published_way
from common.devices import resolve_amp
from common.errors import run_command
from common.geometry import CropGeometry
from config.ranges import integer, number
from engine.compare import lab_config
from models import DINet
from models.adaat import DEFAULT_WARP
from models.fast import optimize_for_inference
from models.fast.split import split_first_alignment_layer
from models.formulations import plain_formulations

STAGES = ((64, 24), (128, 12), (256, 4))
CLIP_STAGES = ((256, 3),)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device, iterations, warmup):
    for _ in range(warmup):
        function()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iterations):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / iterations


def generator_inputs(mouth_size, batch, audio_channel, device):
    geometry = CropGeometry(mouth_size)
    shape = (batch, 3, geometry.height, geometry.width)
    return (torch.rand(shape, device=device), torch.rand((batch, 15, *shape[2:]), device=device),
            torch.randn(batch, audio_channel, 5, device=device))


def count_flops(function, *networks):
    """FLOPs of function(), with the networks' layers counted as DINet computes them (plain_formulations)."""
    with plain_formulations(*networks), FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def network_flops(network, inputs):
    """FLOPs of network(*inputs) for one sample, gradients on (as engine/compare.py counts)."""
    return count_flops(lambda: network(*(tensor[:1] for tensor in inputs)), network)


def reference_once_flops(network, inputs):
    """FLOPs of one sample as dubbing computes it: `generate` with the references encoded once and the alignment
    encoder's first convolution split as optimize_for_inference splits it (its other kernels compute the same
    convolutions, so the plain layers are counted)."""
    split = split_first_alignment_layer(deepcopy(network))
    masked, reference, audio = (tensor[:1] for tensor in inputs)
    state = split.encode_reference(reference)
    return count_flops(lambda: split.generate(masked, audio, state), split)


def bench_generator(opt, device, precision, lab):
    """The generator alone, as optimize_for_inference prepares it (BatchNorms folded, its fast kernels, bf16
    weights under bf16, channels_last): the whole network (reference branch every frame), and as dubbing runs it
    (references encoded once; its GFLOPs per frame leave the reference branch out)."""
    config = lab_config(lab)
    network = DINet.from_config(config).to(device).eval()
    fast = optimize_for_inference(network, device, "bf16" if precision == "bf16" else None, channels_last=True)
    rows = []
    for mouth_size, _ in selected(STAGES, opt):
        batch = opt.generator_batch if device.type == "cuda" else 1
        inputs = generator_inputs(mouth_size, batch, config.audio_channel, device)
        masked, reference, audio = (tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4
                                    else tensor for tensor in inputs)
        state = fast.encode_reference(reference[:1])
        for reference_once, function, flops in (
                (False, lambda: fast(masked, reference, audio), network_flops(network, inputs)),
                (True, lambda: fast.generate(masked, audio, state), reference_once_flops(network, inputs))):
            if opt.compile == "on":
                function = torch.compile(function)
            seconds = timed(function, device, opt.iterations, opt.warmup)
            rows.append(dict(task="generator", lab=lab, mouth=mouth_size, batch=batch, precision=precision,
                             channels_last=True, reference_once=reference_once, compiled=opt.compile == "on",
                             frames_per_s=batch / seconds, seconds_per_iter=seconds, gflops_per_sample=flops / 1e9,
                             achieved_gflops_per_s=flops * batch / seconds / 1e9))
    return rows


# the published code's way: fp32, NCHW tensors, DINet's 3-D grid_sample AdaAT and its other layers as it computes
# them (published_way), and its iteration (see published_iteration); a row per stage to compare with
BASELINE = dict(precision="fp32", channels_last=False, adaat="published")


def training_stage(task, mouth_size, batch, device, precision, channels_last, lab):
    """A frame or clip stage as the training scripts build it (random VGG19/SyncNet weights, nothing downloaded)
    and one synthetic batch shaped as its dataset's."""
    from engine.clip_stage import FRAMES, ClipStage
    from engine.distributed import Runtime
    from engine.trainer import FrameStage
    from models.syncnet import SyncNetConfig, build_syncnet
    config = lab_config(lab)
    stage_opt = SimpleNamespace(source_channel=3, D_block_expansion=64, D_num_blocks=4, D_max_features=256,
                                vgg19_weights="random", lr_g=1e-4, lr_dI=1e-4, lamb_perception=10.0,
                                amp="off" if precision == "fp32" else precision, channels_last=channels_last,
                                mouth_region_size=mouth_size, lamb_syncnet_perception=0.1, lamb_l1=0.0,
                                lamb_lpips=0.0, lamb_trepa=0.0, lab=lab)
    runtime = Runtime(device)
    masked, reference, audio = generator_inputs(mouth_size, batch * (FRAMES if task == "train_clip" else 1),
                                                config.audio_channel, device)
    if task == "train_frame":
        stage = FrameStage(stage_opt, config, runtime)
        data = {"source": masked.clone(), "source_masked": masked, "reference": reference, "audio": audio}
    else:
        syncnet = build_syncnet(SyncNetConfig(arch="dinet", audio_channel=config.audio_channel,
                                              audio_feature="deepspeech", mouth_region_size=mouth_size,
                                              input_size=mouth_size)).eval().requires_grad_(False)
        stage = ClipStage(stage_opt, config, runtime, syncnet)
        clip = lambda tensor: tensor.view(batch, FRAMES, *tensor.shape[1:])
        data = {"source": clip(masked.clone()), "source_masked": clip(masked), "reference": clip(reference),
                "audio": clip(audio), "audio_clip": torch.randn(batch, config.audio_channel, 9, device=device)}
    return stage, {key: stage.precision.batch(value) for key, value in data.items()}


def published_iteration(stage, data, task):
    """One iteration as DINet's train_DINet_frame.py / train_DINet_clip.py compute it, on this repository's
    modules: each discriminator's loss is backpropagated through the generator too (its fakes are not detached,
    retain_graph=True, and the generator's gradients are zeroed afterwards), the generator's loss computes the
    discriminators' weight gradients, and VGG19 and the SyncNet score the fakes as in stage.step."""
    clip = task == "train_clip"
    frames = (lambda tensor: tensor.flatten(0, 1)) if clip else (lambda tensor: tensor)  # (B, 5, ...) -> (B*5, ...)
    fake = stage.net_g(frames(data["source_masked"]), frames(data["reference"]), frames(data["audio"]))
    real = frames(data["source"])
    inputs = {"net_dI": (fake, real)}
    if clip:  # the 5 frames of a clip stacked on channels
        inputs["net_dV"] = (fake.view(data["source"].shape).flatten(1, 2), data["source"].flatten(1, 2))
    for name, (fakes, reals) in inputs.items():
        stage.optimizers[name].zero_grad()
        loss = (stage.gan(getattr(stage, name)(fakes)[1], False) + stage.gan(getattr(stage, name)(reals)[1], True)) * 0.5
        loss.backward(retain_graph=True)
        stage.optimizers[name].step()
    stage.optimizers["net_g"].zero_grad()
    loss = sum(stage.gan(getattr(stage, name)(fakes)[1], True) for name, (fakes, _) in inputs.items())
    loss = loss + stage.perception(fake, real) * stage.opt.lamb_perception
    if clip:
        mouths = inputs["net_dV"][0][..., stage.geometry.mouth_rows, stage.geometry.mouth_cols]
        in_sync = torch.ones(mouths.shape[0], device=mouths.device)
        loss = loss + stage.syncnet.loss(mouths, data["audio_clip"], in_sync) * stage.opt.lamb_syncnet_perception
    loss.backward()
    stage.optimizers["net_g"].step()


FLOPS = {}


def training_flops(task, mouth_size, device, lab):
    """FLOPs of one training sample, counted once per task and size on a batch of one (they scale with the batch)."""
    if (task, mouth_size) not in FLOPS:
        stage, data = training_stage(task, mouth_size, 1, device, "fp32", False, lab)
        FLOPS[task, mouth_size] = count_flops(lambda: stage.step(data), stage.net_g)
    return FLOPS[task, mouth_size]


def bench_train(opt, device, precision, lab, task, stages, baseline=False):
    rows = []
    setting = BASELINE if baseline else dict(precision=precision, channels_last=opt.channels_last == "on",
                                             adaat=DEFAULT_WARP)
    for mouth_size, batch in selected(stages, opt):
        batch = opt.train_batch or (min(batch, 2) if opt.quick else batch)
        stage, data = training_stage(task, mouth_size, batch, device, setting["precision"], setting["channels_last"], lab)
        if baseline:
            published_way(stage.net_g)
        iteration = (lambda: published_iteration(stage, data, task)) if baseline else (lambda: stage.step(data))
        seconds = timed(iteration, device, opt.train_iterations, opt.train_warmup)
        memory = peak_memory_gb(device)  # before the FLOP count's fp32 pass adds its own
        flops = training_flops(task, mouth_size, device, lab)
        rows.append(dict(task=task, lab=lab, mouth=mouth_size, batch=batch, **setting, baseline=baseline,
                         samples_per_s=batch / seconds, iters_per_s=1 / seconds, seconds_per_iter=seconds,
                         gflops_per_sample=flops / 1e9, achieved_gflops_per_s=flops * batch / seconds / 1e9,
                         peak_memory_gb=memory))
    return rows


def peak_memory_gb(device):
    """This process's peak memory so far: the device's allocations on a GPU, the resident set on a CPU (each
    training row runs in a process of its own, so it is the row's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def selected(stages, opt):
    """The (mouth, batch) pairs of `stages` at the mouth sizes of --mouths."""
    return [(mouth, batch) for mouth, batch in stages if mouth in opt.mouths]


def bench_train_frame(opt, device, precision, lab):
    """One frame-stage iteration (G, D, VGG19 perception) on a synthetic batch (the loader is not counted)."""
    return bench_train(opt, device, precision, lab, "train_frame", STAGES)


def bench_train_clip(opt, device, precision, lab):
    """One clip-stage iteration (G on 5 frames, frame and clip discriminators, VGG19, SyncNet) at 256/bs3."""
    return bench_train(opt, device, precision, lab, "train_clip", CLIP_STAGES)


def bench_baseline(opt, device, precision, lab):
    """The training rows as the published code computes them: fp32, NCHW, 3-D grid_sample AdaAT, and its
    iteration (published_iteration). Their GFLOPs are this repository's iteration's, as in every row."""
    return (bench_train(opt, device, "fp32", lab, "train_frame", STAGES[:1], baseline=True)
            + bench_train(opt, device, "fp32", lab, "train_clip", CLIP_STAGES, baseline=True))


SAMPLE_CLIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shared", "data")


def inference_inputs(opt, folder):
    """(video, driving audio, landmark CSV, description) at --video WxH, --video_seconds long.

    The real 1080x1920 clip of ../shared/data when it is there and has that size (landmarks detected once,
    not timed, as the published figure had them given); else the demo face scaled up onto a WxH frame."""
    from data.procedural_faces import make_demo_data
    from data.openface_csv import read_openface_csv, write_openface_csv
    from media.ffmpeg import probe
    width, height = opt.video
    seconds = min(opt.video_seconds, 2.0) if opt.quick else opt.video_seconds
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error"]
    clip = os.path.join(SAMPLE_CLIP, "talking_head_a.mp4")
    speech = os.path.join(SAMPLE_CLIP, "driving_speech_a.wav")
    audio = os.path.join(folder, "speech.wav")
    if not opt.quick and os.path.isfile(clip) and os.path.isfile(speech) and (
            (probe(clip)["width"], probe(clip)["height"]) == (width, height)):
        from data.landmark_detector import detect_landmarks
        from media.decoder import read_video_frames
        video = os.path.join(folder, "source.mp4")
        subprocess.run([*ffmpeg, "-i", clip, "-t", str(seconds), "-c", "copy", video], check=True)
        frames = np.stack(list(read_video_frames(video, fps=25)))
        landmarks, found = detect_landmarks(frames)
        del frames
        csv = os.path.join(folder, "source.csv")
        write_openface_csv(csv, landmarks, found=found)
        subprocess.run([*ffmpeg, "-stream_loop", "3", "-i", speech, "-t", str(seconds), audio], check=True)
        return video, audio, csv, f"{os.path.basename(clip)} {width}x{height}, {seconds:g} s"
    make_demo_data(os.path.join(folder, "demo"), num_videos=2, seconds=seconds, seed=0)
    demo = os.path.join(folder, "demo")
    side = (min(width, height) // 2) // 2 * 2           # the 256x256 demo face scaled to half the short side
    left, top = (width - side) // 2 // 2 * 2, (height - side) // 2 // 2 * 2
    video = os.path.join(folder, "source.mp4")
    subprocess.run([*ffmpeg, "-i", os.path.join(demo, "split_video_25fps", "demo_000.mp4"), "-vf",
                    f"scale={side}:{side},pad={width}:{height}:{left}:{top}:gray", "-c:v", "libx264", "-preset",
                    "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-an", video], check=True)
    landmarks = read_openface_csv(os.path.join(demo, "split_video_25fps_landmark_openface", "demo_000.csv"))
    csv = os.path.join(folder, "source.csv")
    write_openface_csv(csv, landmarks * (side / 256) + np.array([left, top]))
    shutil.copy(os.path.join(demo, "split_video_25fps_audio", "demo_001.wav"), audio)
    return video, audio, csv, f"demo face on {width}x{height}, {seconds:g} s"


def video_psnr(path_a, path_b, boxes=None):
    """PSNR between two videos over all their pixels, or only inside each frame's box (top, bottom, left, right)."""
    from media.decoder import read_video_frames
    squared, count = 0.0, 0
    for t, (a, b) in enumerate(zip(read_video_frames(path_a), read_video_frames(path_b))):
        if boxes is not None:
            if boxes[t] is None:
                continue
            top, bottom, left, right = boxes[t]
            a, b = a[top:bottom, left:right], b[top:bottom, left:right]
        difference = a.astype(np.float32) - b.astype(np.float32)
        squared += float(np.square(difference).sum())
        count += difference.size
    mse = squared / max(count, 1)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def face_boxes(landmark_csv, video_size, frames):
    """Each output frame's face-crop box, as the pipeline places it (None where it passes the frame through)."""
    from common.geometry import crop_box
    from data.openface_csv import read_openface_csv
    from dubbing.pipeline import crop_radii, ping_pong
    landmarks = read_openface_csv(landmark_csv)
    aligned = landmarks[ping_pong(len(landmarks), frames)]
    return [None if radius is None else crop_box(points, radius)
            for points, radius in zip(aligned, crop_radii(aligned, video_size))]


_INFERENCE = {}  # inputs, weights, fp32 outputs and the published loop's rows, kept across one bench run's calls

# One dubbing run in a fresh process, as `python inference.py` runs it (OMP_WAIT_POLICY=PASSIVE, which must be
# set before torch loads, and nothing left over from the training rows); prints the result as JSON.
DUB_PROCESS = """
import json, sys
import torch
from dubbing.pipeline import DubbingModel, dub
from inference import tune_cpu_allocator
from models import DINet, GeneratorConfig
job = json.loads(sys.argv[1])
network = DINet.from_config(GeneratorConfig.from_dict(job["config"]))
network.load_state_dict(torch.load(job["weights"], weights_only=True))
device = torch.device(job["device"])
if device.type == "cpu":
    tune_cpu_allocator()
timings = {}
result = dub(job["video"], job["audio"], DubbingModel(network.to(device).eval(), job["mouth"], "mel"), job["output"],
             device, landmark_csv=job["landmarks"], batch_size=job["batch"], amp=job["amp"], timings=timings,
             progress=False)
print(json.dumps(dict(frames=result.frames, batch=result.batch_size, timings=timings)))
"""

# The published inference loop (benchmark/published/) in a fresh process with the default environment, as
# DINet's inference.py runs: the generator set up the published way, the audio features computed first, untimed.
PUBLISHED_PROCESS = """
import json, sys, tempfile
import torch
from benchmark.published import published_inference, published_way
from dubbing.pipeline import load_audio_features
from models import DINet, GeneratorConfig
job = json.loads(sys.argv[1])
network = DINet.from_config(GeneratorConfig.from_dict(job["config"])).eval()
network.load_state_dict(torch.load(job["weights"], weights_only=True))
published_way(network)
device = torch.device(job["device"])
with tempfile.TemporaryDirectory(prefix="bench-published-") as folder:
    features = load_audio_features(job["audio"], "mel", None, folder)
    seconds, frames = published_inference(job["video"], job["audio"], job["landmarks"], features,
                                          network.to(device), job["mouth"], job["frames"], folder, device)
print(json.dumps(dict(frames=frames, seconds=seconds)))
"""


def run_script(script, job, environment=None):
    done = subprocess.run([sys.executable, "-c", script, json.dumps(job)], cwd=os.path.dirname(os.path.abspath(__file__)),
                          env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dubbing at mouth {job['mouth']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def dub_in_process(job):
    return run_script(DUB_PROCESS, job, dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))


# frames the published loop dubs for its row, per mouth size (its rate is per frame; at 256 it makes ~1 a second)
PUBLISHED_LOOP_FRAMES = {64: 100, 128: 40, 256: 16}


def published_row(job, config, lab, description, quick, repeat=0):
    """The published inference loop's row for job's video and mouth size: run at the first call of a bench run
    for that size and once more at each later `repeat`, so its runs interleave with the first dubbing row's.
    Returns (the row when new, else None; the row); its frames/s are its runs' median (runs_frames_per_s)."""
    key = ("published", job["mouth"])
    row = _INFERENCE.get(key)
    if row is not None and len(row["runs_frames_per_s"]) > repeat:
        return None, row
    frames = 12 if quick else PUBLISHED_LOOP_FRAMES[job["mouth"]]
    done = run_script(PUBLISHED_PROCESS, dict(job, frames=frames))
    new = None
    if row is None:
        network = published_way(DINet.from_config(config).eval())
        inputs = generator_inputs(job["mouth"], 1, config.audio_channel, torch.device("cpu"))
        flops = network_flops(network, inputs)  # per frame, the reference branch included
        new = row = _INFERENCE[key] = dict(task="inference", lab=lab, mouth=job["mouth"], batch=1, precision="fp32",
                                           channels_last=False, adaat="published", baseline=True, end_to_end=True,
                                           frames=done["frames"], video=description, gflops_per_sample=flops / 1e9,
                                           runs_frames_per_s=[])
    row["runs_frames_per_s"].append(done["frames"] / done["seconds"])
    row["frames_per_s"] = statistics.median_low(row["runs_frames_per_s"])
    row["seconds"] = row["frames"] / row["frames_per_s"]
    row["achieved_gflops_per_s"] = row["gflops_per_sample"] * row["frames_per_s"]
    return new, row


def bench_inference(opt, device, precision, lab):
    """The whole dubbing pipeline, timed end to end in its own process: decode, landmarks (given), features,
    crops, generator, blend, encode. bf16 rows also give the PSNR of their output against the fp32 output of
    the same input, over whole frames and over the face-crop boxes (where the two can differ)."""
    from media.ffmpeg import probe
    config = lab_config(lab, 80, "mel")
    if not _INFERENCE:
        _INFERENCE["folder"] = tempfile.TemporaryDirectory(prefix="bench-dub-")
        _INFERENCE["inputs"] = inference_inputs(opt, _INFERENCE["folder"].name)
        torch.manual_seed(0)
        _INFERENCE["weights"] = os.path.join(_INFERENCE["folder"].name, "generator.pt")
        torch.save(DINet.from_config(config).state_dict(), _INFERENCE["weights"])
    folder = _INFERENCE["folder"].name
    video, audio, landmarks, description = _INFERENCE["inputs"]
    info = probe(video)
    network = DINet.from_config(config).eval()
    network.load_state_dict(torch.load(_INFERENCE["weights"], weights_only=True))
    rows = []
    mouths = (64,) if opt.quick else [mouth for mouth, _ in selected(STAGES, opt)]
    for mouth_size in mouths:
        job = dict(config=config.to_dict(), weights=_INFERENCE["weights"], device=str(device), video=video, audio=audio,
                   landmarks=landmarks, mouth=mouth_size, batch=opt.inference_batch,
                   amp="bf16" if precision == "bf16" else "off",
                   output=os.path.join(folder, f"out_{mouth_size}_{precision}.mp4"))
        published, runs = None, []
        for repeat in range(opt.inference_repeats):  # the published loop and ours in turn
            if opt.published_loop == "on":
                new, published = published_row(job, config, lab, description, opt.quick, repeat)
                rows += [new] if new else []
            runs.append(dub_in_process(job))
        rates = [run["frames"] / run["timings"]["total"] for run in runs]
        done = runs[rates.index(statistics.median_low(rates))]  # the median run, with its stages
        seconds, frames = done["timings"]["total"], done["frames"]
        inputs = generator_inputs(mouth_size, 1, config.audio_channel, torch.device("cpu"))
        flops = reference_once_flops(network, inputs)  # per frame, the reference branch not counted
        row = dict(task="inference", lab=lab, mouth=mouth_size, batch=done["batch"], precision=precision,
                   frames_per_s=frames / seconds, end_to_end=True, frames=frames, video=description, seconds=seconds,
                   gflops_per_sample=flops / 1e9, achieved_gflops_per_s=flops * frames / seconds / 1e9,
                   stage_seconds={stage: round(value, 3) for stage, value in done["timings"].items()},
                   runs_frames_per_s=rates)
        if published:
            row["speedup_vs_published"] = row["frames_per_s"] / published["frames_per_s"]
        if precision == "bf16":
            reference = os.path.join(folder, f"out_{mouth_size}_fp32.mp4")
            if not os.path.isfile(reference):  # no fp32 row in this run: make its output, untimed
                dub_in_process(dict(job, amp="off", output=reference))
            row["psnr_vs_fp32"] = video_psnr(job["output"], reference)
            boxes = face_boxes(landmarks, (info["width"], info["height"]), frames)
            row["face_psnr_vs_fp32"] = video_psnr(job["output"], reference, boxes)
        rows.append(row)
    return rows


def bench_loader(opt, device, precision, lab):
    """The frame stage's data loader at mouth 64, batch 24, as train() builds it (workers, seeded sampler, crop
    cache) on demo data: samples per second in the first epoch (JPEGs read and resized) and after (cached)."""
    from torch.utils.data import DataLoader
    from data.dataset import FrameDataset
    from data.procedural_faces import make_demo_data
    from data.training_json import load_training_json
    from engine.trainer import EpochOrder
    mouth_size, batch = STAGES[0]
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as folder:
        training_set = load_training_json(make_demo_data(folder, num_videos=2 if opt.quick else 4, seconds=4.0, seed=0))
        dataset = FrameDataset(training_set, opt.loader_augment_num, mouth_size)
        order = EpochOrder(len(dataset), batch, seed=0)
        loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=opt.num_workers,
                            persistent_workers=opt.num_workers > 0, pin_memory=device.type == "cuda",
                            generator=torch.Generator())
        rates = []
        for epoch in range(2 if opt.quick else 3):
            order.set_epoch(epoch)
            started, samples = time.perf_counter(), 0
            for items in loader:
                samples += items["source"].shape[0]
            rates.append(samples / (time.perf_counter() - started))
    return [dict(task="loader", lab=lab, mouth=mouth_size, batch=batch, precision="-", num_workers=opt.num_workers,
                 samples_per_s=max(rates[1:]), first_epoch_samples_per_s=rates[0], samples_per_epoch=len(dataset))]


# the (mouth, batch) rows of each training task, each measured in a process of its own
TRAINING_TASKS = {"baseline": STAGES[:1] + CLIP_STAGES, "train_frame": STAGES, "train_clip": CLIP_STAGES}
TASKS = {"generator": bench_generator, "train_frame": bench_train_frame, "train_clip": bench_train_clip,
         "baseline": bench_baseline, "inference": bench_inference, "loader": bench_loader}




def training_row_in_process(task, precision, mouth):
    """The rows of one training task, precision and mouth size, measured by this script in a process of its
    own: a row that runs out of memory (the kernel kills it) or fails costs that row alone, reported as such."""
    with tempfile.TemporaryDirectory(prefix="bench-row-") as folder:
        path = os.path.join(folder, "rows.json")
        # argparse keeps the last of a repeated flag: the row's own settings override the command line's
        command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--tasks", task, "--precision", precision,
                   "--mouths", str(mouth), "--json", path, "--in_process"]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode == 0:
            with open(path) as f:
                return json.load(f)
    if done.returncode in (-9, 137):
        error = "killed by the system, most likely out of memory"
    else:
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    row_task = task if task != "baseline" else "train_frame" if mouth == STAGES[0][0] else "train_clip"
    return [dict(task=row_task, mouth=mouth, precision=precision, baseline=task == "baseline", error=error)]


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
            raise SystemExit(f"--peak_tflops {given}: not a number nor bf16=X,fp32=Y; pass e.g. "
                             f"--peak_tflops 989 or --peak_tflops bf16=989,fp32=494.5") from None
        if not all(peak in number(above=0) for peak in peaks.values()):
            raise SystemExit(f"--peak_tflops {given}: a peak must be a number > 0; pass e.g. --peak_tflops 989")
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
        if "error" in row:
            how = row["precision"] + (" (published way)" if row.get("baseline") else "")
            print(f"{row['task']:<12}{row['mouth']:>6}{'':>6}{how:>21}  failed: {row['error']}", flush=True)
            continue
        rate = row.get("samples_per_s", row.get("frames_per_s"))
        seconds = row.get("seconds_per_iter")
        how = row["precision"] + "".join(tag for tag, on in (
            ("+NHWC", row.get("channels_last")), ("+3dAdaAT", row.get("adaat") == "published"),
            ("+ref1x", row.get("reference_once")), ("+cmp", row.get("compiled"))) if on)
        cell = lambda key, width, spec: format(row[key], f">{width}{spec}") if row.get(key) else " " * width
        line = (f"{row['task']:<12}{row['mouth']:>6}{row['batch']:>6}{how:>21}{rate:>11.2f}{cell('seconds_per_iter', 9, '.3f')}"
                f"{cell('gflops_per_sample', 14, '.1f')}{cell('achieved_gflops_per_s', 10, '.0f')}"
                f"{cell('peak_memory_gb', 6, '.1f')}")
        if "mfu" in row:
            line += f"{row['mfu']:>7.1%}"
        if row["task"] == "inference" and row.get("baseline"):
            line += f"  the published loop ({row['frames']} frames: JPEG frames, batch 1, XVID)"
        if "speedup_vs_published" in row:
            line += f"  {row['speedup_vs_published']:.1f}x the published loop"
        if len(row.get("runs_frames_per_s", ())) > 1:
            line += f"  (median of {len(row['runs_frames_per_s'])} runs: " + \
                    " ".join(f"{rate:.2f}" for rate in row["runs_frames_per_s"]) + ")"
        if "psnr_vs_fp32" in row:
            line += f"  PSNR vs fp32 {row['psnr_vs_fp32']:.1f} dB (face boxes {row['face_psnr_vs_fp32']:.1f} dB)"
        if row["task"] == "loader":
            line += f"  first epoch {row['first_epoch_samples_per_s']:.1f} samples/s, {row['num_workers']} workers"
        print(line, flush=True)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--compile", default="off", choices=("on", "off"),
                        help="generator: torch.compile it (the warm-up calls compile; give --warmup >= 2)")
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
    parser.add_argument("--num_workers", type=integer(0), default=2, help="loader: worker processes (training's default)")
    parser.add_argument("--loader_augment_num", type=integer(1), default=32, help="loader: samples per video per epoch")
    parser.add_argument("--quick", action="store_true", help="batch <= 2 for training rows (smoke test)")
    parser.add_argument("--train_batch", type=integer(1), default=None,
                        help="batch of every training row instead of the lab's (where memory is short)")
    parser.add_argument("--peak_tflops", default=None, help="device peak TFLOP/s for model-FLOP utilisation (MFU): "
                        "one number, or per precision as bf16=989,fp32=494.5 (known for H100, H200, A100)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--in_process", action="store_true", help=argparse.SUPPRESS)  # a training row's own process
    return parser


def main():
    opt = build_parser().parse_args()
    device = torch.device(opt.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if opt.precision == "auto":
        opt.precision = "fp32,bf16" if resolve_amp("auto", device) == "bf16" else "fp32"
        if opt.precision == "fp32" and not opt.in_process:
            print("bf16 rows skipped: this device has no native bf16 (emulated, it is several times slower than "
                  "fp32); --precision fp32,bf16 measures them anyway")
    for flag, given, known in (("--tasks", opt.tasks.split(","), TASKS), ("--precision", opt.precision.split(","),
                               ("fp32", "bf16")), ("--mouths", opt.mouths, [mouth for mouth, _ in STAGES])):
        unknown = [str(value) for value in given if value not in known]
        if unknown:
            raise SystemExit(f"{flag}: {', '.join(unknown)} unknown; pass a comma list of "
                             f"{', '.join(str(value) for value in known)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    peaks = peak_tflops(opt.peak_tflops, device)
    if peaks:
        print("MFU against peaks of " + ", ".join(f"{name} {value:g}" for name, value in peaks.items()) + " TFLOP/s")
    rows = []
    for task in opt.tasks.split(","):
        precisions = {"baseline": ("fp32",), "loader": ("-",)}.get(task, opt.precision.split(","))
        for precision in precisions:
            if task in TRAINING_TASKS and not opt.in_process:
                new_rows = [row for mouth, _ in selected(TRAINING_TASKS[task], opt)
                            for row in training_row_in_process(task, precision, mouth)]
            else:
                new_rows = TASKS[task](opt, device, precision, opt.lab)
            for row in new_rows:
                if row.get("achieved_gflops_per_s") and row["precision"] in peaks:
                    row["mfu"] = row["achieved_gflops_per_s"] / (peaks[row["precision"]] * 1e3)
            print_table(new_rows, peaks)
            rows += new_rows
            if opt.json:  # after every task: a run cut short keeps the rows it measured
                with open(opt.json, "w") as f:
                    json.dump(rows, f, indent=1)
    failed = [row for row in rows if "error" in row]
    if failed and not opt.in_process:
        raise SystemExit(f"{len(failed)} row(s) failed: " + "; ".join(
            f"{row['task']} {row['mouth']} {row['precision']}: {row['error']}" for row in failed))


if __name__ == "__main__":
    run_command(main)
