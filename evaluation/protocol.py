"""Scoring a video against the real one it reconstructs, and by its own audio: what evaluate.py reports per video.

A video is decoded at 25 fps and its 68 landmarks detected (the repository's detector, the same for every video,
so its noise is the same on both sides). Against the real video, frame t against frame t:

    PSNR / SSIM / LPIPS mouth and face   in DINet's face crop of the real frame, placed as dubbing places it and
                                         resized to SCORE_GEOMETRY whatever the checkpoint's mouth size (the
                                         mouth: the square the generator paints), over the frames where it fits
    lmd_mouth, mouth_open_corr           evaluation/lip_shape.py, over the frames with a face found in both
    identity_cos                         evaluation/identity.py, over the same frames
    FID face                             Inception features of the face crops (pooled over videos by the caller)

By the video's own audio: LSE-D/C with a SyncNet of this repository ("repo") and with syncnet_python's
("syncnet_v2"), evaluation/sync.py.
"""
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from common.errors import UserError
from common.geometry import CropGeometry
from data.landmark_detector import detect_landmarks
from dubbing.pipeline import crop_radii, dub, face_crop
from media.decoder import DecodedVideo

from .identity import aligned_face, embeddings, identity_similarity
from .lip_shape import lip_shape_scores
from .reconstruction import psnr, ssim
from .sync import (
    mouth_crops,
    sync_score,
    syncnet_v2_faces,
    syncnet_v2_score,
    video_audio_features,
    video_mfcc,
)

SCORE_GEOMETRY = CropGeometry(128)  # face crops of 160x208 pixels, the mouth 128x128
CHUNK = 16


@dataclass
class Scorers:
    """The networks the scores need; None where a score is not asked for."""
    device: torch.device
    lpips: torch.nn.Module = None
    inception: torch.nn.Module = None
    syncnet: tuple = None        # (network, SyncNetConfig) of this repository
    lse_syncnet: torch.nn.Module = None
    identity: torch.nn.Module = None
    progress: bool = True


class NoFace(Exception):
    """A video the scores cannot be had from; the message says why, for the list of skipped videos."""


@dataclass
class LandmarkedVideo:
    path: str
    video: DecodedVideo
    landmarks: np.ndarray  # (T, 68, 2)
    found: np.ndarray      # (T,) bool

    @classmethod
    def open(cls, path, progress=True, need_face=True):
        """The video decoded and its landmarks detected; with `need_face`, NoFace when no frame has a face."""
        video = DecodedVideo(path)
        frames = tqdm(video.frames, desc="landmarks", unit="frame", leave=False, disable=not progress)
        landmarks, found = detect_landmarks(frames)
        if need_face and not found.any():
            video.close()
            raise NoFace("no face found in any frame")
        return cls(path, video, landmarks, found)

    @property
    def frames(self):
        return self.video.frames

    def __len__(self):
        return len(self.landmarks)

    def close(self):
        self.video.close()


def sync_columns(video, scorers, prefix=""):
    """LSE-D, LSE-C and the offset of a LandmarkedVideo by its own audio, with each SyncNet given (NaN without a
    face to read the lips of)."""
    columns = {}
    if not video.found.any():
        names = ["repo"] * (scorers.syncnet is not None) + ["syncnet_v2"] * (scorers.lse_syncnet is not None)
        return {f"{prefix}{score} {name}": float("nan") for name in names for score in ("LSE-D", "LSE-C", "offset")}
    try:
        if scorers.syncnet is not None:
            network, config = scorers.syncnet
            mouths = mouth_crops(video.frames, video.landmarks, config.mouth_region_size or 256)
            score = sync_score(network, mouths, video_audio_features(video.path, config.audio_feature))
            columns.update({f"{prefix}LSE-D repo": score.lse_d, f"{prefix}LSE-C repo": score.lse_c,
                            f"{prefix}offset repo": score.offset})
        if scorers.lse_syncnet is not None:
            faces = syncnet_v2_faces(video.frames, video.landmarks)
            score = syncnet_v2_score(scorers.lse_syncnet, faces, *video_mfcc(video.path), progress=scorers.progress)
            columns.update({f"{prefix}LSE-D syncnet_v2": score.lse_d, f"{prefix}LSE-C syncnet_v2": score.lse_c,
                            f"{prefix}offset syncnet_v2": score.offset})
    except ValueError as error:  # too few frames
        raise UserError(f"{video.path}: {error}; pass longer videos") from None
    return columns


def _batch(crops, device):
    return torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).float() / 255.0


def _identity_embeddings(video, frames, scorers):
    """Face embeddings (len(frames), D) of the given frames of a LandmarkedVideo."""
    faces = np.stack([aligned_face(video.frames[t], video.landmarks[t]) for t in frames])
    return embeddings(scorers.identity, faces)


