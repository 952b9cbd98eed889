"""The footage of a personal model: each video checked before any work, then cut into training parts and a held-out
part.

Of each video the last 10% (and at least MIN_PART_FRAMES) is held out: validation keeps the best checkpoint by it,
and the run ends by dubbing and scoring it. It is never trained on: the cut is frame-exact (media.convert.cut_video).
The rest is cut into parts of about SEGMENT_FRAMES, each prepared as a video of its own, so that every stretch of
the footage is drawn from alike, and the SyncNet, which holds whole videos out to measure its accuracy, gets three
parts or more even from one video: it trains on two or more once it has held its share out. Footage that would leave
it too little to learn from is refused before any work.
"""
import math
import os
from dataclasses import dataclass

import numpy as np

from common.errors import UserError
from common.geometry import CLIP_LENGTH, NUM_REFERENCES
from data.sync_dataset import MIN_TRAINING_VIDEOS, MIN_TRAINING_WINDOWS, draw_held_out, windows_of
from media.convert import cut_video
from media.ffmpeg import FFmpeg, probe, video_seconds

FPS = 25
HELD_OUT_SHARE = 0.1
# a training video and a validated held-out one need NUM_REFERENCES + 1 clips of 9 frames (clip k ends before frame
# 9k + 9, data/prepare.py); one more spares a clip the detector loses
MIN_PART_FRAMES = (NUM_REFERENCES + 2) * CLIP_LENGTH + 1  # 64 frames, 2.6 s
SEGMENT_FRAMES = 10 * FPS
# train_syncnet.py's held-out share of the training parts and its seed, as the recipe runs it: the draw is made here
# too, to refuse footage that would leave it too little before any work
SYNCNET_HELD_OUT, SYNCNET_SEED = 0.2, 456
MIN_VIDEO_SECONDS = 8  # a held-out part and two training parts of MIN_PART_FRAMES each (alone it needs more)
FACE_SAMPLES = 16      # frames looked at per video before any work (a seek each: about a second)
MIN_FACE_SHARE = 0.5   # of those, at least this share must show a face
SAMPLE_SIDE = 640      # the sampled frames' longer side: enough for the face detector


@dataclass(frozen=True)
class Part:
    """Frames [start, stop) of a video at 25 fps, cut out to be trained on or held out."""
    video: str
    name: str
    start: int
    stop: int
    held_out: bool

    @property
    def seconds(self):
        return (self.stop - self.start) / FPS

    def describe(self):
        return f"{os.path.basename(self.video)} {self.start / FPS:.1f}-{self.stop / FPS:.1f} s"


def video_name(path):
    return os.path.splitext(os.path.basename(path))[0]


def split_footage(frame_counts):
    """The parts of the videos ({path: frames at 25 fps}, in order): each video's training parts, then its held-out
    part (the last HELD_OUT_SHARE, at least MIN_PART_FRAMES). Training parts are about SEGMENT_FRAMES long; while
    they leave the SyncNet too little once it holds its share out (whichever parts its draw holds out), the longest
    parts are cut into more, none shorter than MIN_PART_FRAMES."""
    held_out = {path: max(math.ceil(HELD_OUT_SHARE * frames), MIN_PART_FRAMES) for path, frames in frame_counts.items()}
    training = {path: frames - held_out[path] for path, frames in frame_counts.items()}
    counts = {path: max(1, round(frames / SEGMENT_FRAMES)) for path, frames in training.items()}
    while True:
        parts = []
        for path, frames in frame_counts.items():
            edges = [round(k * training[path] / counts[path]) for k in range(counts[path] + 1)]
            name = video_name(path)
            parts += [Part(path, f"{name}_train{k}", start, stop, False)
                      for k, (start, stop) in enumerate(zip(edges, edges[1:]))]
            parts.append(Part(path, f"{name}_held_out", training[path], frames, True))
        path = max(counts, key=lambda path: training[path] / (counts[path] + 1))
        if enough_for_syncnet(parts) or training[path] / (counts[path] + 1) < MIN_PART_FRAMES:
            return parts
        counts[path] += 1


def syncnet_share(parts):
    """(training parts, held-out parts, windows) of the SyncNet's draw from the training parts, the windows
    estimated from the parts' frames."""
    frames = {part.name: part.stop - part.start for part in parts if not part.held_out}
    trained, held = draw_held_out(frames, SYNCNET_HELD_OUT, SYNCNET_SEED) if len(frames) > 1 else (list(frames), [])
    return trained, held, sum(windows_of(frames[name]) for name in trained)


def enough_for_syncnet(parts):
    trained, _, windows = syncnet_share(parts)
    return len(trained) >= MIN_TRAINING_VIDEOS and windows >= MIN_TRAINING_WINDOWS


def check_syncnet_footage(parts, flag="--videos"):
    """Refuse, before any work, footage whose training parts leave the SyncNet too little to learn from once it
    holds its share out: train_syncnet.py would refuse it only after the frame stages."""
    if enough_for_syncnet(parts):
        return
    trained, held, windows = syncnet_share(parts)
    seconds = sum(part.stop - part.start for part in parts) / FPS
    raise UserError(f"{flag}: {seconds:.1f} s of footage in all leaves the SyncNet {len(trained)} training part(s) "
                    f"with about {windows} windows (5 frames and their audio) once it holds {len(held)} out to "
                    f"measure its accuracy, and it needs {MIN_TRAINING_VIDEOS} parts and {MIN_TRAINING_WINDOWS} "
                    f"windows; record more: one video of at least {shortest_alone()} s, or more videos")


