"""DINet's data preparation, step by step, over DINet's directory layout:

    <source_video_dir>/<video>.*                          talking-head videos with speech (any rate, any container)
    split_video_25fps/<video>.mp4                         the videos resampled to 25 fps (25 fps .mp4s are used in place)
    split_video_25fps_frame/<video>/000000.jpg ...        extract_video_frame
    split_video_25fps_audio/<video>.wav                   extract_audio (mono, 16 kHz)
    split_video_25fps_<feature>/<video>_<feature>.npy     extract_audio_feature, (T, C), one row per video frame
    split_video_25fps_landmark_openface/<video>.csv       OpenFace's 68-point landmarks, used when present
    split_video_25fps_landmark/<video>.csv                detect_landmarks: the bundled detector's, same format
    split_video_25fps_crop_face/<video>/<clip>/<frame>.jpg    crop_face, 9-frame clips at native size
    split_video_25fps_landmark_debug/<video>/<frame>.jpg  debug_draw: the 68 points and the crop, to look at
    training_json.json                                    generate_training_json

`prepare_videos` runs the chosen per-video steps on every video, in a process pool when workers > 1. A
video that cannot be used raises `SkipVideo` (or a step's UserError) with a one-line reason: it goes in
the report, its crops are removed so no index lists it, and the other videos go on. A write that fails (a full
disk, a folder that cannot be written) stops the whole run with one line naming the output. Each output is
skipped when it exists and is newer than its inputs, and is written under a temporary name first, so an
interrupted run can simply be started again. The JSON, an index of every crop, is rebuilt each time.
"""
import glob
import json
import multiprocessing
import os
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from common.errors import UserError
from common.files import NotWritten, atomic_output
from common.geometry import CLIP_LENGTH, NUM_REFERENCES, CropGeometry, compute_crop_radius, crop_box, sizing_frames
from media.convert import extract_audio as extract_wav, extract_frames, resample_video
from media.decoder import read_video_frames
from media.ffmpeg import probe, squeezed

from .audio_features import FEATURE_WIDTHS, compute_audio_feature, deepspeech_sources, read_array, read_deepspeech
from .openface_csv import read_openface_csv, write_openface_csv
from .training_json import climbs_out

FPS = 25
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".wmv")
JSON_DECIMALS = 4  # audio vectors are stored as JSON text: 4 decimals keeps real-size JSONs manageable
# The per-video steps, in the order they run (each reads what the ones before it wrote).
VIDEO_STEPS = ("extract_video_frame", "extract_audio", "extract_audio_feature", "detect_landmarks", "crop_face",
               "debug_draw")
STEPS_READING_VIDEO = {"extract_video_frame", "extract_audio", "detect_landmarks"}
MIN_CLIPS_FOR_TRAINING = NUM_REFERENCES + 1  # the frame dataset draws a source and its references' clips from one video
DEBUG_FRAMES_PER_VIDEO = 4
UPRIGHT_SAMPLES = 8  # frames spread over a video in which most faces must be upright, and one face alone in most
DEBUG_MOUTH_SIZE = 256  # debug crops are shown at the finest training geometry


class SkipVideo(Exception):
    """A video that cannot be used; the message is the one-line reason, naming the file and the fix."""


class NotPrepared(SkipVideo):
    """A step's input, written by an earlier step, is missing: the earlier step was not run, or skipped the video."""


@dataclass(frozen=True)
class Layout:
    """Where the steps read and write: DINet's directory flags."""
    source_video_dir: str
    split_video_dir: str
    frame_dir: str
    audio_dir: str
    feature_dir: str
    openface_landmark_dir: str
    landmark_dir: str
    crop_dir: str
    debug_draw_dir: str
    deepspeech_dir: Optional[str] = None  # DeepSpeech features made elsewhere; default: feature_dir

    @classmethod
    def under(cls, root, audio_feature="mel", source_video_dir=None):
        """DINet's folder names under `root` (./asserts/training_data by default)."""
        split = os.path.join(root, "split_video_25fps")
        return cls(source_video_dir=source_video_dir or split, split_video_dir=split, frame_dir=split + "_frame",
                   audio_dir=split + "_audio", feature_dir=f"{split}_{audio_feature}",
                   openface_landmark_dir=split + "_landmark_openface", landmark_dir=split + "_landmark",
                   crop_dir=split + "_crop_face", debug_draw_dir=split + "_landmark_debug")


