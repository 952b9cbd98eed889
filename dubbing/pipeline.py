"""Dub a video: one output frame per 40 ms of driving audio, the mouth regenerated and pasted back softly.

    source video (any fps/codec) -> 25 fps frames (on disk) -> 68-point landmarks (CSV or detected)
    driving audio -> per-frame features (the checkpoint's feature) -> 5-frame windows
    frame t of the output = source frame ping-pong(t), its DINet face crop, mouth masked, generated with
    5 reference crops and audio window t, blended back with a feathered mask, encoded H.264 + AAC.
"""
import os
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data.audio_features import FEATURE_WIDTHS, compute_audio_feature
from data.geometry import CropGeometry, compute_crop_radius, crop_box, mask_mouth
from data.landmarks import read_openface_csv
from data.video import extract_audio, write_video
from engine.checkpoint import generator_config_of, load_checkpoint, load_network
from models import DINet

from .frames import DecodedVideo

AUDIO_WINDOW = 5     # video frames of audio the generator sees, centred on the frame it makes
NUM_REFERENCES = 5
INFERENCE_SCALE = 1.05  # DINet's fixed crop scale at inference (training draws it from [1.05, 1.15))


@dataclass
class Generator:
    network: DINet
    mouth_size: int
    audio_feature: str


def load_generator(path, device, mouth_size=None):
    """The generator of a checkpoint, rebuilt from the checkpoint alone (architecture, mouth size, feature).

    DINet's published checkpoints carry no mouth size or feature name: then `mouth_size` (DINet's default
    256) is used and a 29-wide audio input means DeepSpeech.
    """
    flag = "--pretrained_clip_DINet_path"
    checkpoint = load_checkpoint(path, flag)
    config = generator_config_of(checkpoint)
    trained_size = checkpoint.get("mouth_region_size")
    if trained_size and mouth_size and trained_size != mouth_size:
        raise SystemExit(f"{flag} {path}: trained at mouth {trained_size}, but --mouth_region_size is {mouth_size}; "
                         f"drop --mouth_region_size (it is read from the checkpoint) or pass a {mouth_size} checkpoint")
    feature = checkpoint.get("audio_feature") or next(
        (name for name, width in FEATURE_WIDTHS.items() if width == config.audio_channel), None)
    network = DINet.from_config(config)
    load_network(network, checkpoint, "net_g", path, flag)
    return Generator(network.to(device).eval(), trained_size or mouth_size or 256, feature)


def load_audio_features(driving_audio_path, feature, feature_path, work_dir):
    """(T, C) features of the driving audio, computed here, or read from `feature_path` (.npy/.txt)."""
    if feature_path:
        if not os.path.isfile(feature_path):
            raise SystemExit(f"--audio_feature_path {feature_path}: no such file")
        features = np.load(feature_path) if feature_path.endswith(".npy") else np.loadtxt(feature_path)
        if features.ndim != 2 or features.shape[1] != FEATURE_WIDTHS.get(feature, features.shape[1]):
            raise SystemExit(f"--audio_feature_path {feature_path}: shape {features.shape}, but the checkpoint "
                             f"expects (frames, {FEATURE_WIDTHS.get(feature)}) {feature} features")
        return features.astype(np.float32)
    if feature == "deepspeech" or feature is None:
        raise SystemExit("this checkpoint takes DeepSpeech features, which need TensorFlow: compute them for the "
                         "driving audio elsewhere and pass --audio_feature_path FILE.npy (frames x 29, 25 per second)")
    wav_path = os.path.join(work_dir, "driving.wav")
    extract_audio(driving_audio_path, wav_path)
    return compute_audio_feature(wav_path, feature)


def ping_pong(num_source, num_output):
    """DINet's alignment of video to audio: the source forwards then backwards, repeated, cut to length."""
    cycle = np.concatenate([np.arange(num_source), np.arange(num_source)[::-1]])
    return np.resize(cycle, num_output)


def paste_mask(geometry):
    """(H, W) float32 weights of the generated crop: 1 over the mouth hole, fading to 0 well inside the crop
    border (a Gaussian edge), so no box edge or colour step shows in the output."""
    mask = np.zeros((geometry.height, geometry.width), np.float32)
    mask[geometry.mouth_rows, geometry.mouth_cols] = 1
    sigma = geometry.mouth_size / 32  # 3 sigma < the m/8 margin between the hole and the crop border
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def crop_radii(landmarks, video_size):
    """Per output frame, DINet's crop radius over its 5-frame landmark window (None where no crop fits)."""
    padded = np.pad(landmarks, ((2, 2), (0, 0), (0, 0)), mode="edge")
    radii = []
    for t in range(len(landmarks)):
        radius = compute_crop_radius(video_size, padded[t:t + AUDIO_WINDOW], random_scale=INFERENCE_SCALE)
        if radius is None:  # the face size jumps within the window: fall back to this frame alone
            radius = compute_crop_radius(video_size, landmarks[t:t + 1], random_scale=INFERENCE_SCALE)
        radii.append(radius)
    return radii


def face_crop(frame, landmarks, radius, geometry):
    """The DINet face crop resized to the geometry, and its box in the frame."""
    box = crop_box(landmarks, radius)
    top, bottom, left, right = box
    crop = frame[top:bottom, left:right]
    return cv2.resize(crop, (geometry.width, geometry.height), interpolation=cv2.INTER_AREA), box


