"""LSE-D and LSE-C, as SyncNet evaluations compute them (Chung & Zisserman; Wav2Lip's and LatentSync's tables).

For every 5-frame mouth window of a video and every audio offset in -15..+15 frames, a distance between
the mouths and the audio window shifted by the offset; each offset's distances are averaged over the video.
LSE-D is the smallest of those means (lower is better), LSE-C the median minus the smallest (the
confidence that the best offset stands out; higher is better), and the offset of the minimum is the
estimated audio-video lag. Distance: for an embedding SyncNet, the Euclidean distance of the L2-normalised
face and audio codes; for DINet's score-map SyncNet, 1 - its sync score.
"""
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from common.geometry import AUDIO_FRAMES, MOUTH_FRAMES, CropGeometry
from data.audio_features import compute_audio_feature
from dubbing.pipeline import crop_radii, face_crop
from media.convert import extract_audio
from models.syncnet import EmbeddingSyncNet

MAX_OFFSET = 15


@dataclass
class SyncScore:
    lse_d: float
    lse_c: float
    offset: int   # frames; 0 means in sync


def mouth_crops(frames, landmarks, mouth_size):
    """(T, m, m, 3) uint8: the mouth square of DINet's face crop (where the generator paints) in every frame."""
    geometry = CropGeometry(mouth_size)
    height, width = frames.shape[1:3]
    radii = crop_radii(landmarks, (width, height))
    crops, last = [], None
    for frame, points, radius in zip(frames, landmarks, radii):
        if radius is not None:
            last = face_crop(frame, points, radius, geometry)[0][geometry.mouth_rows, geometry.mouth_cols]
        if last is None:
            continue  # no crop fits yet: skip leading frames
        crops.append(last)
    return np.stack(crops)


def _codes(network, mouths, audio, batch=64):
    """Face codes (N, D, h, w) for mouth windows (N, 15, m, m) and audio codes (M, D) for audio windows (M, A, 9)."""
    face_codes, audio_codes = [], []
    with torch.no_grad():
        for start in range(0, len(mouths), batch):
            chunk, _ = network.prepare(mouths[start:start + batch], audio[:1])
            face_codes.append(network.face_encoder(chunk))
        for start in range(0, len(audio), batch):
            _, chunk = network.prepare(mouths[:1], audio[start:start + batch])
            audio_codes.append(network.audio_encoder(chunk))
    return torch.cat(face_codes), torch.cat(audio_codes)


def _distance(network, face_codes, audio_codes):
    """(N,) distance of paired codes."""
    if isinstance(network, EmbeddingSyncNet):
        face = torch.nn.functional.normalize(face_codes.mean(dim=(2, 3)), dim=1)
        audio = torch.nn.functional.normalize(audio_codes, dim=1)
        return (face - audio).norm(dim=1)
    with torch.no_grad():
        return 1 - network.score_of(network.compare(face_codes, audio_codes))


def sync_score(network, mouths, features):
    """mouths (T, m, m, 3) uint8 and features (T, A) of the same video -> SyncScore."""
    count = min(len(mouths), len(features))
    if count < MOUTH_FRAMES + 2 * MAX_OFFSET // 3:
        raise ValueError(f"{count} frames are too few to measure lip sync (it needs "
                         f"{MOUTH_FRAMES + 2 * MAX_OFFSET // 3} or more at 25 fps)")
    frames = torch.from_numpy(mouths[:count]).permute(0, 3, 1, 2).float() / 255.0   # (T, 3, m, m)
    centres = range(MOUTH_FRAMES // 2, count - MOUTH_FRAMES // 2)
    windows = torch.stack([frames[c - 2:c + 3].flatten(0, 1) for c in centres])      # (N, 15, m, m)
    pad = AUDIO_FRAMES // 2 + MAX_OFFSET
    padded = np.pad(features[:count], ((pad, pad), (0, 0)), mode="edge")
    # audio windows centred on every frame from -MAX_OFFSET before the first to +MAX_OFFSET after the last
    audio = torch.stack([torch.from_numpy(padded[c - AUDIO_FRAMES // 2 + pad: c + AUDIO_FRAMES // 2 + 1 + pad]).T
                         for c in range(-MAX_OFFSET, count + MAX_OFFSET)]).float()  # (T + 30, A, 9)
    face_codes, audio_codes = _codes(network, windows, audio)
    index = torch.tensor(list(centres))
    mean_distance = []
    for offset in range(-MAX_OFFSET, MAX_OFFSET + 1):
        mean_distance.append(float(_distance(network, face_codes, audio_codes[index + offset + MAX_OFFSET]).mean()))
    mean_distance = np.array(mean_distance)
    best = int(mean_distance.argmin())
    return SyncScore(float(mean_distance[best]), float(np.median(mean_distance) - mean_distance[best]),
                     best - MAX_OFFSET)


def video_audio_features(video_path, feature):
    """Features of a video's own audio track, one vector per 25 fps frame."""
    with tempfile.TemporaryDirectory(prefix="eval-") as folder:
        wav_path = os.path.join(folder, "audio.wav")
        extract_audio(video_path, wav_path)
        return compute_audio_feature(wav_path, feature)