@dataclass(frozen=True)
class Settings:
    audio_feature: str = "mel"
    clip_length: int = CLIP_LENGTH  # frames per training clip
    seed: int = 0                   # of the crop-scale jitter
    min_face_fraction: float = 0.9  # a video with a face in fewer of its frames is skipped


@dataclass
class VideoReport:
    """What happened to one video: filled in by the steps that ran."""
    name: str
    skipped: Optional[str] = None
    frames: Optional[int] = None
    face_fraction: Optional[float] = None
    landmark_source: Optional[str] = None  # "detected" or "openface"
    clips: Optional[int] = None
    possible_clips: Optional[int] = None
    seconds: float = 0.0

    def line(self):
        if self.skipped:
            return f"  {self.name}: skipped: {self.skipped}"
        parts = [f"{self.frames} frames" if self.frames is not None else None,
                 f"face in {100 * self.face_fraction:.1f}% ({self.landmark_source})"
                 if self.face_fraction is not None else None,
                 f"{self.clips}/{self.possible_clips} clips" if self.clips is not None else None,
                 f"{self.seconds:.1f} s"]
        note = (f" (frame training needs {MIN_CLIPS_FOR_TRAINING}+ clips per video)"
                if self.clips is not None and self.clips < MIN_CLIPS_FOR_TRAINING else "")
        return f"  {self.name}: " + ", ".join(part for part in parts if part) + note


# ---------------------------------------------------------------- helpers

def _require_dir(path, fix):
    if not os.path.isdir(path):
        raise UserError(f"{path}: directory not found; {fix}")


def _is_fresh(output, *inputs):
    """Whether `output` exists and was written after every input (a rerun then skips it)."""
    return os.path.exists(output) and all(os.path.getmtime(output) >= os.path.getmtime(i) for i in inputs)


def _frame_paths(folder):
    return sorted(glob.glob(os.path.join(folder, "*.jpg")))


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)


def _write_jpg(path, image):
    """cv2.imwrite returns False on a failed write and says nothing of why: encode here and write the bytes, so a
    full disk or a folder that cannot be written raises (atomic_output turns it into one line naming the output)."""
    encoded, data = cv2.imencode(".jpg", image)
    if not encoded:
        raise UserError(f"{path}: OpenCV could not encode this {image.shape} image")
    with open(path, "wb") as f:
        f.write(data)


def list_videos(source_video_dir, copies_beside=False):
    """({name: path}, [(path, kept path)]) of the videos in `source_video_dir`: where two share a name, the .mp4
    is prepared and the others are left out, to be reported unless `copies_beside` (resampled copies are written
    into this folder, so the .mp4 is the copy of the other)."""
    _require_dir(source_video_dir, "pass --source_video_dir, the folder of talking-head videos")
    named = {}
    for name in sorted(os.listdir(source_video_dir)):
        stem, extension = os.path.splitext(name)
        if not name.startswith(".") and extension.lower() in VIDEO_EXTENSIONS:
            named.setdefault(stem, []).append(os.path.join(source_video_dir, name))
    if not named:
        raise UserError(f"{source_video_dir}: no videos ({', '.join(VIDEO_EXTENSIONS)}) found; put the videos there")
    videos = {stem: next((path for path in paths if path.lower().endswith(".mp4")), paths[0])
              for stem, paths in named.items()}
    left_out = [] if copies_beside else [(path, videos[stem]) for stem, paths in named.items() for path in paths
                                         if path != videos[stem]]
    return videos, left_out


def feature_path(feature_dir, video_name, feature_name):
    return os.path.join(feature_dir, f"{video_name}_{feature_name}.npy")


def landmark_csv(video_name, layout):
    """(path, "openface") of OpenFace's CSV for the video when there is one, else (path, "detected") of the
    bundled detector's."""
    openface = os.path.join(layout.openface_landmark_dir, video_name + ".csv")
    if os.path.isfile(openface):
        return openface, "openface"
    return os.path.join(layout.landmark_dir, video_name + ".csv"), "detected"


