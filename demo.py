"""The main job on built-in demo data: train a model that dubs, dub a face it never saw, and measure it.

    python demo.py [--minutes 12] [--out ./asserts/demo] [--device cpu]

1. makes the procedural demo set (talking faces whose mouths are drawn from their speech's loudness), as
   `python data_processing.py --make_demo_data --demo_dir DIR --num_videos 20` does;
2. trains the frame stage at mouth 64 with whole videos held out (`--val_fraction`), until the held-out
   mouth-opening correlation stops improving (`--val_patience`) or its share of the minutes is spent
   (`--max_minutes`), keeping the best epoch as netG_best.pth;
3. trains a SyncNet on the videos the frame stage trained on (the held-out ones never), then the clip stage from
   the frame stage's best epoch, driven by that SyncNet, validated on the same held-out videos;
4. dubs a held-out face with another held-out video's speech (`inference.py`), cropping by the landmarks the demo
   set was prepared with, as its training crops were;
5. scores every held-out face dubbed that way against the face the demo set's generator draws for that speech,
   beside a face that does not speak and the same model driven by a third clip (`evaluate.py --protocol
   procedural`), and writes true face | dubbed side by side;
6. ends with one line saying how far the training got.
Each step is a command a user could type, printed before it runs. VGG19 and LPIPS use torchvision's ImageNet
weights when they are in the torch hub cache, random weights otherwise (this machine may have no network).
"""
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time

import torch

from common.errors import ArgumentParser, run_command
from config.ranges import SEED, number

NUM_VIDEOS = 20        # 17 faces to learn from, 3 held out: a face, the speech it is dubbed with, a mismatched one
HELD_OUT = 0.15
# the frame stage at mouth 64 on a CPU: batches of 8 (the model updates more often in the minutes it has), epochs of
# 17 iterations (each video drawn 8 times), a held-out score after every second; L1 beside DINet's losses and twice
# its learning rate, to learn the face in the minutes a demo has; the weights' moving average, scored and kept by
# mouth_open_corr (lmd_mouth also rewards a mouth that barely moves)
TRAINING = ["--mouth_region_size=64", "--batch_size=8", "--augment_num=8", "--non_decay=1000", "--decay=0",
            "--lamb_l1=10", "--lr_g=0.0002", "--lr_dI=0.0002", "--ema=0.995",
            f"--val_fraction={HELD_OUT}", "--val_every=2", "--val_metric=mouth_open_corr", "--val_patience=10",
            "--checkpoint=1000", "--keep_step_checkpoints=1", "--num_workers=1"]
# train_syncnet.py's defaults, stopped by the minutes (it passes 0.9 held-out accuracy in about 2 minutes here)
SYNCNET = ["--mouth_region_size=64", "--batch_size=16", "--non_decay=30", "--decay=0", "--num_workers=1"]
# the clip stage: DINet's losses and sync loss, the frame stage's L1, its moving average; a held-out score every 80
# iterations of 2 clips
CLIP = ["--mouth_region_size=64", "--batch_size=2", "--augment_num=8", "--iterations_per_epoch=40",
        "--non_decay=1000", "--decay=0", "--lamb_l1=10", "--ema=0.995", "--val_every=2",
        "--val_metric=mouth_open_corr", "--checkpoint=1000", "--keep_step_checkpoints=1", "--num_workers=1"]
OTHER_MINUTES = 3.0    # data, dubbing and scoring on a 2-core CPU; the rest of --minutes trains
SYNCNET_SHARE, CLIP_SHARE = 0.08, 0.2  # of the training minutes; the frame stage has the rest
PROOF_MINUTES = 75     # the budget of the README's table, on a 2-core CPU
ROOT = os.path.dirname(os.path.abspath(__file__))


def run(command):
    """Run one of the repository's commands from the repository's folder, as a user would type it there."""
    print("\n$ " + " ".join(shlex.quote(part) for part in command), flush=True)
    started = time.time()
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        sys.exit("demo stopped: the command above failed")
    print(f"({time.time() - started:.0f} s)", flush=True)


def cached_weights(file_name, flag, fallback="random"):
    """None (the command's default, ImageNet weights) when torchvision's file is in the torch hub cache, else
    `fallback`, said once."""
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
    if os.path.isfile(cached):
        return None
    print(f"note: no ImageNet weights at {cached}; the demo passes {flag} {fallback} (real runs should not)")
    return fallback


def build_parser():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=number(above=OTHER_MINUTES), default=12.0,
                        help=f"the whole demo's budget; all but about {OTHER_MINUTES:g} minutes train")
    parser.add_argument("--out", default="./asserts/demo", help="folder for the demo data, the run and the results")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the demo set")
    return parser


def training_summary(log_path):
    """(epochs trained, why it stopped) from a training log."""
    with open(log_path) as f:
        text = f.read()
    epochs = max((int(epoch) for epoch in re.findall(r"validation at epoch (\d+):", text)), default=0)
    stopped = re.findall(r"stopped after epoch \d+ of \d+ \([\d.]+ min\): (.*)", text)
    return epochs, stopped[-1] if stopped else "the schedule ended"


def plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def mean_scores(csv_path):
    """{kind: {"lmd_mouth": .., "mouth_open_corr": ..}} from the mean rows of `evaluate.py --protocol procedural`'s
    table."""
    with open(csv_path) as f:
        return {row["kind"]: {key: float(row[key]) for key in ("lmd_mouth", "mouth_open_corr")}
                for row in csv.DictReader(f) if row["face"].startswith("mean")}


