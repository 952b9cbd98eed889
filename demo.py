"""The main job on built-in demo data, end to end on a CPU in a few minutes.

    python demo.py [--out ./asserts/demo] [--device cpu]

1. makes the procedural demo dataset (talking faces whose mouths follow a speech-like track), exactly as
   `python data_processing.py --make_demo_data --demo_dir DIR` does;
2. runs the lab's three frame-stage commands briefly, 64 -> 128 -> 256, each stage starting from the
   previous stage's `netG_model_epoch_2.pth` (--coarse2fine), as separate processes a user could type.

Every command is printed before it runs. VGG19 uses torchvision's ImageNet weights when they are in the
torch hub cache and random weights otherwise (this machine may have no network).
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

import torch

# (mouth size, --augment_num, --batch_size): the lab's schedule, shrunk to two short epochs per stage
STAGES = ((64, 4, 4), (128, 2, 2), (256, 1, 1))


def run(command):
    print("\n$ " + " ".join(shlex.quote(part) for part in command), flush=True)
    started = time.time()
    if subprocess.run(command).returncode != 0:
        sys.exit(f"demo stopped: the command above failed")
    print(f"({time.time() - started:.0f} s)", flush=True)


def vgg19_weights():
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", "vgg19-dcbb9e9d.pth")
    if os.path.isfile(cached):
        return "imagenet"
    print(f"note: no VGG19 ImageNet weights at {cached}; the demo uses --vgg19_weights random "
          f"(real runs should use imagenet)")
    return "random"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="./asserts/demo", help="folder for the demo data and runs")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo dataset")
    opt = parser.parse_args()
    data_dir = os.path.join(opt.out, "training_data")
    python = sys.executable
    run([python, "data_processing.py", "--make_demo_data", "--demo_dir", data_dir, "--seed", str(opt.seed)])
    common = [f"--train_data={os.path.join(data_dir, 'training_json.json')}", f"--vgg19_weights={vgg19_weights()}",
              "--non_decay=1", "--decay=1", "--image_every=2"] + ([f"--device={opt.device}"] if opt.device else [])
    coarse = None
    for mouth_size, augment_num, batch_size in STAGES:
        result_path = os.path.join(opt.out, "training_model_weight", f"frame_training_{mouth_size}")
        command = [python, "train_DINet_frame.py", f"--augment_num={augment_num}",
                   f"--mouth_region_size={mouth_size}", f"--batch_size={batch_size}"]
        if coarse:
            command += ["--coarse2fine", f"--coarse_model_path={coarse}"]
        run(command + [f"--result_path={result_path}"] + common)
        coarse = os.path.join(result_path, "netG_model_epoch_2.pth")
    print(f"\ndemo done: checkpoints, log.txt and image grids (samples/*.png) under "
          f"{os.path.join(opt.out, 'training_model_weight')}; watch with "
          f"`tensorboard --logdir {os.path.join(opt.out, 'training_model_weight')}`")


if __name__ == "__main__":
    main()