# ---------------------------------------------------------------- the per-video steps

def check_source(source_path, settings):
    """probe's facts of the video; skips one that is unreadable, has no audio, non-square pixels or is too short for
    one clip."""
    info = probe(source_path)  # UserError for an unreadable file
    if not info["has_video"]:
        raise SkipVideo(f"{source_path}: no video stream; remove it from the video folder")
    if not info["has_audio"]:
        raise SkipVideo(f"{source_path}: no audio stream, and training needs each video's speech; mux it in "
                        f"(ffmpeg -i video -i speech.wav -c:v copy -c:a aac out.mp4)")
    if not info["square_pixels"]:
        raise SkipVideo(squeezed(source_path, info))
    if info["duration"] is not None and info["duration"] * FPS < settings.clip_length + 1:
        raise SkipVideo(f"{source_path}: {info['duration']:.2f} s, too short for one {settings.clip_length}-frame "
                        f"clip; use videos of a second or more")
    return info


def video_at_25fps(name, source_path, layout, settings):
    """The 25 fps mp4 the other steps read: the source itself when it is one, else a copy resampled into
    split_video_dir (check_source first)."""
    info = check_source(source_path, settings)
    if info["fps"] == FPS and source_path.lower().endswith(".mp4"):
        return source_path
    output = os.path.join(layout.split_video_dir, name + ".mp4")
    if os.path.abspath(output) == os.path.abspath(source_path):
        raise SkipVideo(f"{source_path}: {info['fps']} fps in the 25 fps folder; put the original videos in "
                        f"another folder and pass it as --source_video_dir, they are resampled into this one")
    if not _is_fresh(output, source_path):
        resample_video(source_path, output, fps=FPS)
    return output


def _extract_frames(video_path, frame_dir, settings):
    if not _is_fresh(frame_dir, video_path):
        extract_frames(video_path, frame_dir, fps=FPS)
    count = len(_frame_paths(frame_dir))
    if count < settings.clip_length + 1:  # DINet's clip ends are range(9, count, 9)
        raise SkipVideo(f"{video_path}: {count} frames, too short for one {settings.clip_length}-frame clip")
    return count


def _extract_audio(video_path, wav_path):
    if not _is_fresh(wav_path, video_path):
        extract_wav(video_path, wav_path)


def _extract_feature(name, layout, settings):
    """wav -> (T, C) features; DeepSpeech ones are read from deepspeech_dir (made elsewhere) instead."""
    output = feature_path(layout.feature_dir, name, settings.audio_feature)
    if settings.audio_feature == "deepspeech":
        source_dir = layout.deepspeech_dir or layout.feature_dir
        source = next((path for path in deepspeech_sources(source_dir, name) if os.path.isfile(path)), None)
        if source is not None and (os.path.abspath(source) == os.path.abspath(output) or _is_fresh(output, source)):
            return
        features = read_deepspeech(source_dir, name)  # UserError naming the file when absent or malformed
    else:
        wav_path = os.path.join(layout.audio_dir, name + ".wav")
        if not os.path.isfile(wav_path):
            raise NotPrepared(f"{wav_path}: no audio extracted; run `python data_processing.py --extract_audio` first")
        if _is_fresh(output, wav_path):
            return
        features = compute_audio_feature(wav_path, settings.audio_feature)  # (T, C)
    with atomic_output(output) as partial, open(partial, "wb") as f:
        np.save(f, features)


