"""LSE-D and LSE-C, as SyncNet evaluations compute them (Chung & Zisserman; Wav2Lip's and LatentSync's tables).

For every 5-frame mouth window of a video and every audio offset in -15..+15 frames, a distance between
the mouths and the audio window shifted by the offset; each offset's distances are averaged over the video.
LSE-D is the smallest of those means (lower is better), LSE-C the median minus the smallest (the
confidence that the best offset stands out; higher is better), and the offset of the minimum is the
estimated audio-video lag (positive: the audio comes late; syncnet_python prints it with the opposite sign).

Two SyncNets: one of this repository (`sync_score`: DINet's mouth crop at the SyncNet's mouth size, the
features it was trained on; distance: for an embedding SyncNet, the Euclidean distance of the L2-normalised
face and audio codes, for DINet's score-map SyncNet 1 - its sync score), and the one the metrics were defined
with, syncnet_python's syncnet_v2 (`syncnet_v2_score`: its 224x224 face crops, 13 MFCCs at 100 per second,
windows starting at every frame, the Euclidean distance of the raw codes), so its numbers compare with papers'.
"""
import os
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np
import python_speech_features
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter
from tqdm import tqdm

from common.geometry import AUDIO_FRAMES, MOUTH_FRAMES, CropGeometry
from data.audio_features import SAMPLE_RATE, compute_audio_feature, load_wav
from dubbing.pipeline import crop_radii, face_crop
from media.convert import extract_audio
from models.lse_syncnet import AUDIO_STEPS, FACE_SIDE, LIP_FRAMES, MFCC_PER_FRAME
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


def _device(network):
    """Where `network` computes (the CPU for one without weights)."""
    return next(network.parameters(), torch.empty(0)).device


def _codes(network, mouths, audio, batch=64):
    """Face codes (N, D, h, w) for mouth windows (N, 15, m, m) and audio codes (M, D) for audio windows (M, A, 9)."""
    face_codes, audio_codes = [], []
    device = _device(network)
    with torch.no_grad():
        for start in range(0, len(mouths), batch):
            chunk, _ = network.prepare(mouths[start:start + batch].to(device), audio[:1].to(device))
            face_codes.append(network.face_encoder(chunk))
        for start in range(0, len(audio), batch):
            _, chunk = network.prepare(mouths[:1].to(device), audio[start:start + batch].to(device))
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


def check_length(count):
    """Raise ValueError when `count` frames are too few for the offset search to mean anything."""
    if count < MOUTH_FRAMES + 2 * MAX_OFFSET // 3:
        raise ValueError(f"{count} frames are too few to measure lip sync (it needs "
                         f"{MOUTH_FRAMES + 2 * MAX_OFFSET // 3} or more at 25 fps)")


def score_over_offsets(face_codes, audio_codes, distance):
    """SyncScore of N face windows' codes against N + 2 * MAX_OFFSET audio windows' codes, audio_codes[i + MAX_OFFSET
    + k] being the audio k frames after face window i: per offset k the mean of distance(face, audio) -> (N,) over
    the windows; LSE-D the least mean, LSE-C the median less it, offset its k."""
    index = torch.arange(len(face_codes), device=face_codes.device)
    with torch.no_grad():
        mean_distance = np.array([float(distance(face_codes, audio_codes[index + MAX_OFFSET + offset]).mean())
                                  for offset in range(-MAX_OFFSET, MAX_OFFSET + 1)])
    best = int(mean_distance.argmin())
    return SyncScore(float(mean_distance[best]), float(np.median(mean_distance) - mean_distance[best]),
                     best - MAX_OFFSET)


