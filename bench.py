"""Speed, measured: training and dubbing throughput per stage and precision, with FLOPs and FLOP/s.

    python bench.py                         # every task on the default device, fp32 and bf16
    python bench.py --tasks generator --device cuda --precision bf16 --peak_tflops 989
    python bench.py --json bench.json       # also the rows as a JSON list

Tasks:
  generator    generator forward only (eval), frames per second at mouth 64/128/256
  train_frame  one frame-stage iteration (G, D, VGG19 perception; synthetic batch, so the data loader is not
               counted) at the lab's batch sizes: 64/bs24, 128/bs12, 256/bs4
  inference    the whole dubbing pipeline on a demo video (decode, crops, features, generator, blend,
               encode; landmarks from the demo CSV), frames per second, end_to_end = true
GFLOPs are counted with torch.utils.flop_counter (a multiply-add is 2 FLOPs; lab1 at mouth 64 is 22.4 per frame,
as DESIGN.md says). With --peak_tflops, model-FLOP utilisation (MFU) = achieved / peak.
"""
import argparse
import json
import os
import tempfile
import time
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.compare import lab_config
from data.geometry import CropGeometry
from models import DINet

STAGES = ((64, 24), (128, 12), (256, 4))


def autocast(device, precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


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


def count_flops(function):
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def bench_generator(opt, device, precision, lab):
    config = lab_config(lab)
    network = DINet.from_config(config).to(device).eval()
    rows = []
    for mouth_size, _ in STAGES:
        batch = opt.generator_batch if device.type == "cuda" else 1
        inputs = generator_inputs(mouth_size, batch, config.audio_channel, device)

        def forward():
            with torch.no_grad(), autocast(device, precision):
                network(*inputs)
        seconds = timed(forward, device, opt.iterations, opt.warmup)
        flops = count_flops(forward) / batch
        rows.append(dict(task="generator", lab=lab, mouth=mouth_size, batch=batch, precision=precision,
                         frames_per_s=batch / seconds, seconds_per_iter=seconds, gflops_per_sample=flops / 1e9,
                         achieved_gflops_per_s=flops * batch / seconds / 1e9))
    return rows


def bench_train_frame(opt, device, precision, lab):
    from engine.trainer import FrameStage
    rows = []
    for mouth_size, batch in STAGES:
        if opt.quick:
            batch = min(batch, 2)
        stage_opt = SimpleNamespace(source_channel=3, D_block_expansion=64, D_num_blocks=4, D_max_features=256,
                                    vgg19_weights="random", lr_g=1e-4, lr_dI=1e-4, lamb_perception=10.0)
        config = lab_config(lab)
        stage = FrameStage(stage_opt, config, SimpleNamespace(device=device, distributed=False))
        masked, reference, audio = generator_inputs(mouth_size, batch, config.audio_channel, device)
        data = {"source": masked.clone(), "source_masked": masked, "reference": reference, "audio": audio}

        def step():
            with autocast(device, precision):
                stage.step(data)
        seconds = timed(step, device, opt.train_iterations, 1)
        flops = count_flops(step) / batch
        rows.append(dict(task="train_frame", lab=lab, mouth=mouth_size, batch=batch, precision=precision,
                         samples_per_s=batch / seconds, iters_per_s=1 / seconds, seconds_per_iter=seconds,
                         gflops_per_sample=flops / 1e9, achieved_gflops_per_s=flops * batch / seconds / 1e9))
    return rows


def bench_inference(opt, device, precision, lab):
    from data.demo import make_demo_data
    from dubbing.pipeline import Generator, dub
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        make_demo_data(folder, num_videos=2, seconds=opt.video_seconds, seed=0)
        video = os.path.join(folder, "split_video_25fps", "demo_000.mp4")
        audio = os.path.join(folder, "split_video_25fps_audio", "demo_001.wav")
        landmarks = os.path.join(folder, "split_video_25fps_landmark_openface", "demo_000.csv")
        network = DINet.from_config(lab_config(lab, 80, "mel")).to(device).eval()
        for mouth_size, _ in STAGES:
            generator = Generator(network, mouth_size, "mel")
            started = time.perf_counter()
            result = dub(video, audio, generator, os.path.join(folder, "out.mp4"), device, landmark_csv=landmarks,
                         batch_size=opt.inference_batch, amp=precision)
            seconds = time.perf_counter() - started
            rows.append(dict(task="inference", lab=lab, mouth=mouth_size, batch=opt.inference_batch,
                             precision=precision, frames_per_s=result.frames / seconds, end_to_end=True,
                             frames=result.frames, video="demo 256x256"))
    return rows


TASKS = {"generator": bench_generator, "train_frame": bench_train_frame, "inference": bench_inference}


def print_table(rows, peak_tflops):
    header = f"{'task':<12}{'mouth':>6}{'batch':>6}{'prec':>6}{'samples/s':>11}{'s/iter':>9}{'GFLOP/sample':>14}{'GFLOP/s':>10}"
    if peak_tflops:
        header += f"{'MFU':>7}"
    print(header)
    for row in rows:
        rate = row.get("samples_per_s", row.get("frames_per_s"))
        seconds = row.get("seconds_per_iter")
        line = (f"{row['task']:<12}{row['mouth']:>6}{row['batch']:>6}{row['precision']:>6}{rate:>11.2f}"
                f"{seconds if seconds else float('nan'):>9.3f}{row.get('gflops_per_sample', float('nan')):>14.1f}"
                f"{row.get('achieved_gflops_per_s', float('nan')):>10.0f}")
        if peak_tflops and "achieved_gflops_per_s" in row:
            line += f"{row['achieved_gflops_per_s'] / (peak_tflops * 1e3):>7.1%}"
        print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="generator,train_frame,inference")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--lab", default="lab1")
    parser.add_argument("--iterations", type=int, default=5, help="timed generator calls")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train_iterations", type=int, default=2, help="timed training iterations")
    parser.add_argument("--generator_batch", type=int, default=64, help="batch for generator throughput on GPU")
    parser.add_argument("--inference_batch", type=int, default=8)
    parser.add_argument("--video_seconds", type=float, default=4.0)
    parser.add_argument("--quick", action="store_true", help="batch <= 2 for training rows (smoke test)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak, for MFU (H100 bf16 dense: 989)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    opt = parser.parse_args()
    device = torch.device(opt.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = []
    for task in opt.tasks.split(","):
        for precision in opt.precision.split(","):
            new_rows = TASKS[task](opt, device, precision, opt.lab)
            print_table(new_rows, opt.peak_tflops)
            rows += new_rows
    if opt.json:
        with open(opt.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