def _detect_landmarks(name, video_path, layout, progress):
    """Run the bundled detector unless OpenFace's CSV (or a fresh detected one) exists."""
    csv_path, source = landmark_csv(name, layout)
    if source == "openface" or _is_fresh(csv_path, video_path):
        return
    # mediapipe only when it is needed
    from .landmark_detector import SEVERAL_FACES_SHARE, count_faces, detect_landmarks, not_upright
    expected = round((probe(video_path)["duration"] or 0) * FPS) or None
    frames = tqdm(read_video_frames(video_path, fps=FPS), total=expected, desc=f"{name} landmarks", unit="frame",
                  leave=False, disable=not progress)
    every, looked_at = max(1, expected // UPRIGHT_SAMPLES) if expected else 10 * FPS, {}  # frames apart, and kept

    def keeping_some(frames):  # a few frames to check, later, that the face is upright
        for index, frame in enumerate(frames):
            if index % every == 0 and len(looked_at) < UPRIGHT_SAMPLES:
                looked_at[index] = frame
            yield frame
    landmarks, found = detect_landmarks(keeping_some(frames))  # (T, 68, 2), (T,)
    if len(found) == 0:
        raise SkipVideo(f"{video_path}: no frames could be decoded; re-encode it with ffmpeg")
    with_face = [frame for index, frame in looked_at.items() if found[index]]
    turned = not_upright(video_path, with_face)
    if turned:  # the mesh fits an upright face to it all the same: crops of the wrong place
        raise SkipVideo(turned)
    several = int((count_faces(with_face) >= 2).sum())
    if with_face and several >= SEVERAL_FACES_SHARE * len(with_face):  # the mesh follows one: maybe not the speaker
        raise SkipVideo(f"{video_path}: {several} of {len(with_face)} frames looked at show several faces, and the "
                        f"crops follow one of them, who may not be the one speaking; crop the video to the speaker "
                        f"(ffmpeg -i in.mp4 -vf crop=W:H:X:Y out.mp4)")
    write_openface_csv(csv_path, landmarks, fps=FPS, found=found)


def read_landmarks(csv_path, settings):
    """(T, 68, 2) landmarks with faceless frames filled from their neighbours, and (T,) found; skips a video
    whose face is missing in too many frames."""
    from .landmark_detector import fill_missing
    landmarks, found = read_openface_csv(csv_path, with_success=True)
    if len(found) and found.mean() < settings.min_face_fraction:
        raise SkipVideo(f"{csv_path}: a face in only {100 * found.mean():.0f}% of frames (--min_face_fraction "
                        f"{settings.min_face_fraction}); use a video where one face stays in view")
    return fill_missing(landmarks, found), found


def _crop_faces(name, csv_path, layout, settings, progress):
    """Cut the video into clips of clip_length frames and crop DINet's face box from each frame.

    Clip i covers frames [9i, 9i + 9) for the clip ends range(9, n_frames, 9), as in DINet. A clip is left
    out when a frame has no detected face, or DINet's limits reject it (the crop leaves the frame, or the
    face size changes by more than 1.5x). The radius is sized over the 2 s around the clip (SIZING_WINDOW; DINet
    sizes it over the clip, and so tells the model how far the clip's mouth opens) and scaled by a random
    1.05..1.15 per clip (DINet's augmentation), drawn from a generator seeded by `seed` and the video name, so
    crops are reproducible and do not depend on which other videos are present. Returns (clips kept, clips in the
    video).
    """
    frame_dir, output = os.path.join(layout.frame_dir, name), os.path.join(layout.crop_dir, name)
    if not os.path.isdir(frame_dir):
        raise NotPrepared(f"{frame_dir}: no frames; run `python data_processing.py --extract_video_frame` first")
    if not os.path.isfile(csv_path):
        raise NotPrepared(f"{csv_path}: no landmarks; run `python data_processing.py --detect_landmarks`, or put "
                        f"OpenFace's CSV in {layout.openface_landmark_dir}")
    landmarks, found = read_landmarks(csv_path, settings)
    frame_paths = _frame_paths(frame_dir)
    if len(frame_paths) != len(landmarks):
        raise SkipVideo(f"{csv_path}: {len(landmarks)} landmark rows but {len(frame_paths)} frames in {frame_dir}; "
                        f"make both from the same 25 fps video (delete the stale one and rerun)")
    clip_ends = range(settings.clip_length, len(frame_paths), settings.clip_length)
    if _is_fresh(output, csv_path, frame_dir):
        return len(os.listdir(output)), len(clip_ends)
    frame_h, frame_w = cv2.imread(frame_paths[0]).shape[:2]
    landmarks = landmarks.astype(int)  # DINet crops from integer landmarks
    rng = np.random.default_rng([settings.seed, zlib.crc32(name.encode())])
    kept, faceless, beyond_limits = [], 0, 0
    for clip_index, end in enumerate(clip_ends):
        start = end - settings.clip_length
        scale = rng.random() / 10 + 1.05  # DINet's augmentation
        clip, sizing = landmarks[start:end], landmarks[sizing_frames(start, end, found)]
        radius = compute_crop_radius((frame_w, frame_h), clip, scale, sizing=sizing)
        if radius is None:  # the face size changes within the sizing frames: DINet's radius, the clip's alone
            radius = compute_crop_radius((frame_w, frame_h), clip, scale)
        if not found[start:end].all():
            faceless += 1
        elif radius is None:
            beyond_limits += 1
        else:
            kept.append((clip_index, start, end, radius))
    if not kept:
        raise SkipVideo(f"{csv_path}: no usable {settings.clip_length}-frame clip ({faceless} miss the face in a "
                        f"frame, {beyond_limits} beyond DINet's limits: the crop leaves the frame or the face "
                        f"size changes more than 1.5x); use a steadier video with the whole face in view")
    with atomic_output(output) as partial:
        os.makedirs(partial)
        for clip_index, start, end, radius in tqdm(kept, desc=f"{name} crops", unit="clip", leave=False,
                                                   disable=not progress):
            clip_dir = os.path.join(partial, f"{clip_index:06d}")
            os.makedirs(clip_dir)
            for frame_index in range(start, end):
                top, bottom, left, right = crop_box(landmarks[frame_index], radius)
                face_crop = cv2.imread(frame_paths[frame_index])[top:bottom, left:right]  # (3r + r/4, 2r + r/2, 3)
                _write_jpg(os.path.join(clip_dir, f"{frame_index:06d}.jpg"), face_crop)
    return len(kept), len(clip_ends)


def debug_image(frame_bgr, landmarks, radius):
    """Side by side for a person to check: the face with the 68 points numbered and coloured by group, and
    DINet's crop (shown at mouth 256, 416x320) with the mouth hole the generator fills outlined."""
    from .landmark_detector import draw_landmarks
    height = 720
    extent = (landmarks.max(0) - landmarks.min(0)).max()
    x0, y0 = np.maximum(landmarks.min(0) - 0.25 * extent, 0).astype(int)
    x1, y1 = np.minimum(landmarks.max(0) + 0.25 * extent, frame_bgr.shape[1::-1]).astype(int)
    scale = height / (y1 - y0)
    face = cv2.resize(frame_bgr[y0:y1, x0:x1], (round((x1 - x0) * scale), height), interpolation=cv2.INTER_CUBIC)
    face = draw_landmarks(face, (landmarks - [x0, y0]) * scale)  # drawn after resizing, so labels stay sharp
    geometry = CropGeometry(DEBUG_MOUTH_SIZE)
    panel = np.zeros((height, geometry.width + 20, 3), np.uint8)
    if radius is None:
        cv2.putText(panel, "no crop: beyond", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1)
        cv2.putText(panel, "DINet's limits", (10, 70), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1)
    else:
        top, bottom, left, right = crop_box(landmarks, radius)
        crop = cv2.resize(frame_bgr[top:bottom, left:right], (geometry.width, geometry.height))
        rows, cols = geometry.mouth_rows, geometry.mouth_cols
        cv2.rectangle(crop, (cols.start, rows.start), (cols.stop - 1, rows.stop - 1), (0, 255, 255), 1)
        panel[10:10 + geometry.height, 10:10 + geometry.width] = crop
    return np.hstack([face, panel])


def _draw_debug(name, csv_path, layout, settings):
    """DEBUG_FRAMES_PER_VIDEO evenly spaced frames -> debug_draw_dir/<video>/<frame>.jpg (see debug_image)."""
    frame_dir, output = os.path.join(layout.frame_dir, name), os.path.join(layout.debug_draw_dir, name)
    if not os.path.isdir(frame_dir) or not os.path.isfile(csv_path):
        raise NotPrepared(f"{frame_dir}: --debug_draw needs the frames and landmarks; run --extract_video_frame "
                        f"and --detect_landmarks first")
    if _is_fresh(output, csv_path, frame_dir):
        return
    landmarks, found = read_landmarks(csv_path, settings)
    frame_paths = _frame_paths(frame_dir)[:len(landmarks)]
    half = settings.clip_length // 2
    with atomic_output(output) as partial:
        os.makedirs(partial)
        for index in np.linspace(half, len(frame_paths) - 1 - half, DEBUG_FRAMES_PER_VIDEO).astype(int):
            frame = cv2.imread(frame_paths[index])
            sizing = landmarks[sizing_frames(index - half, index + half + 1, found)].astype(int)
            radius = compute_crop_radius(frame.shape[1::-1], landmarks[index - half:index + half + 1].astype(int),
                                         random_scale=1.1, sizing=sizing)
            _write_jpg(os.path.join(partial, f"{index:06d}.jpg"), debug_image(frame, landmarks[index], radius))


def prepare_video(name, source_path, layout, settings, steps, progress=True):
    """Run the chosen per-video `steps` (names from VIDEO_STEPS) on one video; return its VideoReport.
    Raises SkipVideo or UserError (one line) when the video cannot be used."""
    try:
        return _prepare_steps(name, source_path, layout, settings, steps, progress)
    except NotPrepared:
        check_source(source_path, settings)  # a video an earlier step skipped: its own reason, not the missing file
        raise


def _prepare_steps(name, source_path, layout, settings, steps, progress):
    report = VideoReport(name)
    video_path = (video_at_25fps(name, source_path, layout, settings)
                  if STEPS_READING_VIDEO & set(steps) else None)
    if "extract_video_frame" in steps:
        report.frames = _extract_frames(video_path, os.path.join(layout.frame_dir, name), settings)
    if "extract_audio" in steps:
        _extract_audio(video_path, os.path.join(layout.audio_dir, name + ".wav"))
    if "extract_audio_feature" in steps:
        _extract_feature(name, layout, settings)
    if "detect_landmarks" in steps:
        _detect_landmarks(name, video_path, layout, progress)
    csv_path, report.landmark_source = landmark_csv(name, layout)
    if "detect_landmarks" in steps:
        found = read_landmarks(csv_path, settings)[1]
        report.face_fraction = float(found.mean()) if len(found) else 0.0
    if "crop_face" in steps:
        report.clips, report.possible_clips = _crop_faces(name, csv_path, layout, settings, progress)
    if "debug_draw" in steps:
        _draw_debug(name, csv_path, layout, settings)
    return report


def _prepare_or_skip(name, source_path, layout, settings, steps, progress):
    """prepare_video, with a video that cannot be used turned into a report line (runs in pool workers)."""
    started = time.time()
    try:
        report = prepare_video(name, source_path, layout, settings, steps, progress)
    except NotWritten:
        raise  # a full disk is not the video's fault: the run stops
    except (SkipVideo, UserError) as error:
        report = VideoReport(name, skipped=str(error).strip().splitlines()[0] if str(error).strip() else "failed")
        _remove(os.path.join(layout.crop_dir, name))  # crops of an earlier run must not be indexed
    report.seconds = time.time() - started
    return report


def prepare_videos(layout, settings, steps, workers=1):
    """Run `steps` on every video of layout.source_video_dir; return their VideoReports, sorted by name."""
    steps = [step for step in VIDEO_STEPS if step in steps]
    videos, left_out = list_videos(layout.source_video_dir, copies_beside=os.path.abspath(layout.source_video_dir)
                                   == os.path.abspath(layout.split_video_dir))
    reports = [VideoReport(os.path.basename(path), skipped=f"{path}: has the name of {kept}, which is prepared under "
                                                           f"it; rename one of the two to prepare both")
               for path, kept in left_out]
    with tqdm(total=len(videos), desc="videos", unit="video") as bar:
        if workers <= 1:
            for name, source_path in videos.items():
                bar.set_postfix_str(name)
                reports.append(_prepare_or_skip(name, source_path, layout, settings, steps, progress=True))
                bar.update()
        else:
            # spawn, not fork: mediapipe's and OpenCV's threads do not survive a fork.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_prepare_or_skip, name, source_path, layout, settings, steps, False)
                           for name, source_path in videos.items()]
                try:
                    for future in as_completed(futures):
                        reports.append(future.result())
                        bar.set_postfix_str(reports[-1].name)
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # the run stops: start no other video
                    raise
    return sorted(reports, key=lambda report: report.name)


