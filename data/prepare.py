"""DINet's data preparation, step by step, over DINet's directory layout:

    split_video_25fps/<video>.mp4                        talking-head videos at 25 fps, with speech
    split_video_25fps_landmark_openface/<video>.csv      68-point landmarks per frame (OpenFace CSV)
    split_video_25fps_frame/<video>/000000.jpg ...       extract_video_frames
    split_video_25fps_audio/<video>.wav                  extract_audio (mono, 16 kHz)
    split_video_25fps_<feature>/<video>_<feature>.npy    extract_audio_features, (T, C) per video frame
    split_video_25fps_crop_face/<video>/<clip>/<frame>.jpg   crop_faces, 9-frame clips at native size
    training_json.json                                   generate_training_json

The per-video steps skip an output that exists and is newer than its inputs; the JSON, an index of
everything, is rebuilt each time. Every output is written under a temporary name first, so an
interrupted run can simply be started again.
"""
import glob
import json
import os
import zlib

import cv2
import numpy as np
from tqdm import tqdm

from .audio_features import FEATURE_WIDTHS, compute_audio_feature
from .geometry import compute_crop_radius, crop_box
from .landmarks import read_openface_csv
from .video import atomic_output, extract_audio as extract_wav, extract_frames

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi")
JSON_DECIMALS = 4  # audio vectors are stored as JSON text: 4 decimals keeps real-size JSONs manageable


def _require_dir(path, fix):
    if not os.path.isdir(path):
        raise SystemExit(f"{path}: directory not found; {fix}")


def _listed(folder, extensions):
    """{name without extension: path} of the non-hidden files in `folder` with one of `extensions`."""
    return {os.path.splitext(name)[0]: os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if not name.startswith(".") and name.lower().endswith(extensions)}


def _is_fresh(output, *inputs):
    """Whether `output` exists and was written after every input (a rerun then skips it)."""
    return os.path.exists(output) and all(os.path.getmtime(output) >= os.path.getmtime(i) for i in inputs)


def _source_videos(source_video_dir):
    _require_dir(source_video_dir, "pass --source_video_dir, the folder of 25 fps talking-head .mp4 videos")
    videos = _listed(source_video_dir, VIDEO_EXTENSIONS)
    if not videos:
        raise SystemExit(f"{source_video_dir}: no videos ({', '.join(VIDEO_EXTENSIONS)}) found; put the videos there")
    return videos


def _frame_paths(folder):
    return sorted(glob.glob(os.path.join(folder, "*.jpg")))


def extract_video_frames(source_video_dir, frame_dir, fps=25):
    """Every video -> frame_dir/<video>/000000.jpg ..., resampled to 25 fps."""
    for name, video_path in tqdm(_source_videos(source_video_dir).items(), desc="extract frames", unit="video"):
        output = os.path.join(frame_dir, name)
        if not _is_fresh(output, video_path):
            extract_frames(video_path, output, fps=fps)


def extract_audio(source_video_dir, audio_dir):
    """Every video -> audio_dir/<video>.wav, mono 16 kHz."""
    for name, video_path in tqdm(_source_videos(source_video_dir).items(), desc="extract audio", unit="video"):
        output = os.path.join(audio_dir, name + ".wav")
        if not _is_fresh(output, video_path):
            extract_wav(video_path, output)


def feature_path(feature_dir, video_name, feature_name):
    return os.path.join(feature_dir, f"{video_name}_{feature_name}.npy")


def extract_audio_features(audio_dir, feature_dir, name):
    """Every wav -> feature_dir/<video>_<name>.npy, (T, FEATURE_WIDTHS[name]) float32, one row per video frame."""
    _require_dir(audio_dir, "extract the audio first (`python data_processing.py --extract_audio`)")
    wavs = _listed(audio_dir, (".wav",))
    os.makedirs(feature_dir, exist_ok=True)
    for video_name, wav_path in tqdm(wavs.items(), desc=f"{name} features", unit="video"):
        output = feature_path(feature_dir, video_name, name)
        if _is_fresh(output, wav_path):
            continue
        features = compute_audio_feature(wav_path, name)  # (T, C)
        with atomic_output(output) as partial, open(partial, "wb") as f:
            np.save(f, features)


def crop_faces(landmark_dir, frame_dir, crop_dir, clip_length=9, seed=0):
    """Cut each video into clips of `clip_length` frames and crop DINet's face box from each frame.

    Clip i covers frames [9i, 9i + 9) for the clip ends range(9, n_frames, 9), as in DINet. A clip is
    skipped when its crop would leave the frame or the face size changes by more than 1.5x within it.
    The crop radius is scaled by a random 1.05..1.15 per clip (DINet's augmentation), drawn from a
    generator seeded by `seed` and the video name, so crops are reproducible and do not depend on
    which other videos are present.
    """
    _require_dir(landmark_dir, "run OpenFace FeatureExtraction on each video and put its <video>.csv there")
    _require_dir(frame_dir, "extract frames first (`python data_processing.py --extract_video_frame`)")
    for name, csv_path in tqdm(_listed(landmark_dir, (".csv",)).items(), desc="crop faces", unit="video"):
        video_frames = os.path.join(frame_dir, name)
        output = os.path.join(crop_dir, name)
        if not os.path.isdir(video_frames):
            raise SystemExit(f"{video_frames}: no frames for {csv_path}; extract frames first "
                             f"(`python data_processing.py --extract_video_frame`)")
        if _is_fresh(output, csv_path, video_frames):
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        with atomic_output(output) as partial:
            os.makedirs(partial)
            _crop_video(csv_path, _frame_paths(video_frames), partial, clip_length, rng)


