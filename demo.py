"""The main job on built-in demo data, end to end on a CPU in a few minutes.

    python demo.py [--out ./asserts/demo] [--device cpu]

1. makes the procedural demo dataset (talking faces whose mouths follow a speech-like track), exactly as
   `python data_processing.py --make_demo_data --demo_dir DIR --num_videos 10` does;
2. runs the lab's three frame-stage commands briefly, 64 -> 128 -> 256, each stage starting from the
   previous stage's `netG_model_epoch_2.pth` (--coarse2fine);
3. trains a small SyncNet on the same data (train_syncnet.py's defaults: embedding architecture, the 256 x 256
   mouths read at 64 x 64) and reports its accuracy on held-out videos;
4. runs the lab's fourth command, the clip stage at mouth 256, for one iteration from the 256 frame stage
   with that SyncNet.
Each step is a separate process a user could type; every command is printed before it runs. VGG19 uses
torchvision's ImageNet weights when they are in the torch hub cache and random weights otherwise (this
machine may have no network).

Measured on a 2-core AMD EPYC (Zen 4; the frame and clip stages in bf16 autocast, `--amp auto`): data 0.1 min,
frame stages 1 min, SyncNet 4.7 min in fp32 (held-out accuracy 0.92; 0.88 in bf16, so the demo trains it in
fp32), clip stage 1 min (one iteration: five frames through the generator at mouth 256); about 7 min in all.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

import torch

from common.errors import run_command
from config.ranges import SEED

NUM_VIDEOS = 10  # the SyncNet learns lip motion, not faces, from 8 training videos; 2 are held out
# (mouth size, --augment_num, --batch_size, --iterations_per_epoch): the lab's schedule, shrunk to two short epochs
STAGES = ((64, 4, 4, 3), (128, 2, 2, 2), (256, 1, 1, 1))
# train_syncnet.py's defaults (README, SyncNet) on a short schedule: 300 steps of 16 windows, the rate decaying over
# the second half; 2 videos held out
SYNCNET = ["--non_decay=6", "--decay=6", "--iterations_per_epoch=25", "--held_out_fraction=0.2", "--num_workers=1"]


ROOT = os.path.dirname(os.path.abspath(__file__))


def run(command):
    """Run one of the repository's commands from the repository's folder, as a user would type it there."""
    print("\n$ " + " ".join(shlex.quote(part) for part in command), flush=True)
    started = time.time()
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        sys.exit("demo stopped: the command above failed")
    print(f"({time.time() - started:.0f} s)", flush=True)


def vgg19_weights():
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", "vgg19-dcbb9e9d.pth")
    if os.path.isfile(cached):
        return "imagenet"
    print(f"note: no VGG19 ImageNet weights at {cached}; the demo uses --vgg19_weights random "
          f"(real runs should use imagenet)")
    return "random"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="./asserts/demo", help="folder for the demo data and runs")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the demo dataset")
    return parser


def main():
    opt = build_parser().parse_args()
    opt.out = os.path.abspath(opt.out)  # the commands run from the repository's folder
    started = time.time()
    data_dir = os.path.join(opt.out, "training_data")
    runs = os.path.join(opt.out, "training_model_weight")
    python = sys.executable
    run([python, "data_processing.py", "--make_demo_data", "--demo_dir", data_dir, "--num_videos", str(NUM_VIDEOS),
         "--seed", str(opt.seed)])
    data = [f"--train_data={os.path.join(data_dir, 'training_json.json')}"]
    device = [f"--device={opt.device}"] if opt.device else []
    generator = data + device + [f"--vgg19_weights={vgg19_weights()}", "--image_every=1"]

    coarse = None
    for mouth_size, augment_num, batch_size, iterations in STAGES:
        result_path = os.path.join(runs, f"frame_training_{mouth_size}")
        command = [python, "train_DINet_frame.py", f"--augment_num={augment_num}",
                   f"--mouth_region_size={mouth_size}", f"--batch_size={batch_size}"]
        if coarse:
            command += ["--coarse2fine", f"--coarse_model_path={coarse}"]
        run(command + [f"--result_path={result_path}", "--non_decay=1", "--decay=1",
                       f"--iterations_per_epoch={iterations}"] + generator)
        coarse = os.path.join(result_path, "netG_model_epoch_2.pth")

    syncnet = os.path.join(opt.out, "syncnet_256mouth.pth")
    run([python, "train_syncnet.py", "--mouth_region_size=256", *SYNCNET,
         f"--result_path={os.path.join(runs, 'syncnet_training_256')}", f"--syncnet_path={syncnet}"] + data + device)

    run([python, "train_DINet_clip.py", "--augment_num=1", "--mouth_region_size=256", "--batch_size=1",
         f"--pretrained_syncnet_path={syncnet}", f"--pretrained_frame_DINet_path={coarse}",
         f"--result_path={os.path.join(runs, 'clip_training_256')}", "--non_decay=1", "--decay=0",
         "--checkpoint=1", "--iterations_per_epoch=1"] + generator)
    print(f"\ndemo done in {(time.time() - started) / 60:.1f} min: checkpoints, log.txt and image grids "
          f"(samples/*.png) under {runs}, the SyncNet at {syncnet}; watch with `tensorboard --logdir {runs}`")


if __name__ == "__main__":
    run_command(main)