def main():
    opt = build_parser().parse_args()
    opt.out = os.path.abspath(opt.out)  # the commands run from the repository's folder
    started = time.time()
    data_dir = os.path.join(opt.out, "training_data")
    runs = os.path.join(opt.out, "training_model_weight")
    frame_dir, syncnet_dir, clip_dir = (os.path.join(runs, f"{stage}_training_64") for stage in ("frame", "syncnet",
                                                                                                 "clip"))
    python = sys.executable
    device = [f"--device={opt.device}"] if opt.device else []
    run([python, "data_processing.py", "--make_demo_data", "--demo_dir", data_dir, "--num_videos", str(NUM_VIDEOS),
         "--seed", str(opt.seed)])

    lpips = cached_weights("vgg16-397923af.pth", "--val_lpips_weights")
    vgg = cached_weights("vgg19-dcbb9e9d.pth", "--vgg19_weights")
    weights = [*([f"--val_lpips_weights={lpips}"] if lpips else []), *([f"--vgg19_weights={vgg}"] if vgg else [])]
    training_minutes = opt.minutes - OTHER_MINUTES - (time.time() - started) / 60
    syncnet_minutes = max(1.0, SYNCNET_SHARE * training_minutes)
    clip_minutes = max(1.0, CLIP_SHARE * training_minutes)
    frame_minutes = max(1.0, training_minutes - syncnet_minutes - clip_minutes)
    run([python, "train_DINet_frame.py", f"--train_data={os.path.join(data_dir, 'training_json.json')}", *TRAINING,
         f"--max_minutes={frame_minutes:.1f}", f"--result_path={frame_dir}", "--resume=auto", *weights, *device])

    with open(os.path.join(frame_dir, "validation_split.json")) as f:
        faces = json.load(f)["videos"]
    # the frame stage's split as training JSONs, so that the SyncNet and the clip stage never see the held-out faces
    from data.training_json import write_json_split
    trained, held_out = (os.path.join(data_dir, name) for name in ("training_json_trained.json",
                                                                    "training_json_held_out.json"))
    write_json_split(os.path.join(data_dir, "training_json.json"), faces, trained, held_out)
    print(f"\nthe held-out split as training JSONs: {trained}, {held_out} ({', '.join(faces)})")
    syncnet = os.path.join(opt.out, "syncnet_64mouth.pth")
    run([python, "train_syncnet.py", f"--train_data={trained}", *SYNCNET, f"--max_minutes={syncnet_minutes:.1f}",
         f"--result_path={syncnet_dir}", f"--syncnet_path={syncnet}", "--resume=auto", *device])
    run([python, "train_DINet_clip.py", f"--train_data={trained}", f"--val_data={held_out}", *CLIP,
         f"--pretrained_frame_DINet_path={os.path.join(frame_dir, 'netG_best.pth')}",
         f"--pretrained_syncnet_path={syncnet}", f"--max_minutes={clip_minutes:.1f}", f"--result_path={clip_dir}",
         "--resume=auto", *weights, *([f"--lpips_weights={lpips}"] if lpips else []), *device])

    checkpoint = os.path.join(clip_dir, "netG_best.pth")
    face, speech = faces[0], faces[1]
    results = os.path.join(opt.out, "results")
    from data.prepare import Layout, landmark_csv
    landmarks, _ = landmark_csv(face, Layout.under(data_dir))  # those its training crops were cut by
    run([python, "inference.py", f"--source_video_path={os.path.join(data_dir, 'split_video_25fps', face + '.mp4')}",
         f"--source_openface_landmark_path={landmarks}",
         f"--driving_audio_path={os.path.join(data_dir, 'split_video_25fps_audio', speech + '.wav')}",
         f"--pretrained_clip_DINet_path={checkpoint}", f"--res_video_dir={results}", *device])
    run([python, "evaluate.py", "--protocol=procedural", f"--demo_dir={data_dir}", "--faces", *faces,
         f"--checkpoint={checkpoint}", f"--out_dir={results}", *device])

    from evaluation.procedural import verdict
    from person.results import side_by_side
    videos = os.path.join(results, "videos")
    comparison = os.path.join(results, f"{face}_speaking_{speech}_true_vs_dubbed.mp4")
    side_by_side(os.path.join(videos, f"{face}_speaking_{speech}_truth.mp4"),
                 os.path.join(videos, f"{face}_speaking_{speech}.mp4"), comparison, height=256)
    means = mean_scores(os.path.join(results, "procedural.csv"))
    follows, line = verdict(means)
    frame_epochs, frame_why = training_summary(os.path.join(frame_dir, "log.txt"))
    clip_epochs, clip_why = training_summary(os.path.join(clip_dir, "log.txt"))
    print(f"\ndemo done in {(time.time() - started) / 60:.1f} min. Dubbed: {results} ({face} speaking {speech}'s "
          f"speech; true face | dubbed in {os.path.basename(comparison)}); the model: {checkpoint}.")
    if follows:
        hint = ""
    elif "--max_minutes" in frame_why + clip_why and opt.minutes < PROOF_MINUTES:
        hint = f" Give it longer: python demo.py --minutes {PROOF_MINUTES}, the budget docs/results.md measures."
    else:
        hint = " More minutes alone did not reach the bar on a CPU; docs/results.md says what was tried."
    print(f"frame stage {plural(frame_epochs, 'epoch')} ({frame_why}), clip stage {plural(clip_epochs, 'epoch')} of "
          f"40 iterations ({clip_why}), at mouth 64: {line}.{hint}")

if __name__ == "__main__":
    run_command(main)
