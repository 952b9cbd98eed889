"""Validation while training: held-out videos, generated the way dubbing generates, scored every --val_every epochs.

Held-out videos come from --val_data (a training JSON of other videos) or --val_fraction (whole videos of the
training JSON, drawn by --seed; never frames of a training video). Of each held-out video, NUM_REFERENCES clips
spread over it give the references (one centre frame each, the same for every frame, as dubbing takes 5 frames of
the video), and up to --val_clips others give the frames to generate: each clip's 5 centre frames, mouth masked,
with the clip's own audio. Scores of the generated faces against the real ones:

    l1, psnr, ssim   on the mouth region (the part the generator makes)
    lpips            on the whole face crop (VGG; --val_lpips_weights)
    lmd_mouth        mouth landmark distance (evaluation/lip_shape.py), landmarks by the face-mesh detector on the
                     generated face pasted into the real crop as dubbing pastes it (its mouth, with a soft edge)
    mouth_open_corr  concordance over time of generated and real mouth openings, per video, then averaged
    sync             the SyncNet's score of the generated 5-frame clips (1 in sync, 0 off) (the clip stage's SyncNet, or
                     --val_syncnet_path), beside sync_real, the same for the real clips

Validation draws from no random generator the training uses, so a run's losses are the same with it or without.
"""
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import UserError
from common.geometry import AUDIO_WINDOW, CLIP_LENGTH, NUM_REFERENCES, CropGeometry, mask_mouth, paste_mask
from config.config import BEST_NAME, VALIDATION_METRICS as METRICS
from data.clip_dataset import CLIP_FRAMES
from data.dataset import FrameCache, to_tensor
from data.training_json import TrainingSet, load_training_json
from evaluation.lip_shape import lip_shape_scores
from evaluation.reconstruction import psnr, ssim

from .run_log import image_grid

SPLIT_NAME = "validation_split.json"
DETECTION_SIDE = 256  # face crops are enlarged to this width before landmark detection (mouth-64 crops are 80 wide)
GRID_FRAMES = 6


def split_training_set(training_set, fraction, seed):
    """(training set, held-out set): round(fraction x videos) whole videos held out, drawn by `seed`."""
    names = sorted(training_set.videos)
    held = round(fraction * len(names))
    if not 0 < fraction < 1 or held < 1 or held >= len(names):
        raise UserError(f"--val_fraction {fraction}: holds out {held} of the {len(names)} videos of "
                        f"{training_set.path}, which leaves no {'validation' if held < 1 else 'training'} video; "
                        f"pass a fraction that keeps at least one video on each side, or --val_data JSON")
    chosen = set(random.Random(seed).sample(names, held))
    return subset(training_set, sorted(set(names) - chosen)), subset(training_set, sorted(chosen))


def subset(training_set, names):
    return TrainingSet(training_set.path, {name: training_set.videos[name] for name in names},
                       training_set.audio_feature, training_set.audio_channel)


def held_out_sets(opt, training_set, resume):
    """(training set, held-out set or None, the split as recorded in checkpoints and the run folder). A resumed
    run keeps the split its checkpoint recorded."""
    if opt.val_data and opt.val_fraction is not None:
        raise UserError("--val_data and --val_fraction both given; pass one (a held-out JSON, or a fraction of "
                        "--train_data)")
    recorded = (resume or {}).get("validation_split")
    if not opt.val_data and opt.val_fraction is None:
        return training_set, None, None
    if opt.val_data:
        held_out = load_training_json(opt.val_data)
        if (held_out.audio_feature, held_out.audio_channel) != (training_set.audio_feature, training_set.audio_channel):
            raise UserError(f"--val_data {opt.val_data}: {held_out.audio_channel}-d {held_out.audio_feature} audio "
                            f"features, the training data has {training_set.audio_channel}-d "
                            f"{training_set.audio_feature}; prepare the held-out videos with the same --audio_feature")
        trained = {os.path.realpath(path) for clips in training_set.videos.values() for clip in clips
                   for path in clip.frame_paths}
        shared = sorted(name for name, clips in held_out.videos.items()
                        if any(os.path.realpath(path) in trained for clip in clips for path in clip.frame_paths))
        if shared:
            raise UserError(f"--val_data {opt.val_data}: video {shared[0]} is also in --train_data ({len(shared)} in "
                            f"both); hold out videos the run does not train on")
        split = {"val_data": opt.val_data, "videos": sorted(held_out.videos)}
    elif recorded and recorded.get("fraction") == opt.val_fraction and set(recorded["videos"]) <= set(training_set.videos):
        held_out = subset(training_set, recorded["videos"])
        training_set = subset(training_set, sorted(set(training_set.videos) - set(recorded["videos"])))
        split = recorded
    else:
        training_set, held_out = split_training_set(training_set, opt.val_fraction, opt.seed)
        split = {"fraction": opt.val_fraction, "seed": opt.seed, "videos": sorted(held_out.videos)}
    usable = {name: clips for name, clips in held_out.videos.items() if len(clips) > NUM_REFERENCES}
    if not usable:
        raise UserError(f"the held-out videos ({', '.join(sorted(held_out.videos)[:5])}) have no video with "
                        f"{NUM_REFERENCES + 1} or more {CLIP_LENGTH}-frame clips; hold out longer videos")
    return training_set, subset(held_out, sorted(usable)), split


