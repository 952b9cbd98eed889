"""Score dubbed videos: LSE-D / LSE-C with a SyncNet, and against their sources PSNR, SSIM, LPIPS and FID.

    python evaluate.py --videos out/a_facial_dubbing_add_audio.mp4 out/b_facial_dubbing_add_audio.mp4 \
        --syncnet_path ./asserts/syncnet_256mouth.pth [--sources a.mp4 b.mp4] [--csv results.csv]

LSE-D (lower is better) and LSE-C (higher is better) are computed as SyncNet evaluations compute them
(evaluation/sync.py) on each video's own audio track; with --sources the sources are scored the same way,
so the dubbed output's sync can be read against the original's. With --sources, the videos are taken as
self-reconstructions (each source dubbed with its own audio) and compared frame by frame: PSNR, SSIM,
LPIPS (VGG; --lpips_weights pretrained, random or a VGG16 path; frames resized to at most 512 pixels a
side) and, with --inception_weights PATH (torchvision Inception v3), FID over all frames.
"""
import argparse
import csv
import os

import numpy as np
import torch
import torch.nn.functional as F

from common.devices import choose_device
from common.errors import run_command
from common.files import check_writable, write_atomically
from data.landmark_detector import detect_landmarks
from evaluation.reconstruction import InceptionFeatures, frechet_distance, psnr, ssim
from evaluation.sync import mouth_crops, sync_score, video_audio_features
from media.decoder import DecodedVideo
from media.ffmpeg import probe
from models.checkpoint import load_syncnet

LPIPS_SIDE = 512
CHUNK = 16


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--videos", nargs="+", required=True, help="generated videos (with their audio)")
    parser.add_argument("--sources", nargs="+", default=None, help="the source of each video, in the same order")
    parser.add_argument("--syncnet_path", default="./asserts/syncnet_256mouth.pth", help="SyncNet for LSE-D/C")
    parser.add_argument("--lpips_weights", default="pretrained", help="pretrained, random or a VGG16 .pth")
    parser.add_argument("--inception_weights", default=None, help="torchvision Inception v3 .pth, for FID")
    parser.add_argument("--csv", default="./asserts/evaluation.csv", help="where the table is also written")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    return parser


def check_inputs(opt):
    """Every input, flag and the output, before any work: one line naming the file or flag and the fix."""
    if opt.sources and len(opt.sources) != len(opt.videos):
        raise SystemExit(f"--sources gives {len(opt.sources)} videos for {len(opt.videos)} --videos; give one per video")
    for flag, paths in (("--videos", opt.videos), ("--sources", opt.sources or [])):
        for path in paths:
            if not os.path.isfile(path):
                raise SystemExit(f"{path}: no such video; check the paths given to {flag}")
            info = probe(path)  # one line naming the file when ffmpeg cannot read it
            if not info["has_video"]:
                raise SystemExit(f"{path}: no video stream; pass videos to {flag}")
            if not info["has_audio"]:
                raise SystemExit(f"{path}: no audio stream, and LSE scores a video against its own speech; pass "
                                 f"videos with their audio to {flag} (inference.py writes the driving audio in)")
    if opt.inception_weights and not os.path.isfile(opt.inception_weights):
        raise SystemExit(f"--inception_weights {opt.inception_weights}: no such file; pass torchvision's Inception v3 "
                         f"state dict (.pth), or leave the flag out to skip FID")
    choose_device(opt.device)
    check_writable(os.path.dirname(os.path.abspath(opt.csv)), "--csv", shown=opt.csv)


def lip_sync(path, syncnet, config, device):
    """(SyncScore, decoded frames) of one video."""
    video = DecodedVideo(path)
    landmarks, found = detect_landmarks(video.frames)
    if not found.any():
        video.close()
        raise SystemExit(f"{path}: no face found in any frame; LSE reads the speaker's lips, so pass videos with "
                         f"one visible, frontal face")
    mouths = mouth_crops(video.frames, landmarks, config.mouth_region_size or 256)
    features = video_audio_features(path, config.audio_feature)
    try:
        score = sync_score(syncnet.to(device), mouths, features)
    except ValueError as error:
        video.close()
        raise SystemExit(f"{path}: {error}; pass longer videos") from None
    return score, video