class RealVideo:
    """What the scores of every video made from one real video need of it, computed once: its landmarks, its
    face crops where dubbing places them (in the frames where a crop fits, `scored`: dubbing passes the others
    through), their Inception features and the face embeddings. The frames themselves are not kept."""

    def __init__(self, path, scorers, own_sync=None):
        """`own_sync`: a prefix under which to keep its own LSE columns (`sync`) too, read while it is decoded."""
        video = LandmarkedVideo.open(path, scorers.progress)
        try:
            self.path, self.landmarks, self.found = path, video.landmarks, video.found
            self.sync = sync_columns(video, scorers, own_sync) if own_sync is not None else {}
            self.radii = crop_radii(video.landmarks, video.video.size)
            self.scored = [t for t, radius in enumerate(self.radii) if radius is not None]
            if not self.scored:
                raise NoFace("the face crop leaves the frame in every frame")
            self.crops = self.face_crops(video.frames)
            self.inception = _inception_features(self.crops, scorers)
            self.identity = (_identity_embeddings(video, range(len(video)), scorers) if scorers.identity is not None
                             else None)
        finally:
            video.close()

    def __len__(self):
        return len(self.landmarks)

    def face_crops(self, frames):
        """(len(scored), h, w, 3) uint8: each scored frame's face crop at the real frame's box."""
        return np.stack([face_crop(frames[t], self.landmarks[t], self.radii[t], SCORE_GEOMETRY)[0]
                         for t in self.scored if t < len(frames)])


def _inception_features(crops, scorers):
    if scorers.inception is None:
        return None
    with torch.no_grad():
        return np.concatenate([scorers.inception(_batch(crops[start:start + CHUNK], scorers.device)).cpu().numpy()
                               for start in range(0, len(crops), CHUNK)])


def _region_scores(fake_crops, real_crops, scorers):
    """PSNR, SSIM and LPIPS of paired face crops, of the whole crop and of its mouth square; LPIPS from one map
    per pair (scorers.lpips is spatial): its mean over the crop and over the mouth."""
    rows, cols = SCORE_GEOMETRY.mouth_rows, SCORE_GEOMETRY.mouth_cols
    sums = dict.fromkeys([f"{name} {region}" for region in ("mouth", "face") for name in ("PSNR", "SSIM", "LPIPS")],
                         0.0)
    starts = range(0, len(fake_crops), CHUNK)
    with torch.no_grad():
        for start in tqdm(starts, desc="scoring", unit="batch", leave=False, disable=not scorers.progress):
            fake, real = (_batch(crops[start:start + CHUNK], scorers.device) for crops in (fake_crops, real_crops))
            for region, f, r in (("mouth", fake[..., rows, cols], real[..., rows, cols]), ("face", fake, real)):
                sums[f"PSNR {region}"] += float(psnr(f, r).sum())
                sums[f"SSIM {region}"] += float(ssim(f, r).sum())
            distance = scorers.lpips(fake, real)  # (N, H, W)
            sums["LPIPS mouth"] += float(distance[:, rows, cols].mean(dim=(1, 2)).sum())
            sums["LPIPS face"] += float(distance.mean(dim=(1, 2)).sum())
    return {name: total / len(fake_crops) for name, total in sums.items()}


def score_against_real(path, real, scorers):
    """(columns, Inception features of its face crops or None) of the video at `path` made from `real` (a
    RealVideo), its first frames against the real video's (a dub as long as its speech may be longer or shorter).
    A video with no face is scored (a generator's failure is a score), not NoFace."""
    video = LandmarkedVideo.open(path, scorers.progress, need_face=False)
    try:
        count = min(len(video), len(real))
        if len(video) != len(real):
            tqdm.write(f"{path}: {len(video)} frames, its source {len(real)}: compared over the first {count}")
        fake_crops = real.face_crops(video.frames[:count])
        columns = {"frames": len(fake_crops)}
        columns.update(_region_scores(fake_crops, real.crops[:len(fake_crops)], scorers))
        features = _inception_features(fake_crops, scorers)
        if features is not None:
            columns["FID face"] = None  # a distance between sets of frames: pooled over the videos
        columns.update(sync_columns(video, scorers))
        both = video.found[:count] & real.found[:count]
        columns.update(lip_shape_scores(video.landmarks[:count], real.landmarks[:count], both))
        if scorers.identity is not None:
            frames = np.flatnonzero(both)
            columns["identity_cos"] = (identity_similarity(_identity_embeddings(video, frames, scorers),
                                                           real.identity[frames]) if len(frames) else float("nan"))
        return columns, features
    finally:
        video.close()


def _memory_mb(device, peak=False):
    """Memory held now, or the most held since _reset_peak (`peak`): allocated on a GPU, resident on a CPU."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2 ** 20
    try:
        with open("/proc/self/status") as f:
            field = "VmHWM:" if peak else "VmRSS:"
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024
    except (OSError, StopIteration):
        return float("nan")


def _reset_peak(device):
    """Start measuring the peak anew; False where it cannot be (a kernel without /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the kernel's high-water mark of resident memory back to what is resident now
        return True
    except OSError:
        return False


def timed_dub(source_path, generator, output_path, device, amp):
    """Dub a source with its own audio as inference.py does: its speed (frames per second of the dub() call) and
    the most memory it held at once beyond what the process held before (so the scoring networks do not count; the
    generator's working copy does)."""
    before = _memory_mb(device)
    measured = _reset_peak(device)
    started = time.perf_counter()
    result = dub(source_path, source_path, generator, output_path, device, amp=amp, progress=False)
    seconds = time.perf_counter() - started
    added = _memory_mb(device, peak=True) - before if measured else float("nan")
    return {"dub frames/s": result.frames / seconds, "dub memory MB": added}