def evenly_spaced(count, wanted):
    """`wanted` indices spread over range(count) (all of them when count <= wanted)."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(wanted - 1, 1)) for i in range(wanted)})


class Validator:
    """The held-out clips of one run and what scores them; `run` validates the generator once."""

    def __init__(self, opt, held_out, split, runtime, syncnet=None):
        self.opt, self.split, self.runtime = opt, split, runtime
        self.geometry = CropGeometry(opt.mouth_region_size)
        self.best = None  # {"metric", "value", "epoch"}
        self.syncnet = syncnet
        self.videos = [self.load_video(name, clips, FrameCache(0)) for name, clips in sorted(held_out.videos.items())]
        self.real_landmarks = [self.landmarks(video["real"]) for video in self.videos]
        self.paste = torch.from_numpy(paste_mask(self.geometry))  # what dubbing keeps of a generated crop
        from models.lpips_loss import LPIPS
        self.lpips = LPIPS(opt.val_lpips_weights, flag="--val_lpips_weights").to(runtime.device)
        if self.syncnet is not None:
            self.sync_real = self.sync_scores([video["real"] for video in self.videos])

    def load_video(self, name, clips, cache):
        """A held-out video's tensors: real and masked frames (N, 3, H, W), the references (15, H, W), audio
        windows (N, A, 5) and each clip's 9 audio vectors (C, A, 9)."""
        size = (self.geometry.width, self.geometry.height)
        chosen = evenly_spaced(len(clips), NUM_REFERENCES + self.opt.val_clips)
        reference_clips = [chosen[i] for i in evenly_spaced(len(chosen), NUM_REFERENCES)]
        generated_clips = [i for i in chosen if i not in reference_clips][:self.opt.val_clips]
        centre = CLIP_LENGTH // 2
        references = [cache.get(clips[i].frame_paths[centre], size) for i in reference_clips]
        real, masked, audio, audio_clips = [], [], [], []
        for index in generated_clips:
            clip = clips[index]
            for frame in CLIP_FRAMES:
                image = cache.get(clip.frame_paths[frame], size)
                real.append(to_tensor(image))
                masked.append(to_tensor(mask_mouth(image, self.geometry)))
                audio.append(torch.tensor(clip.audio_features[frame - AUDIO_WINDOW // 2: frame + AUDIO_WINDOW // 2 + 1],
                                          dtype=torch.float32).t())
            audio_clips.append(torch.tensor(clip.audio_features, dtype=torch.float32).t())
        return {"name": name, "real": torch.stack(real), "masked": torch.stack(masked),
                "reference": to_tensor(*references), "audio": torch.stack(audio),
                "audio_clip": torch.stack(audio_clips)}

    @staticmethod
    def landmarks(frames):
        """68-point landmarks of face crops (N, 3, H, W) in [0, 1], and which were found."""
        from data.landmark_detector import detect_landmarks
        scale = DETECTION_SIDE / frames.shape[-1]
        large = F.interpolate(frames.float(), scale_factor=scale, mode="bilinear", align_corners=False)
        images = (large.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return detect_landmarks(list(images), smooth=False)

    def sync_scores(self, clips):
        """Mean SyncNet in-sync score of each video's 5-frame clips (frames (C*5, 3, H, W))."""
        scores = []
        for frames, video in zip(clips, self.videos):
            stacked = frames.reshape(-1, len(CLIP_FRAMES) * 3, *frames.shape[2:])  # (C, 15, H, W)
            mouths = stacked[..., self.geometry.mouth_rows, self.geometry.mouth_cols].to(self.runtime.device)
            with torch.no_grad():
                scores.append(float(self.syncnet.score(mouths, video["audio_clip"].to(self.runtime.device)).mean()))
        return float(np.mean(scores))

    def generate(self, network, precision, video):
        """The video's generated frames, as dubbing makes them: its references encoded once, then every frame."""
        device = self.runtime.device
        fakes = []
        with torch.no_grad(), precision.autocast():
            state = network.encode_reference(precision.batch(video["reference"][None].to(device)))
            for start in range(0, len(video["real"]), 16):
                masked = precision.batch(video["masked"][start:start + 16].to(device))
                fake = network.generate(masked, video["audio"][start:start + 16].to(device), state)
                fakes.append(fake.float().cpu().contiguous())
        return torch.cat(fakes)

    def run(self, stage):
        """The scores of stage's generator on the held-out clips, and an image grid (masked | generated | real)."""
        from .trainer import rng_state, set_rng_state
        network = stage.generator()
        saved, was_training = rng_state(), network.training
        network.eval()
        try:
            fakes = [self.generate(network, stage.precision, video) for video in self.videos]
        finally:
            network.train(was_training)
            set_rng_state(saved)
        return self.score(fakes), self.grid(fakes)

    def score(self, fakes):
        """Scores of generated frames (one (N, 3, H, W) tensor in [0, 1] per held-out video) against the real ones."""
        rows, cols = self.geometry.mouth_rows, self.geometry.mouth_cols
        fake_all = torch.cat(fakes).clamp(0, 1)
        real_all = torch.cat([video["real"] for video in self.videos])
        fake_mouth, real_mouth = fake_all[..., rows, cols], real_all[..., rows, cols]
        scores = {"l1": float((fake_mouth - real_mouth).abs().mean()), "psnr": float(psnr(fake_mouth, real_mouth).mean()),
                  "ssim": float(ssim(fake_mouth, real_mouth).mean())}
        device = self.runtime.device
        with torch.no_grad():
            scores["lpips"] = float(torch.cat([self.lpips(fake_all[i:i + 32].to(device), real_all[i:i + 32].to(device))
                                               for i in range(0, len(fake_all), 32)]).mean())
        per_video, measured = [], 0
        for fake, video, (real_points, real_found) in zip(fakes, self.videos, self.real_landmarks):
            points, found = self.landmarks(fake.clamp(0, 1) * self.paste + video["real"] * (1 - self.paste))
            both = found & real_found
            if both.sum() >= 2:  # a correlation needs two frames
                per_video.append((lip_shape_scores(points, real_points, both), int(both.sum())))
                measured += int(both.sum())
        # lmd_mouth over all measured frames; mouth_open_corr per video (it is a correlation over time), then averaged
        scores["lmd_mouth"] = (sum(video["lmd_mouth"] * frames for video, frames in per_video) / measured
                               if measured else math.nan)
        scores["mouth_open_corr"] = (float(np.mean([video["mouth_open_corr"] for video, _ in per_video]))
                                     if per_video else math.nan)
        scores["faces_missed"] = len(fake_all) - measured
        if self.syncnet is not None:
            scores["sync"] = self.sync_scores(fakes)
            scores["sync_real"] = self.sync_real
        return scores

    def grid(self, fakes):
        pick = evenly_spaced(sum(len(fake) for fake in fakes), GRID_FRAMES)
        fake_all = torch.cat(fakes).clamp(0, 1)
        masked_all, real_all = (torch.cat([video[key] for video in self.videos]) for key in ("masked", "real"))
        return image_grid([[masked_all[i], fake_all[i], real_all[i]] for i in pick])

    def improved(self, scores, epoch):
        """Whether these scores are the best so far by --val_metric (and remember them if so)."""
        metric = self.opt.val_metric
        value = scores.get(metric, math.nan)
        # while no score could be measured (no face found in the generated frames), the latest model stands in
        better = self.best is None or math.isnan(self.best["value"]) or (not math.isnan(value) and (
            value > self.best["value"] if METRICS[metric] else value < self.best["value"]))
        if better:
            self.best = {"metric": metric, "value": value, "epoch": epoch}
        return better

    def state(self):
        """What checkpoints record: the split, and the best score so far (which a resumed run keeps)."""
        return {"validation_split": self.split, "validation_best": self.best}

    def restore(self, checkpoint):
        best = (checkpoint or {}).get("validation_best")
        if best and best.get("metric") == self.opt.val_metric:
            self.best = best

    def write_split(self, result_path):
        from common.files import write_atomically
        write_atomically(os.path.join(result_path, SPLIT_NAME),
                         lambda f: json.dump(self.split, f, indent=1), mode="w")


def format_scores(epoch, scores, best, seconds, epoch_seconds):
    """The console's one validation line."""
    shown = " ".join(f"{name}={scores[name]:.4g}" for name in (*METRICS, "sync_real") if name in scores)
    missed = f" ({scores['faces_missed']} frames without a detected face)" if scores.get("faces_missed") else ""
    share = f", {seconds / epoch_seconds:.0%} of the epoch" if epoch_seconds else ""
    if not best:
        kept = ""
    elif math.isnan(best["value"]):
        kept = f"; {best['metric']} not measured yet, so {BEST_NAME} is the latest epoch's"
    else:
        kept = f"; best {best['metric']}={best['value']:.4g} at epoch {best['epoch']}"
    return f"validation at epoch {epoch}: {shown}{missed}{kept} [{seconds:.1f} s{share}]"


def timed_run(validator, stage):
    started = time.perf_counter()
    scores, grid = validator.run(stage)
    return scores, grid, time.perf_counter() - started