def sync_score(network, mouths, features):
    """mouths (T, m, m, 3) uint8 and features (T, A) of the same video -> SyncScore, with a SyncNet of this
    repository."""
    count = min(len(mouths), len(features))
    check_length(count)
    frames = torch.from_numpy(mouths[:count]).permute(0, 3, 1, 2).float() / 255.0   # (T, 3, m, m)
    half = MOUTH_FRAMES // 2
    windows = torch.stack([frames[c - half:c + half + 1].flatten(0, 1) for c in range(half, count - half)])
    pad = AUDIO_FRAMES // 2 + MAX_OFFSET
    padded = np.pad(features[:count], ((pad, pad), (0, 0)), mode="edge")
    # audio windows centred on every frame from MAX_OFFSET before the first window's centre to MAX_OFFSET after
    # the last's
    audio = torch.stack([torch.from_numpy(padded[c - AUDIO_FRAMES // 2 + pad: c + AUDIO_FRAMES // 2 + 1 + pad]).T
                         for c in range(half - MAX_OFFSET, count - half + MAX_OFFSET)]).float()  # (N + 30, A, 9)
    face_codes, audio_codes = _codes(network, windows, audio)
    return score_over_offsets(face_codes, audio_codes, lambda face, audio: _distance(network, face, audio))


# syncnet_python's face crop: its detector's box (half-size s) smoothed over 13 frames, widened by crop_scale 0.4 to
# the sides and below: a square from s above the box's centre to 1.8 s below, 1.4 s to each side; grey 110 outside
# the frame
CROP_SCALE, TRACK_SMOOTHING, OUTSIDE = 0.4, 13, 110


def _region(frame, top, bottom, left, right, fill):
    """frame[top:bottom, left:right], with `fill` where the box leaves the frame."""
    height, width = frame.shape[:2]
    region = np.full((bottom - top, right - left, 3), fill, np.uint8)
    t, b, l, r = max(top, 0), min(bottom, height), max(left, 0), min(right, width)
    if t < b and l < r:
        region[t - top:b - top, l - left:r - left] = frame[t:b, l:r]
    return region


def syncnet_v2_faces(frames, landmarks):
    """(T, 224, 224, 3) BGR uint8 face crops as syncnet_python makes them, from (T, H, W, 3) RGB frames, with the
    box of each frame's 68 landmarks where syncnet_python has its own face detector's."""
    low, high = landmarks.min(axis=1), landmarks.max(axis=1)                             # (T, 2) x, y
    half = median_filter((high - low).max(axis=1) / 2, TRACK_SMOOTHING, mode="nearest")  # (T,)
    centre = median_filter((low + high) / 2, (TRACK_SMOOTHING, 1), mode="nearest")      # (T, 2)
    faces = np.empty((len(frames), FACE_SIDE, FACE_SIDE, 3), np.uint8)
    for t, (frame, (x, y), size) in enumerate(zip(frames, centre, half)):
        top, bottom = int(y - size), int(y + size * (1 + 2 * CROP_SCALE))
        left, right = int(x - size * (1 + CROP_SCALE)), int(x + size * (1 + CROP_SCALE))
        faces[t] = cv2.resize(_region(frame, top, bottom, left, right, OUTSIDE), (FACE_SIDE, FACE_SIDE))[..., ::-1]
    return faces


def speech_mfcc(wav_path):
    """(13, S) MFCCs at 100 per second of a wav, as syncnet_python computes them (python_speech_features' defaults
    on 16 kHz 16-bit samples), and the audio's length in 25 fps frames."""
    wav = load_wav(wav_path) * 32768.0
    return python_speech_features.mfcc(wav, SAMPLE_RATE).T, len(wav) // (SAMPLE_RATE // 25)


def syncnet_v2_score(network, faces, mfcc, audio_frames, batch=20, progress=False):
    """faces (T, 224, 224, 3) BGR uint8 (`syncnet_v2_faces`), mfcc (13, S) and the audio's length in frames
    (`speech_mfcc`) -> SyncScore with syncnet_python's SyncNet (models/lse_syncnet.py), as its SyncNetInstance
    evaluates: a window of 5 frames and the 20 MFCC steps under them from every frame but the last 5, each
    window's lip code against the audio codes of windows up to 15 before and after (zero codes past the ends)."""
    count = min(len(faces), audio_frames)
    check_length(count)
    windows = count - LIP_FRAMES
    if mfcc.shape[1] < MFCC_PER_FRAME * windows + AUDIO_STEPS:
        mfcc = np.pad(mfcc, ((0, 0), (0, MFCC_PER_FRAME * windows + AUDIO_STEPS - mfcc.shape[1])), mode="edge")
    device = _device(network)
    lip_codes, audio_codes = [], []
    with torch.no_grad():
        for start in tqdm(range(0, windows, batch), desc="LSE syncnet_v2", unit="batch", leave=False,
                          disable=not progress):
            starts = range(start, min(start + batch, windows))
            lips = torch.from_numpy(np.stack([faces[i:i + LIP_FRAMES] for i in starts])).to(device)
            lip_codes.append(network.forward_lip(lips.permute(0, 4, 1, 2, 3).float()))  # (B, 3, 5, 224, 224)
            audio = np.stack([mfcc[None, :, i * MFCC_PER_FRAME:i * MFCC_PER_FRAME + AUDIO_STEPS] for i in starts])
            audio_codes.append(network.forward_aud(torch.from_numpy(audio).float().to(device)))  # (B, 1, 13, 20)
    audio_codes = F.pad(torch.cat(audio_codes), (0, 0, MAX_OFFSET, MAX_OFFSET))
    return score_over_offsets(torch.cat(lip_codes), audio_codes, F.pairwise_distance)


def _from_audio_track(video_path, read):
    """read(wav path) of a video's own audio track, extracted as 16 kHz mono."""
    with tempfile.TemporaryDirectory(prefix="eval-") as folder:
        wav_path = os.path.join(folder, "audio.wav")
        extract_audio(video_path, wav_path)
        return read(wav_path)


def video_audio_features(video_path, feature):
    """Features of a video's own audio track, one vector per 25 fps frame."""
    return _from_audio_track(video_path, lambda wav_path: compute_audio_feature(wav_path, feature))


def video_mfcc(video_path):
    """`speech_mfcc` of a video's own audio track."""
    return _from_audio_track(video_path, speech_mfcc)
