"""A procedural demo training set: short talking faces whose mouths follow synthetic speech.

Each video is a cartoon face drawn with OpenCV (skin, hair, eyes, brows, nose, lips, a little head
motion; the look differs per video) over a speech-like track (glottal pulses through vowel formants,
syllables grouped into phrases with pauses). The mouth opening at frame t is the audio's RMS in that
frame's 40 ms, so lip motion and sound agree exactly. The 68 iBUG landmarks are the points the face is
drawn from, so they match the pixels.

`make_demo_data` writes the videos (H.264 + AAC mp4) and landmark CSVs where real data would be and
then runs the real preparation steps (data/prepare.py) on them, so training reads the same kind of
files it reads for real data. Everything is drawn from numpy generators seeded by (seed, video index):
the same seed gives the same landmarks, audio and training JSON.
"""
import json
import os
import tempfile
import wave
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.signal import lfilter

from common.errors import UserError, permission_denied
from common.files import write_atomically
from media.encoder import write_video

from . import prepare
from .openface_csv import write_openface_csv

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640: one video frame of audio
FRAME_SIZE = 256  # the face spans ~180 px, so DINet's crop (radius ~56) fits with the head motion
DEMO_RECORD = "demo_faces.json"  # beside the training JSON: the seed and length that draw the set again
MAX_OPENING = 18.0  # px between inner lips (points 62 and 66) at the loudest frame

# Vowel formants F1-F3 (Hz, Peterson & Barney averages) and how much the lips spread (+) or round (-).
VOWELS = [((730, 1090, 2440), 0.0), ((530, 1840, 2480), 0.5), ((270, 2290, 3010), 1.0),
          ((570, 840, 2410), -0.6), ((300, 870, 2240), -1.0)]
FORMANT_BANDWIDTHS = (80, 100, 140)  # Hz


# ---------------------------------------------------------------- speech

def _syllables(rng, seconds):
    """[(start_s, duration_s, vowel_index, stress)]: phrases of 2-5 syllables separated by pauses."""
    syllables, time = [], rng.uniform(0.1, 0.3)
    while True:
        for _ in range(rng.integers(2, 6)):
            duration = rng.uniform(0.14, 0.28)
            if time + duration > seconds - 0.05:
                return syllables
            syllables.append((time, duration, rng.integers(len(VOWELS)), rng.uniform(0.6, 1.0)))
            time += duration + rng.uniform(0.03, 0.08)  # the consonant closure between syllables
        time += rng.uniform(0.2, 0.45)  # a pause between phrases


def _glottal_pulse_train(rng, num_samples):
    """(num_samples,) voiced excitation: Rosenberg glottal-flow derivative pulses at a drifting pitch."""
    time = np.arange(num_samples) / SAMPLE_RATE
    pitch = rng.uniform(95, 210) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * time + rng.uniform(0, 6.3)))
    period_starts = np.diff(np.floor(np.cumsum(pitch / SAMPLE_RATE)), prepend=0.0)  # 1 at each glottal cycle
    opening, closing = 40, 24  # samples of the glottis opening and closing (2.5 ms and 1.5 ms)
    flow = np.concatenate([0.5 * (1 - np.cos(np.pi * np.arange(opening) / opening)),
                           np.cos(0.5 * np.pi * np.arange(closing) / closing)])
    return np.convolve(period_starts, np.diff(flow, append=0.0))[:num_samples]


def _resonator(frequency, bandwidth):
    """(b, a) of a two-pole formant resonator with unit gain at 0 Hz."""
    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    a = [1.0, -2 * radius * np.cos(2 * np.pi * frequency / SAMPLE_RATE), radius ** 2]
    return [sum(a)], a