def as_batch(frames, device, side=None):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1], optionally resized so the longer side is `side`."""
    batch = torch.from_numpy(np.array(frames)).to(device).permute(0, 3, 1, 2).float() / 255.0
    if side and max(batch.shape[2:]) > side:
        scale = side / max(batch.shape[2:])
        batch = F.interpolate(batch, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    return batch


def reconstruction(video, source, lpips, inception, device):
    count = min(len(video), len(source))
    sums = {"PSNR": 0.0, "SSIM": 0.0, "LPIPS": 0.0}
    fake_features, real_features = [], []
    for start in range(0, count, CHUNK):
        fake, real = (as_batch(v.frames[start:start + CHUNK], device) for v in (video, source))
        sums["PSNR"] += float(psnr(fake, real).sum())
        sums["SSIM"] += float(ssim(fake, real).sum())
        small_fake, small_real = (as_batch(v.frames[start:start + CHUNK], device, LPIPS_SIDE) for v in (video, source))
        sums["LPIPS"] += float(lpips(small_fake, small_real).sum())
        if inception is not None:
            fake_features.append(inception(fake).cpu().numpy())
            real_features.append(inception(real).cpu().numpy())
    return {name: total / count for name, total in sums.items()}, fake_features, real_features


def write_csv(rows, path):
    """The table as CSV at `path`, complete or not at all (an earlier table there stays until this one is written)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def write(f):
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    write_atomically(path, write, mode="w")


def print_table(rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    widths = {c: max(len(c), *(len(cell(row.get(c, ""))) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(cell(row.get(c, "")).ljust(widths[c]) for c in columns))


def main():
    opt = build_parser().parse_args()
    check_inputs(opt)
    device = choose_device(opt.device)
    syncnet, config = load_syncnet(opt.syncnet_path, "--syncnet_path")
    if config.audio_feature in ("deepspeech", "unknown"):
        raise SystemExit(f"--syncnet_path {opt.syncnet_path}: it reads {config.audio_feature} audio features, which "
                         f"cannot be computed here; pass a SyncNet trained by train_syncnet.py on mel or mfcc data")
    lpips = inception = None
    if opt.sources:
        from models.lpips_loss import LPIPS
        lpips = LPIPS(opt.lpips_weights).to(device)
        inception = InceptionFeatures(opt.inception_weights).to(device) if opt.inception_weights else None
    rows, fake_features, real_features = [], [], []
    for index, path in enumerate(opt.videos):
        score, video = lip_sync(path, syncnet, config, device)
        row = {"video": os.path.basename(path), "frames": len(video), "LSE-D": score.lse_d, "LSE-C": score.lse_c,
               "offset": score.offset}
        if opt.sources:
            source_score, source = lip_sync(opt.sources[index], syncnet, config, device)
            row.update({"source LSE-D": source_score.lse_d, "source LSE-C": source_score.lse_c})
            metrics, fakes, reals = reconstruction(video, source, lpips, inception, device)
            row.update(metrics)
            fake_features += fakes
            real_features += reals
            source.close()
        video.close()
        rows.append(row)
    if len(rows) > 1:
        mean = {"video": "mean", "frames": sum(r["frames"] for r in rows)}
        mean.update({key: float(np.mean([r[key] for r in rows])) for key in rows[0] if isinstance(rows[0][key], float)})
        rows.append(mean)
    print_table(rows)
    if fake_features:
        print(f"FID over {sum(len(f) for f in fake_features)} frames: "
              f"{frechet_distance(np.concatenate(fake_features), np.concatenate(real_features)):.2f}")
    write_csv(rows, opt.csv)
    print(f"wrote {opt.csv}")


if __name__ == "__main__":
    run_command(main)