def format_report(reports):
    """The end-of-run report: one line per video, skipped ones with their reason."""
    ready = sum(report.skipped is None for report in reports)
    header = f"data preparation: {ready} of {len(reports)} videos ready"
    if ready < len(reports):
        header += f", {len(reports) - ready} skipped"
    return "\n".join([header] + [report.line() for report in reports])


# ---------------------------------------------------------------- the training JSON

def generate_training_json(crop_dir, feature_dir, feature_name, json_path, clip_length=CLIP_LENGTH):
    """Index every cropped clip with its per-frame audio vectors in DINet's training JSON.

    {video: {"video_clip_num": n, "clip_data_list": [{"frame_name_list": [9 x "video/clip/frame.jpg"],
    "frame_path_list": [9 paths, relative to the JSON's folder when inside it], "deep_speech_list": [9 vectors]}],
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
        raise UserError(f"{crop_dir}: no cropped clips to index; check the landmarks and rerun --crop_face")
    with atomic_output(json_path) as partial, open(partial, "w") as f:
        json.dump(training_data, f)
    return json_path


def _load_feature(feature_dir, video_name, feature_name):
    path = feature_path(feature_dir, video_name, feature_name)
    if not os.path.isfile(path):
        raise UserError(f"{path}: audio features not found; make them with `python data_processing.py "
                         f"--extract_audio_feature --audio_feature {feature_name}`")
    try:
        features = read_array(path)
    except (ValueError, EOFError) as error:  # a pickled object, an .npz, a header claiming more than the file holds
        raise UserError(f"{path}: cannot read these audio features ({error}); delete it and extract the features "
                        f"again") from None
    expected = FEATURE_WIDTHS.get(feature_name)
    if features.ndim != 2 or (expected is not None and features.shape[1] != expected):
        raise UserError(f"{path}: expected (T, {expected}) {feature_name} features, got {features.shape}; "
                         f"delete it and extract the features again")
    if not np.isfinite(features).all():
        raise UserError(f"{path}: holds NaN or infinite values; delete it and extract the features again")
    return features


def _path_in_json(frame_path, json_dir):
    """Relative to the JSON's folder when the frame is inside it, else absolute (a relative path climbing out with
    .. is refused when the JSON is loaded)."""
    relative = os.path.relpath(frame_path, json_dir)
    return os.path.abspath(frame_path) if climbs_out(relative) else relative


def _clip_entries(video_crop_dir, video_name, features, clip_length, json_dir):
    """DINet's clip_data_list for one video's crop directory; clips the features do not cover are left out."""
    entries = []
    for clip_name in sorted(os.listdir(video_crop_dir)):
        clip_dir = os.path.join(video_crop_dir, clip_name)
        frame_paths = _frame_paths(clip_dir)
        start = int(clip_name) * clip_length
        first = int(os.path.splitext(os.path.basename(frame_paths[0]))[0]) if frame_paths else None
        if len(frame_paths) != clip_length or first != start:
            raise UserError(f"{clip_dir}: expected frames {start}..{start + clip_length - 1}; "
                             f"delete {video_crop_dir} and rerun --crop_face")
        audio = features[start:start + clip_length]  # (9, C)
        if len(audio) != clip_length:
            tqdm.write(f"{video_name} clip {clip_name}: audio features end at frame {len(features)}, clip left out")
            continue
        entries.append({
            "frame_name_list": [f"{video_name}/{clip_name}/{os.path.basename(p)}" for p in frame_paths],
            "frame_path_list": [_path_in_json(p, json_dir) for p in frame_paths],
            "deep_speech_list": np.round(audio.astype(np.float64), JSON_DECIMALS).tolist(),
        })
    return entries