def to_batch(images):
    """list of (H, W, C) uint8 -> (B, C, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


@dataclass
class DubResult:
    output_path: str
    frames: int
    passed_through: int
    face_video_path: str = None


def dub(source_video_path, driving_audio_path, generator, output_path, device, landmark_csv=None,
        audio_feature_path=None, batch_size=8, face_video_path=None, seed=0, amp=None, landmark_detector=None):
    geometry = CropGeometry(generator.mouth_size)
    with tempfile.TemporaryDirectory(prefix="dub-") as work_dir:
        features = load_audio_features(driving_audio_path, generator.audio_feature, audio_feature_path, work_dir)
        if len(features) < AUDIO_WINDOW:
            raise SystemExit(f"{driving_audio_path}: {len(features) * 40} ms of audio; dubbing needs at least "
                             f"{AUDIO_WINDOW * 40} ms ({AUDIO_WINDOW} video frames)")
        video = DecodedVideo(source_video_path)
        try:
            landmarks = _landmarks(video, landmark_csv, source_video_path, landmark_detector)
            index = ping_pong(len(video), len(features))
            radii = crop_radii(landmarks[index], video.size)
            usable = [t for t, radius in enumerate(radii) if radius is not None]
            if not usable:
                raise SystemExit(f"{source_video_path}: the face crop leaves the frame in every frame; "
                                 f"use a video with the whole lower face inside the picture")
            rng = np.random.default_rng(seed)
            reference_ids = rng.choice(usable, size=NUM_REFERENCES, replace=len(usable) < NUM_REFERENCES)
            references = np.concatenate(
                [face_crop(video.frames[index[t]], landmarks[index[t]], radii[t], geometry)[0] for t in reference_ids],
                axis=2)
            reference_batch = to_batch([references]).to(device)  # (1, 15, H, W)
            padded_features = np.pad(features, ((2, 2), (0, 0)), mode="edge")
            frames = _generate(video, landmarks, index, radii, padded_features, generator, geometry, reference_batch,
                               device, batch_size, amp, face_video_path is not None)
            face_frames = []
            if face_video_path:
                frames = _tee_faces(frames, face_frames)
            write_video(output_path, frames, fps=25, audio_path=driving_audio_path)
            if face_video_path:
                write_video(face_video_path, face_frames, fps=25, audio_path=driving_audio_path)
            passed = len(radii) - len(usable)
        finally:
            video.close()
    return DubResult(output_path, len(features), passed, face_video_path)


def _landmarks(video, landmark_csv, source_video_path, landmark_detector):
    if landmark_csv:
        landmarks = read_openface_csv(landmark_csv)
        if len(landmarks) != len(video):
            raise SystemExit(f"--source_openface_landmark_path {landmark_csv}: {len(landmarks)} rows for {len(video)} "
                             f"frames at 25 fps; run the landmark step on the same 25 fps video, or drop the flag")
        return landmarks
    if landmark_detector is None:
        from data.face_landmarks import detect_landmarks as landmark_detector
    landmarks, found = landmark_detector(video.frames)
    if not found.any():
        raise SystemExit(f"{source_video_path}: no face found in any frame; use a video with one visible, "
                         f"frontal face")
    return landmarks


def _tee_faces(frames, face_frames):
    for frame, face in frames:
        face_frames.append(face)
        yield frame


def _generate(video, landmarks, index, radii, padded_features, generator, geometry, reference_batch, device,
              batch_size, amp, with_faces):
    """Yields output frames (H, W, 3) uint8 in order, or (frame, generated face) pairs when with_faces."""
    mask = paste_mask(geometry)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
    for start in tqdm(range(0, len(index), batch_size), desc="dubbing", unit="batch"):
        batch = [t for t in range(start, min(start + batch_size, len(index))) if radii[t] is not None]
        crops = {}
        for t in batch:
            crops[t] = face_crop(video.frames[index[t]], landmarks[index[t]], radii[t], geometry)
        generated = {}
        if batch:
            masked = to_batch([mask_mouth(crops[t][0], geometry) for t in batch]).to(device)
            audio = torch.from_numpy(np.stack([padded_features[t:t + AUDIO_WINDOW].T for t in batch])).float()
            with torch.no_grad(), autocast:
                out = generator.network(masked, reference_batch.expand(len(batch), -1, -1, -1), audio.to(device))
            out = (out.float().clamp(0, 1) * 255).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
            generated = dict(zip(batch, out))
        for t in range(start, min(start + batch_size, len(index))):
            frame = np.array(video.frames[index[t]])
            face = None
            if t in generated:
                face = generated[t]
                top, bottom, left, right = crops[t][1]
                size = (right - left, bottom - top)
                weight = cv2.resize(mask, size)[..., None]
                region = frame[top:bottom, left:right].astype(np.float32)
                blended = weight * cv2.resize(face, size) + (1 - weight) * region
                frame[top:bottom, left:right] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
                face = face.astype(np.uint8)
            elif with_faces:
                face = np.zeros((geometry.height, geometry.width, 3), np.uint8)
            yield (frame, face) if with_faces else frame
