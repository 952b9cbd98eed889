"""Training iterations on synthetic batches: this repository's stages, and the published iteration on the same
modules (the baseline rows)."""
import json
import os
from functools import cache

import torch

from common.files import write_atomically
from config.config import clip_training_parser, training_parser
from engine.compare import lab_config
from engine.distributed import Runtime
from engine.graphs import StepRunner
from models.adaat import DEFAULT_WARP

from .measure import CLIP_STAGES, STAGES, count_flops, generator_inputs, peak_memory_gb, selected, timed
from .published import published_iteration, published_way

# the published code's way: fp32, NCHW tensors, DINet's 3-D grid_sample AdaAT and its other layers as it computes
# them (published_way), and its iteration (published_iteration)
BASELINE = dict(precision="fp32", channels_last=False, adaat="published")


def stage_options(task, mouth_size, precision, channels_last, lab, compile="off"):
    """The options the training command would hold for this row: its own parser's defaults (so a row measures what
    training runs), random VGG19 weights (nothing downloaded)."""
    parser = training_parser if task == "train_frame" else clip_training_parser
    return parser("bench", "-").parse_args(
        ["--mouth_region_size", str(mouth_size), "--amp", "off" if precision == "fp32" else precision,
         "--channels_last", "on" if channels_last else "off", "--vgg19_weights", "random", "--lab", lab,
         "--compile", compile])


def training_stage(task, mouth_size, batch, device, precision, channels_last, lab, compile="off"):
    """A frame or clip stage as the training scripts build it (random VGG19/SyncNet weights, nothing downloaded)
    and one synthetic batch shaped as its dataset's."""
    from engine.clip_stage import FRAMES, ClipStage
    from engine.distributed import Runtime
    from engine.trainer import FrameStage
    from models.syncnet import SyncNetConfig, build_syncnet
    config = lab_config(lab)
    opt = stage_options(task, mouth_size, precision, channels_last, lab, compile)
    runtime = Runtime(device)
    masked, reference, audio = generator_inputs(mouth_size, batch * (FRAMES if task == "train_clip" else 1),
                                                config.audio_channel, device)
    if task == "train_frame":
        stage = FrameStage(opt, config, runtime)
        data = {"source": masked.clone(), "source_masked": masked, "reference": reference, "audio": audio}
    else:
        syncnet = build_syncnet(SyncNetConfig(arch="dinet", audio_channel=config.audio_channel,
                                              audio_feature="deepspeech", mouth_region_size=mouth_size,
                                              input_size=mouth_size)).eval().requires_grad_(False)
        stage = ClipStage(opt, config, runtime, syncnet)
        clip = lambda tensor: tensor.view(batch, FRAMES, *tensor.shape[1:])
        data = {"source": clip(masked.clone()), "source_masked": clip(masked), "reference": clip(reference),
                "audio": clip(audio), "audio_clip": torch.randn(batch, config.audio_channel, 9, device=device)}
    return stage, {key: stage.precision.batch(value) for key, value in data.items()}


@cache
def training_flops(task, mouth_size, device, lab, counted_path=None):
    """FLOPs of one training sample, counted on a batch of one (they scale with the batch). With `counted_path`, a
    JSON file the row processes of one bench run share, each stage is counted once: its rows (the published
    iteration's, each precision's) all count the same network, and a count runs a whole step (70 s for the clip
    stage on 2 CPU cores)."""
    key = f"{task} {mouth_size} {lab}"
    counted = {}
    if counted_path and os.path.exists(counted_path):
        with open(counted_path) as f:
            counted = json.load(f)
    if key not in counted:
        stage, data = training_stage(task, mouth_size, 1, device, "fp32", False, lab)
        counted[key] = count_flops(lambda: stage.step(data), stage.net_g)
        if counted_path:
            write_atomically(counted_path, lambda f: json.dump(counted, f), mode="w")
    return counted[key]


def bench_train(opt, device, precision, lab, task, stages, baseline=False):
    rows = []
    # --compile on: the generator through torch.compile (training's --compile default)
    mode = "off" if baseline else {"on": "default"}.get(opt.compile, opt.compile)
    setting = BASELINE if baseline else dict(precision=precision, channels_last=opt.channels_last == "on",
                                             adaat=DEFAULT_WARP, compiled=mode)
    for mouth_size, batch in selected(stages, opt.mouths):
        batch = opt.train_batch or (min(batch, 2) if opt.quick else batch)
        stage, data = training_stage(task, mouth_size, batch, device, setting["precision"], setting["channels_last"],
                                     lab, mode)
        if baseline:
            published_way(stage.net_g)
            iteration = lambda: published_iteration(stage, data, task)
        else:  # as train() runs it: train_step, as a CUDA graph under --compile reduce-overhead
            run_step, counters = StepRunner(stage, Runtime(device), mode), torch.zeros(2, device=device)
            iteration = lambda: run_step(data, counters)
        seconds = timed(iteration, device, opt.train_iterations, opt.train_warmup)
        memory = peak_memory_gb(device)  # before the FLOP count's fp32 pass adds its own
        flops = training_flops(task, mouth_size, device, lab, getattr(opt, "flops_counted", None))
        graph = {} if baseline else {"cuda_graph": run_step.graph is not None}
        rows.append(dict(task=task, lab=lab, mouth=mouth_size, batch=batch, **setting, **graph, baseline=baseline,
                         samples_per_s=batch / seconds, iters_per_s=1 / seconds, seconds_per_iter=seconds,
                         gflops_per_sample=flops / 1e9, achieved_gflops_per_s=flops * batch / seconds / 1e9,
                         peak_memory_gb=memory))
    return rows


def bench_train_frame(opt, device, precision, lab):
    """One frame-stage iteration (G, D, VGG19 perception) on a synthetic batch (the loader is not counted)."""
    return bench_train(opt, device, precision, lab, "train_frame", STAGES)


def bench_train_clip(opt, device, precision, lab):
    """One clip-stage iteration (G on 5 frames, frame and clip discriminators, VGG19, SyncNet) at 256/bs3."""
    return bench_train(opt, device, precision, lab, "train_clip", CLIP_STAGES)


def bench_baseline(opt, device, precision, lab):
    """The training rows as the published code computes them: fp32, NCHW, 3-D grid_sample AdaAT, and its
    iteration (published_iteration). Their GFLOPs are this repository's iteration's, as in every row."""
    return [row for task, stages in (("train_frame", STAGES), ("train_clip", CLIP_STAGES))
            if getattr(opt, "stage", None) in (None, task)
            for row in bench_train(opt, device, "fp32", lab, task, stages, baseline=True)]