def synthesize_speech(rng, seconds):
    """Speech-like audio and the per-frame lip spread of its vowels.

    Returns wav (S,) float in [-1, 1] at 16 kHz, S = seconds * 16000, and spread (T,) in [-1, 1],
    T = S / 640 video frames (0 where no vowel sounds).
    """
    num_samples = int(round(seconds * SAMPLE_RATE))
    source = _glottal_pulse_train(rng, num_samples)
    speech = np.zeros(num_samples)
    spread = np.zeros(num_samples // SAMPLES_PER_FRAME)
    for start, duration, vowel, stress in _syllables(rng, seconds):
        begin, end = int(start * SAMPLE_RATE), int((start + duration) * SAMPLE_RATE)
        formants, lip_spread = VOWELS[vowel]
        voiced = source[begin:end]
        for frequency, bandwidth in zip(formants, FORMANT_BANDWIDTHS):
            voiced = lfilter(*_resonator(frequency, bandwidth), voiced)
        envelope = np.sin(np.pi * np.linspace(0, 1, end - begin)) ** 0.5  # quick rise, sustain, fall
        speech[begin:end] += stress * envelope * voiced
        spread[int(start * FPS):int((start + duration) * FPS) + 1] = lip_spread
    speech *= 0.7 / max(np.abs(speech).max(), 1e-9)  # a clip shorter than its first syllable is silent
    speech += rng.normal(0, 0.002, num_samples)  # room noise: pauses are quiet, not digitally silent
    return np.clip(speech, -1, 1), spread


def mouth_openings(wav):
    """(T,) inner-lip gap in px per video frame: the audio's RMS in the frame's 40 ms, scaled to MAX_OPENING."""
    frames = wav[: len(wav) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME].reshape(-1, SAMPLES_PER_FRAME)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    return MAX_OPENING * rms / rms.max()


def _write_wav(path, wav):
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((wav * 32767).astype("<i2").tobytes())


# ---------------------------------------------------------------- face

@dataclass
class FaceStyle:
    """One video's look and head motion."""
    skin: np.ndarray        # (3,) RGB
    hair: np.ndarray        # (3,) RGB
    iris: np.ndarray        # (3,) RGB
    shirt: np.ndarray       # (3,) RGB
    background: np.ndarray  # (2, 3) RGB at the top and bottom of a vertical gradient
    face_width: float       # half-width of the face at eye level, px
    mouth_width: float      # half-width of the closed mouth, px
    scale: float            # head size relative to the reference layout below
    offset: np.ndarray      # (2,) px where the head sits
    motion: np.ndarray      # (3, 3): rows rotation (deg), x shift, y shift (px); columns amplitude, Hz, phase

    @classmethod
    def draw(cls, rng):
        light_skin, dark_skin = np.array([250.0, 215, 185]), np.array([120.0, 75, 50])
        return cls(skin=light_skin + rng.uniform() * (dark_skin - light_skin),
                   hair=rng.uniform(10, 110, 3) * [1, 0.8, 0.6], iris=rng.uniform(40, 160, 3),
                   shirt=rng.uniform(30, 230, 3), background=rng.uniform(60, 230, (2, 3)),
                   face_width=rng.uniform(58, 66), mouth_width=rng.uniform(19, 24), scale=rng.uniform(0.96, 1.05),
                   offset=rng.uniform(-4, 4, 2),
                   motion=np.stack([rng.uniform([1.5, 2, 1], [3, 4, 2.5]), rng.uniform(0.2, 0.6, 3),
                                    rng.uniform(0, 2 * np.pi, 3)], axis=1))


# The upright face in a 256 x 256 frame (iBUG-68 numbering; image-left points, the right side mirrors them).
CENTRE_X = FRAME_SIZE / 2
EYE_LINE_Y, CHIN_BELOW_EYES, FOREHEAD_ABOVE_EYES = 88.0, 102.0, 72.0
BROW_LEFT = np.array([[80, 72], [87, 66.5], [96, 64.5], [105, 65.5], [113, 69]])          # 17-21
EYE_LEFT = np.array([[86, 84], [93, 79.5], [102, 79], [110, 84.5], [102, 88], [93, 88]])  # 36-41
EYE_RIGHT_FROM_LEFT = [3, 2, 1, 0, 5, 4]  # 42 mirrors 39, 43 mirrors 38, ... 47 mirrors 40
NOSE = np.array([[128, 82], [128, 94], [128, 106], [128, 118],                            # 27-30 bridge
                 [116, 121], [122, 124], [128, 126], [134, 124], [140, 121]])             # 31-35 base
MOUTH_CENTRE = np.array([CENTRE_X, 152.0])
OUTER_UPPER_U = np.array([-1, -0.62, -0.28, 0, 0.28, 0.62, 1])  # 48-54 across the mouth, -1..1 corner to corner
OUTER_LOWER_U = np.array([0.62, 0.28, 0, -0.28, -0.62])          # 55-59
INNER_UPPER_U = np.array([-0.8, -0.4, 0, 0.4, 0.8])              # 60-64
INNER_LOWER_U = np.array([0.4, 0, -0.4])                         # 65-67
NECK_PIVOT = np.array([CENTRE_X, 150.0])  # the head turns and scales about here


def _mirror(points):
    return np.stack([FRAME_SIZE - points[:, 0], points[:, 1]], axis=1)


def _arc(centre, axes, start_deg, end_deg, count=32):
    """(count, 2) points along an ellipse (image coordinates, y down: -90 deg is the top)."""
    angles = np.radians(np.linspace(start_deg, end_deg, count))
    return np.stack([centre[0] + axes[0] * np.cos(angles), centre[1] + axes[1] * np.sin(angles)], axis=1)


def _jaw(face_width, jaw_drop):
    """(17, 2) points 0-16, ear to chin to ear; the chin drops most when the jaw opens."""
    angles = np.pi * np.arange(17) / 16
    return np.stack([CENTRE_X - face_width * np.cos(angles),
                     EYE_LINE_Y + CHIN_BELOW_EYES * np.sin(angles) + jaw_drop * np.sin(angles) ** 2], axis=1)


def _lip_edge(u, half_width, gap):
    """Points across the mouth at positions u (-1..1) displaced vertically by gap * (1 - u^2) px."""
    return np.stack([MOUTH_CENTRE[0] + u * half_width, MOUTH_CENTRE[1] + gap * (1 - u ** 2)], axis=1)


def _lips(opening, spread, mouth_width):
    """(20, 2) points 48-67 with the inner lips `opening` px apart at the centre (66.y - 62.y)."""
    half_width = mouth_width * (1 + 0.12 * spread - 0.1 * opening / MAX_OPENING)
    upper, lower = -0.25 * opening, 0.75 * opening  # the jaw carries the lower lip most of the way
    # Lips thin out towards the corners; the upper one dips at the centre (cupid's bow).
    upper_thickness = 7 * np.sqrt(1 - OUTER_UPPER_U ** 2) * (1 - 0.15 * np.exp(-(OUTER_UPPER_U / 0.12) ** 2))
    lower_thickness = 9 * np.sqrt(1 - OUTER_LOWER_U ** 2)
    return np.concatenate([
        _lip_edge(OUTER_UPPER_U, half_width, upper) - np.outer(upper_thickness, [0, 1]),
        _lip_edge(OUTER_LOWER_U, half_width, lower) + np.outer(lower_thickness, [0, 1]),
        _lip_edge(INNER_UPPER_U, half_width, upper),
        _lip_edge(INNER_LOWER_U, half_width, lower),
    ])


def _face_shape(style, opening, spread):
    """The upright face as named point sets: "landmarks" (68, 2) plus outlines used only for drawing."""
    landmarks = np.concatenate([
        _jaw(style.face_width, 0.75 * opening), BROW_LEFT, _mirror(BROW_LEFT[::-1]), NOSE,
        EYE_LEFT, _mirror(EYE_LEFT[EYE_RIGHT_FROM_LEFT]), _lips(opening, spread, style.mouth_width)])
    inner_upper = landmarks[60:65]
    teeth_depth = min(0.4 * opening, 5.0) * (1 - INNER_UPPER_U ** 2)  # stays above the lower lip
    return {
        "landmarks": landmarks,
        "hair_back": _arc((CENTRE_X, EYE_LINE_Y - 8), (style.face_width + 8, 66), 0, 360),
        "ear_left": _arc((CENTRE_X - style.face_width + 2, 102), (8, 15), 0, 360),
        "ear_right": _arc((CENTRE_X + style.face_width - 2, 102), (8, 15), 0, 360),
        "head": np.concatenate([landmarks[:17], _arc((CENTRE_X, EYE_LINE_Y), (style.face_width, FOREHEAD_ABOVE_EYES),
                                                     0, -180)[1:-1]]),
        "fringe": _arc((CENTRE_X, 52), (style.face_width + 1, 38), 180, 360),
        "teeth": np.concatenate([inner_upper, (inner_upper + np.outer(teeth_depth, [0, 1]))[::-1]]),
    }


def _head_pose(style, seconds):
    """(2, 3) affine matrix for the head at a time: a slow sway and nod about the neck."""
    amplitude, frequency, phase = style.motion.T
    angle, shift_x, shift_y = amplitude * np.sin(2 * np.pi * frequency * seconds + phase)
    matrix = cv2.getRotationMatrix2D(tuple(NECK_PIVOT), angle, style.scale)
    matrix[:, 2] += style.offset + [shift_x, shift_y]
    return matrix


def _fixed(points):
    """Float (N, 2) px -> int32 in 1/16 px, for OpenCV's sub-pixel drawing (shift=4)."""
    return np.round(np.asarray(points) * 16).astype(np.int32)


def _fill(canvas, points, colour):
    cv2.fillPoly(canvas, [_fixed(points)], tuple(map(float, colour)), cv2.LINE_AA, shift=4)


def _line(canvas, points, colour, thickness, closed=False):
    cv2.polylines(canvas, [_fixed(points)], closed, tuple(map(float, colour)), thickness, cv2.LINE_AA, shift=4)


def _dot(canvas, centre, radius, colour):
    cv2.circle(canvas, tuple(_fixed(centre)), int(radius * 16), tuple(map(float, colour)), -1, cv2.LINE_AA, shift=4)


def _backdrop(style):
    """(H, W, 3) uint8: background gradient, shoulders and neck, which stay still while the head moves."""
    ramp = np.linspace(0, 1, FRAME_SIZE)[:, None, None]
    canvas = ((1 - ramp) * style.background[0] + ramp * style.background[1]) * np.ones((1, FRAME_SIZE, 1))
    canvas = canvas.astype(np.uint8)
    _fill(canvas, _arc((CENTRE_X + style.offset[0], 300), (125, 80), 0, 360), style.shirt)
    neck_x = CENTRE_X + style.offset[0]
    _fill(canvas, [[neck_x - 28, 140], [neck_x + 28, 140], [neck_x + 32, 236], [neck_x - 32, 236]], style.skin * 0.85)
    return canvas


def _draw_face(canvas, shape, style, opening):
    """Draw a posed face shape onto an RGB canvas, back to front."""
    points = shape["landmarks"]
    _fill(canvas, shape["hair_back"], style.hair)
    _fill(canvas, shape["ear_left"], style.skin * 0.9)
    _fill(canvas, shape["ear_right"], style.skin * 0.9)
    _fill(canvas, shape["head"], style.skin)
    _fill(canvas, shape["fringe"], style.hair)
    for brow in (points[17:22], points[22:27]):
        _line(canvas, brow, style.hair * 0.8, 3)
    for eye in (points[36:42], points[42:48]):
        _fill(canvas, eye, (240, 238, 232))
        _dot(canvas, eye.mean(axis=0), 4.0, style.iris)
        _dot(canvas, eye.mean(axis=0), 1.8, (15, 10, 10))
        _line(canvas, eye, (60, 40, 35), 1, closed=True)
    shade = style.skin * 0.78
    _line(canvas, points[28:31] + [3, 0], shade, 1)   # the lit side of the nose bridge
    _line(canvas, points[31:36], shade, 2)              # the nose base, 31..35
    for nostril in (points[32], points[34]):
        _dot(canvas, nostril - [0, 2], 1.8, style.skin * 0.45)
    lip_colour = style.skin * [0.85, 0.55, 0.55] + [30, 0, 10]
    _fill(canvas, points[48:60], lip_colour)
    if opening > 0.5:
        _fill(canvas, points[60:68], (70, 20, 30))   # the inside of the mouth
        _fill(canvas, shape["teeth"], (235, 232, 220))
    _line(canvas, points[60:65], lip_colour * 0.6, 1)  # where the lips meet


def render_talking_face(style, openings, spreads):
    """Frames (T, H, W, 3) uint8 RGB and their landmarks (T, 68, 2), from per-frame mouth openings and lip spreads."""
    backdrop = _backdrop(style)
    frames, landmarks = [], []
    for index, (opening, spread) in enumerate(zip(openings, spreads)):
        pose = _head_pose(style, index / FPS)
        shape = {name: points @ pose[:, :2].T + pose[:, 2] for name, points in
                 _face_shape(style, opening, spread).items()}
        frame = backdrop.copy()
        _draw_face(frame, shape, style, opening)
        frames.append(frame)
        landmarks.append(shape["landmarks"])
    return np.stack(frames), np.stack(landmarks)


# ---------------------------------------------------------------- the data set

@dataclass
class DemoVideo:
    """One demo video as drawn: its look, its speech and the lip spread of its vowels per frame."""
    style: FaceStyle
    wav: np.ndarray
    spreads: np.ndarray


def demo_video(seed, index, seconds):
    """Demo video `index` of the set made with `seed`: the same whatever the set's size."""
    rng = np.random.default_rng([seed, index])
    style = FaceStyle.draw(rng)
    wav, spreads = synthesize_speech(rng, seconds)
    return DemoVideo(style, wav, spreads)


def write_talking_face(path, face, speech):
    """Write `face` (a DemoVideo) speaking `speech`'s audio as an H.264 + AAC mp4 at `path`: with speech = face,
    the demo video itself; with another video's speech, the true face that dubbing `face` with that speech should
    give (its head moves as in its own video). Returns the landmarks (T, 68, 2) the face was drawn from."""
    frames, landmarks = render_talking_face(face.style, mouth_openings(speech.wav), speech.spreads)
    with tempfile.TemporaryDirectory() as scratch:
        wav_path = os.path.join(scratch, "speech.wav")
        _write_wav(wav_path, speech.wav)
        write_video(path, frames, fps=FPS, audio_path=wav_path)
    return landmarks


def demo_name(index):
    return f"demo_{index:03d}"


def read_demo_record(demo_dir):
    """{"seed", "seconds", "videos"} of the demo set under demo_dir, as make_demo_data recorded it."""
    path = os.path.join(demo_dir, DEMO_RECORD)
    if os.path.exists(demo_dir) and not os.path.isdir(demo_dir):  # not a path to make a demo set at either
        raise UserError(f"{demo_dir}: a file, not a demo set's folder; pass the folder python data_processing.py "
                        f"--make_demo_data --demo_dir DIR made")
    try:
        with open(path) as f:
            record = json.load(f)
        return {"seed": int(record["seed"]), "seconds": float(record["seconds"]), "videos": list(record["videos"])}
    except PermissionError:
        raise permission_denied(path) from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:  # arrays nested thousands deep
        raise UserError(f"{path}: not a demo set's record ({type(error).__name__}); make the demo set with python "
                        f"data_processing.py --make_demo_data --demo_dir {demo_dir}") from None


def make_demo_data(demo_dir, num_videos=3, seconds=4.0, seed=0, audio_feature="mel"):
    """Write `num_videos` demo videos and landmarks under demo_dir in DINet's layout, run data preparation
    on them, and return the training JSON's path (demo_dir/training_json.json). demo_dir/demo_faces.json records
    how to draw them again (read_demo_record)."""
    layout = prepare.Layout.under(demo_dir, audio_feature)
    os.makedirs(layout.split_video_dir, exist_ok=True)
    for index in range(num_videos):
        video = demo_video(seed, index, seconds)
        name = demo_name(index)
        landmarks = write_talking_face(os.path.join(layout.split_video_dir, name + ".mp4"), video, video)
        write_openface_csv(os.path.join(layout.openface_landmark_dir, name + ".csv"), landmarks, fps=FPS)
    record = {"seed": seed, "seconds": seconds, "videos": [demo_name(index) for index in range(num_videos)]}
    write_atomically(os.path.join(demo_dir, DEMO_RECORD), lambda f: json.dump(record, f, indent=1), mode="w")

    settings = prepare.Settings(audio_feature=audio_feature, seed=seed)
    steps = [step for step in prepare.VIDEO_STEPS if step != "debug_draw"]
    reports = prepare.prepare_videos(layout, settings, steps)
    skipped = [report.line() for report in reports if report.skipped]
    if skipped:
        raise UserError("demo data could not be prepared:\n" + "\n".join(skipped))
    return prepare.generate_training_json(layout.crop_dir, layout.feature_dir, audio_feature,
                                          os.path.join(demo_dir, "training_json.json"))