def shortest_alone():
    """The fewest whole seconds a video alone needs to leave the SyncNet enough."""
    return next(seconds for seconds in range(MIN_VIDEO_SECONDS, 3600)
                if enough_for_syncnet(split_footage({"one.mp4": seconds * FPS})))


def sample_frames(path, info, count=FACE_SAMPLES):
    """`count` frames spread over the video (one ffmpeg seek each), RGB, the longer side at most SAMPLE_SIDE."""
    scale = min(1.0, SAMPLE_SIDE / max(info["width"], info["height"]))
    width, height = round(info["width"] * scale), round(info["height"] * scale)
    frames = []
    for index in range(count):
        time = (index + 0.5) / count * info["duration"]
        with FFmpeg(["-ss", f"{time:.3f}", "-i", path, "-frames:v", "1", "-vf", f"scale={width}:{height}",
                     "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], path, stdout=True) as ffmpeg:
            frame = np.empty((height, width, 3), np.uint8)
            if ffmpeg.read_into(memoryview(frame).cast("B")):
                frames.append(frame)
    return frames


def check_video(path, flag="--videos"):
    """What probe says of the video, with "frames" (at 25 fps); or one line saying why the recipe cannot use it:
    unreadable, no audio, shorter than MIN_VIDEO_SECONDS, a face in under half the frames looked at, several people
    in view, or the face on its side (or upside down) in most of them."""
    info = probe(path)
    if info["has_video"] and info["duration"]:  # the footage is the picture's span, though its sound runs longer
        info["duration"] = min(info["duration"], video_seconds(path))
    if not info["has_video"] or not info["width"] or not info["duration"]:
        raise UserError(f"{path}: no video stream; pass videos of your face to {flag}")
    if not info["has_audio"]:
        raise UserError(f"{path}: no audio track, and the model learns the mouth from the speech; record with sound "
                        f"(or mux it in: ffmpeg -i video.mp4 -i speech.wav -c:v copy -c:a aac out.mp4)")
    if info["duration"] < MIN_VIDEO_SECONDS:
        raise UserError(f"{path}: {info['duration']:.1f} s of footage, and the recipe needs at least "
                        f"{MIN_VIDEO_SECONDS} s of each video (its last 10%, at least {MIN_PART_FRAMES / FPS:.1f} s, "
                        f"is held out; the rest is trained on); record longer")
    # mediapipe only when videos are checked
    from data.landmark_detector import SEVERAL_FACES_SHARE, count_faces, not_upright
    frames = sample_frames(path, info)
    faces = count_faces(frames)
    with_face, several = int((faces >= 1).sum()), int((faces >= 2).sum())
    if with_face < MIN_FACE_SHARE * FACE_SAMPLES:
        raise UserError(f"{path}: a face in {with_face} of {FACE_SAMPLES} frames looked at, and the recipe needs one "
                        f"in at least half the frames; use footage where your face stays in the picture")
    if several >= SEVERAL_FACES_SHARE * FACE_SAMPLES:
        raise UserError(f"{path}: {several} of {FACE_SAMPLES} frames looked at show several faces, and the recipe "
                        f"learns one person; crop the video to yours (ffmpeg -i in.mp4 -vf crop=W:H:X:Y out.mp4)")
    turned = not_upright(path, frames)
    if turned:
        raise UserError(turned)
    return {**info, "frames": int(info["duration"] * FPS)}


def check_footage(paths, flag="--videos"):
    """{path: check_video(path)} of the videos, each given once; their names must differ, as parts are named after
    them. A path that leads nowhere is named before any video is read (each takes seconds)."""
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"{flag} {path}: no such video; check the path")
    files = [os.path.realpath(path) for path in paths]
    again = next((path for index, path in enumerate(paths) if files[index] in files[:index]), None)
    if again:
        raise UserError(f"{flag}: {again} is given twice; give each video once")
    names = [video_name(path) for path in paths]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise UserError(f"{flag}: two videos named {twice}, and their parts are named after them; rename one")
    return {path: check_video(path, flag) for path in paths}


def part_path(folder, part):
    return os.path.join(folder, "held_out" if part.held_out else "train", part.name + ".mp4")


def cut_parts(parts, folder):
    """Each video's parts as mp4s under folder/train and folder/held_out (one decode per video); videos whose parts
    are all there already are skipped."""
    for video in dict.fromkeys(part.video for part in parts):
        mine = [part for part in parts if part.video == video]
        paths = [part_path(folder, part) for part in mine]
        if not all(os.path.isfile(path) for path in paths):
            print(f"cutting {video}: " + ", ".join(f"{part.name} ({part.describe()})" for part in mine), flush=True)
            cut_video(video, [(part.start, part.stop) for part in mine], paths, fps=FPS)