def _crop_video(csv_path, frame_paths, output_dir, clip_length, rng):
    landmarks = read_openface_csv(csv_path).astype(int)  # (T, 68, 2); DINet crops from integer landmarks
    if len(frame_paths) != len(landmarks):
        raise SystemExit(f"{csv_path}: {len(landmarks)} landmark rows but {len(frame_paths)} frames in "
                         f"{os.path.dirname(frame_paths[0]) if frame_paths else 'the frame directory'}; run "
                         f"OpenFace on the same 25 fps video the frames came from")
    if not frame_paths:
        return
    frame_h, frame_w = cv2.imread(frame_paths[0]).shape[:2]
    for clip_index, end in enumerate(range(clip_length, len(frame_paths), clip_length)):
        start = end - clip_length
        radius = compute_crop_radius((frame_w, frame_h), landmarks[start:end], rng=rng)
        if radius is None:
            continue
        clip_dir = os.path.join(output_dir, f"{clip_index:06d}")
        os.makedirs(clip_dir)
        for frame_index in range(start, end):
            top, bottom, left, right = crop_box(landmarks[frame_index], radius)
            face_crop = cv2.imread(frame_paths[frame_index])[top:bottom, left:right]  # (3r + r/4, 2r + r/2, 3)
            cv2.imwrite(os.path.join(clip_dir, f"{frame_index:06d}.jpg"), face_crop)


def generate_training_json(crop_dir, feature_dir, feature_name, json_path, clip_length=9):
    """Index every cropped clip with its per-frame audio vectors in DINet's training JSON.

    {video: {"video_clip_num": n, "clip_data_list": [{"frame_name_list": [9 x "video/clip/frame.jpg"],
    "frame_path_list": [9 paths, relative to the JSON's directory], "deep_speech_list": [9 vectors]}],
    "audio_feature": feature_name, "audio_channel": C}}. DINet's key `deep_speech_list` holds whatever
    the feature is. Returns json_path.
    """
    _require_dir(crop_dir, "crop faces first (`python data_processing.py --crop_face`)")
    json_dir = os.path.dirname(os.path.abspath(json_path))
    training_data = {}
    video_names = sorted(name for name in os.listdir(crop_dir)
                         if not name.startswith(".") and os.path.isdir(os.path.join(crop_dir, name)))
    for video_name in tqdm(video_names, desc="training json", unit="video"):
        features = _load_feature(feature_dir, video_name, feature_name)  # (T, C)
        clips = _clip_entries(os.path.join(crop_dir, video_name), video_name, features, clip_length, json_dir)
        if not clips:
            tqdm.write(f"{video_name}: no usable {clip_length}-frame clip, left out of {json_path}")
            continue
        training_data[video_name] = {"video_clip_num": len(clips), "clip_data_list": clips,
                                     "audio_feature": feature_name, "audio_channel": int(features.shape[1])}
    if not training_data:
        raise SystemExit(f"{crop_dir}: no cropped clips to index; check the landmarks and rerun --crop_face")
    with atomic_output(json_path) as partial, open(partial, "w") as f:
        json.dump(training_data, f)
    return json_path


def _load_feature(feature_dir, video_name, feature_name):
    path = feature_path(feature_dir, video_name, feature_name)
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: audio features not found; make them with `python data_processing.py "
                         f"--extract_audio_feature --audio_feature {feature_name}`")
    features = np.load(path)
    expected = FEATURE_WIDTHS.get(feature_name)
    if features.ndim != 2 or (expected is not None and features.shape[1] != expected):
        raise SystemExit(f"{path}: expected (T, {expected}) {feature_name} features, got {features.shape}; "
                         f"delete it and extract the features again")
    return features


def _clip_entries(video_crop_dir, video_name, features, clip_length, json_dir):
    """DINet's clip_data_list for one video's crop directory; clips the features do not cover are left out."""
    entries = []
    for clip_name in sorted(os.listdir(video_crop_dir)):
        clip_dir = os.path.join(video_crop_dir, clip_name)
        frame_paths = _frame_paths(clip_dir)
        start = int(clip_name) * clip_length
        first = int(os.path.splitext(os.path.basename(frame_paths[0]))[0]) if frame_paths else None
        if len(frame_paths) != clip_length or first != start:
            raise SystemExit(f"{clip_dir}: expected frames {start}..{start + clip_length - 1}; "
                             f"delete {video_crop_dir} and rerun --crop_face")
        audio = features[start:start + clip_length]  # (9, C)
        if len(audio) != clip_length:
            tqdm.write(f"{video_name} clip {clip_name}: audio features end at frame {len(features)}, clip left out")
            continue
        entries.append({
            "frame_name_list": [f"{video_name}/{clip_name}/{os.path.basename(p)}" for p in frame_paths],
            "frame_path_list": [os.path.relpath(p, json_dir) for p in frame_paths],
            "deep_speech_list": np.round(audio.astype(np.float64), JSON_DECIMALS).tolist(),
        })
    return entries
