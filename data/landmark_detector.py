"""The bundled 68-point landmark detector: mediapipe's face mesh mapped onto the iBUG 68-point convention.

DINet's data preparation expects OpenFace's 68 points (jaw 0-16, brows 17-26, nose bridge 27-30 with 29
at mid-bridge, nose base 31-35 with 33 at its centre, eyes 36-47, outer lips 48-59 with corners 48/54,
inner lips 60-67, chin 8). mediapipe's face mesh (pip-installable, model inside the wheel, no network)
gives 468 points; `_MESH_BLENDS` picks, for each iBUG point, the mesh vertex on the same facial
feature. Where the mesh has no vertex at the iBUG spot (nose bridge 28 and 29), the point is a blend of
two mesh vertices, so 29 lies two-thirds of the way down the nose as in OpenFace, and the crop DINet
places from it (top at 29, centre at 33, size from the chin and the mouth corners) sits where it would
with OpenFace. The upper jaw points (0-3, 13-16) follow the mesh's face oval, which runs nearer the ears
than OpenFace's jaw line; DINet's geometry does not use them.

`detect_landmarks(frames)` runs the mesh in video mode (tracking between frames), fills frames without
a face from their neighbours, and smooths each point over time.
"""
import contextlib
import importlib
import os
import sys
import threading
import warnings

import cv2
import numpy as np
from scipy.signal import savgol_filter

from common.errors import UserError

NUM_POINTS = 68
# protobuf 4 warns, on each frame with a face, that mediapipe 0.10 uses a deprecated call: not ours to fix, nor the
# user's. Set on import, before any detector thread: a thread inside catch_warnings (mediapipe's imports, ctypes)
# when the filter is added puts back the filters without it as it leaves
warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)

# For each iBUG point: (mesh vertex a, mesh vertex b, weight of b). Image-left is the subject's right.
_MESH_BLENDS = (
    # jaw 0-16, image-left ear level -> chin (8) -> image-right ear level
    [(127, 127, 0), (234, 234, 0), (93, 93, 0), (132, 132, 0), (58, 58, 0), (136, 136, 0),
     (150, 150, 0), (176, 176, 0), (152, 152, 0), (400, 400, 0), (379, 379, 0), (365, 365, 0),
     (288, 288, 0), (361, 361, 0), (323, 323, 0), (454, 454, 0), (356, 356, 0)]
    # brows 17-21 (image-left, outer -> inner) and 22-26 (image-right, inner -> outer)
    + [(70, 70, 0), (63, 63, 0), (105, 105, 0), (66, 66, 0), (107, 107, 0),
       (336, 336, 0), (296, 296, 0), (334, 334, 0), (293, 293, 0), (300, 300, 0)]
    # nose bridge 27-30, evenly spaced from between the eyes (6, at eye-corner height) to the tip (1)
    + [(6, 6, 0), (6, 1, 1 / 3), (6, 1, 2 / 3), (1, 1, 0)]
    # nose base 31-35, image-left wing -> subnasale (33) -> image-right wing
    + [(98, 98, 0), (97, 97, 0), (2, 2, 0), (326, 326, 0), (327, 327, 0)]
    # eyes 36-41 (image-left: outer corner, upper lid x2, inner corner, lower lid x2) and 42-47 (image-right)
    + [(33, 33, 0), (160, 160, 0), (158, 158, 0), (133, 133, 0), (153, 153, 0), (144, 144, 0),
       (362, 362, 0), (385, 385, 0), (387, 387, 0), (263, 263, 0), (373, 373, 0), (380, 380, 0)]
    # outer lips 48-59: corner 48, upper lip to centre 51, corner 54, lower lip back through centre 57
    + [(61, 61, 0), (40, 40, 0), (37, 37, 0), (0, 0, 0), (267, 267, 0), (270, 270, 0), (291, 291, 0),
       (321, 321, 0), (405, 405, 0), (17, 17, 0), (181, 181, 0), (91, 91, 0)]
    # inner lips 60-67: corner 60, upper 61-63, corner 64, lower 65-67
    + [(78, 78, 0), (81, 81, 0), (13, 13, 0), (311, 311, 0), (308, 308, 0), (402, 402, 0), (14, 14, 0),
       (178, 178, 0)]
)
assert len(_MESH_BLENDS) == NUM_POINTS
_MESH_A = np.array([a for a, _, _ in _MESH_BLENDS])
_MESH_B = np.array([b for _, b, _ in _MESH_BLENDS])
_WEIGHT_B = np.array([w for _, _, w in _MESH_BLENDS], dtype=np.float32)[:, None]  # (68, 1)

# iBUG index groups, for drawing and for smoothing the mouth less than the rigid face.
GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
          "outer_lips": range(48, 60), "inner_lips": range(60, 68)}
MOUTH = np.arange(48, 68)

# Savitzky-Golay windows (frames at 25 fps). The rigid face moves slowly, so a longer window removes the
# detector's frame-to-frame jitter, which would otherwise shake DINet's crop; lips move with every
# phoneme (~80 ms), so they get a short window that keeps openings and closings.
RIGID_WINDOW, MOUTH_WINDOW, POLY_ORDER = 9, 5, 2


def ibug68_from_mesh(mesh_points):
    """(..., 468, 2) face-mesh points -> (..., 68, 2) iBUG points, in the same units."""
    mesh_points = np.asarray(mesh_points, dtype=np.float32)
    a, b = mesh_points[..., _MESH_A, :], mesh_points[..., _MESH_B, :]
    return a + (b - a) * _WEIGHT_B


class _NativeStderr:
    """Silence stderr at the file-descriptor level while mediapipe starts: its C++ start-up logs several INFO and
    WARNING lines per process (one set per worker) that say nothing to a user. File descriptor 2 is the process's,
    so threads starting detectors at once share one silence, which ends when the last of them has started."""

    def __init__(self):
        self.lock, self.starting, self.saved = threading.Lock(), 0, None

    @contextlib.contextmanager
    def quiet(self):
        with self.lock:
            if not self.starting:
                sys.stderr.flush()
                self.saved = os.dup(2)
                with open(os.devnull, "w") as devnull:
                    os.dup2(devnull.fileno(), 2)
            self.starting += 1
        try:
            yield
        finally:
            with self.lock:
                self.starting -= 1
                if not self.starting:
                    os.dup2(self.saved, 2)
                    os.close(self.saved)


_quiet_native_stderr = _NativeStderr().quiet
BLANK = np.zeros((64, 64, 3), np.uint8)  # mediapipe logs its start-up on the first frame: one given while quiet


def _face_mesh():
    """mediapipe's FaceMesh in video mode, imported only when landmarks are detected."""
    return _mediapipe_solution("face_mesh", "FaceMesh")(
        static_image_mode=False, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.5,
        min_tracking_confidence=0.5)


@contextlib.contextmanager
def face_mesh():
    """A started face mesh in video mode (one face, tracked from frame to frame), for `mesh_landmarks`."""
    with _quiet_native_stderr():
        mesh = _face_mesh()
        mesh.process(BLANK)
    with mesh:
        yield mesh


def mesh_landmarks(mesh, image):
    """(68, 2) float32 pixel landmarks of the face the mesh finds in an (H, W, 3) uint8 RGB image, or None."""
    result = mesh.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        return None
    height, width = image.shape[:2]
    points = np.array([(point.x, point.y) for point in result.multi_face_landmarks[0].landmark], dtype=np.float32)
    return ibug68_from_mesh(points * np.array([width, height], dtype=np.float32))


def _mediapipe_solution(module, name):
    """A class of mediapipe's solutions, or one line saying how to install mediapipe."""
    try:
        solution = getattr(importlib.import_module(f"mediapipe.python.solutions.{module}"), name)
    except ImportError:
        raise UserError("mediapipe is not installed, so landmarks cannot be detected: run "
                         "`pip install mediapipe==0.10.14`, or pass --openface_landmark_dir with OpenFace CSVs")
    except TypeError as error:  # what protobuf >= 5 raises inside mediapipe 0.10's generated code
        raise UserError(f"mediapipe cannot be imported ({error}); it needs protobuf<5: "
                         f"run `pip install -r requirements.txt`")
    return solution


@contextlib.contextmanager
def _detectors():
    """mediapipe's two face detectors, started: the short-range model (faces within about 2 m) and the full-range one
    (smaller faces)."""
    solution = _mediapipe_solution("face_detection", "FaceDetection")
    with contextlib.ExitStack() as started:
        with _quiet_native_stderr():
            # at mediapipe's default 0.5 the short-range model took a lap for a face (0.51-0.55; faces measured
            # 0.63-0.95)
            near, far = (started.enter_context(solution(model_selection=model, min_detection_confidence=0.6))
                         for model in (0, 1))
            near.process(BLANK), far.process(BLANK)
        yield near, far


@contextlib.contextmanager
def face_detector():
    """`boxes(image)` -> (k, 4) float32 (left, top, right, bottom) pixel boxes of the faces mediapipe's face detectors
    find in an (H, W, 3) uint8 RGB image: the short-range model, and where it finds none the full-range one;
    `boxes(image, small=True)` the full-range one only, whose boxes are tighter. Boxes span brows to chin; the face
    mesh follows one face only, so this is how several are told apart."""
    with _detectors() as (near, far):
        def boxes(image, small=False):
            image = np.ascontiguousarray(image)
            detections = (not small and near.process(image).detections) or far.process(image).detections or []
            height, width = image.shape[:2]
            found = [(box.xmin, box.ymin, box.xmin + box.width, box.ymin + box.height)
                     for box in (d.location_data.relative_bounding_box for d in detections)]
            return np.array(found, np.float32).reshape(-1, 4) * np.array([width, height, width, height], np.float32)
        yield boxes


def face_turns(frames):
    """Per (H, W, 3) uint8 RGB frame, the quarter turns clockwise (0-3) that set its face upright: those under which
    the detectors are surest of a face (they find faces on their side too, less surely: 0.77 against 0.94 measured);
    None where they find none at any turn."""
    turns = []
    with _detectors() as detectors:
        for frame in frames:
            scores = [max((detection.score[0] for detector in detectors
                           for detection in detector.process(np.ascontiguousarray(np.rot90(frame, -k))).detections
                           or ()), default=0.0) for k in range(4)]
            turns.append(int(np.argmax(scores)) if max(scores) else None)
    return turns


TURNS = {1: "transpose=clock", 2: "hflip,vflip", 3: "transpose=cclock"}  # ffmpeg's quarter turns clockwise


def mostly_turned(turns):
    """(the commonest quarter turn that sets them upright, how many of how many faces need a turn) when most of the
    faces of `turns` (face_turns's, None: no face) are on their side or upside down; else None."""
    faces = [turn for turn in turns if turn is not None]
    turned = [turn for turn in faces if turn]
    if len(turned) <= len(faces) / 2:
        return None
    return max(set(turned), key=turned.count), len(turned), len(faces)


def not_upright(path, frames):
    """Why the video at `path` cannot be learnt from, when the face is on its side or upside down in most of these
    of its frames that show one (with the ffmpeg command that turns it upright); else None."""
    found = mostly_turned(face_turns(frames))
    if found is None:
        return None
    turn, turned, faces = found
    return (f"{path}: the face is {'upside down' if turn == 2 else 'on its side'} in {turned} of {faces} "
            f"frames looked at, and the model learns upright faces; turn the video upright: "
            f"ffmpeg -i {path} -vf {TURNS[turn]} -c:a copy upright.mp4")


# of a video's frames looked at, the share showing several faces that makes it several people's (data preparation
# and train_person.py both refuse such a video: the crops would follow one face, maybe not the speaker's)
SEVERAL_FACES_SHARE = 0.25


def count_faces(frames):
    """(T,) the number of faces found in each (H, W, 3) uint8 RGB frame (`face_detector`)."""
    with face_detector() as boxes:
        return np.array([len(boxes(frame)) for frame in frames], dtype=int)


def detect_landmarks(frames, smooth=True):
    """68-point landmarks for a sequence of (H, W, 3) uint8 RGB frames (one video, in order).

    Returns (landmarks (T, 68, 2) float32 pixel coordinates, found (T,) bool). Frames where no face was
    found get landmarks interpolated from the nearest frames that have one (held at the ends), with
    found=False; if no frame has a face, all landmarks are zero. With `smooth`, points are filtered over
    time (Savitzky-Golay, shorter window for the mouth).
    """
    detected, found = [], []
    with face_mesh() as mesh:
        for frame in frames:
            points = mesh_landmarks(mesh, frame)
            found.append(points is not None)
            detected.append(points if points is not None else np.zeros((NUM_POINTS, 2), dtype=np.float32))
    landmarks = np.stack(detected) if detected else np.zeros((0, NUM_POINTS, 2), dtype=np.float32)
    found = np.array(found, dtype=bool)
    landmarks = fill_missing(landmarks, found)
    if smooth and found.any():
        landmarks = smooth_landmarks(landmarks)
    return landmarks.astype(np.float32), found


def fill_missing(landmarks, found):
    """Landmarks of frames with found=False, linearly interpolated over time from frames with a face."""
    if found.all() or not found.any():
        return landmarks
    times = np.arange(len(landmarks))
    flat = landmarks.reshape(len(landmarks), -1)  # (T, 136)
    filled = np.stack([np.interp(times, times[found], flat[found, k]) for k in range(flat.shape[1])], axis=1)
    return filled.reshape(landmarks.shape).astype(landmarks.dtype)


def smooth_landmarks(landmarks):
    """Savitzky-Golay filter over time, per point: RIGID_WINDOW for the face, MOUTH_WINDOW for the lips."""
    smoothed = landmarks.astype(np.float64).copy()
    rigid = np.setdiff1d(np.arange(NUM_POINTS), MOUTH)
    for points, window in ((rigid, RIGID_WINDOW), (MOUTH, MOUTH_WINDOW)):
        window = min(window, len(landmarks) - (1 - len(landmarks) % 2))  # odd, no longer than the video
        if window > POLY_ORDER:
            smoothed[:, points] = savgol_filter(landmarks[:, points], window, POLY_ORDER, axis=0, mode="nearest")
    return smoothed.astype(np.float32)


# BGR colours per group, for `draw_landmarks` (images are written with cv2).
GROUP_COLOURS = {"jaw": (255, 128, 0), "brows": (0, 200, 255), "nose": (0, 255, 0), "eyes": (255, 0, 255),
                 "outer_lips": (0, 0, 255), "inner_lips": (255, 255, 0)}


def draw_landmarks(image_bgr, landmarks, numbered=True):
    """A copy of a BGR image with the 68 points drawn, coloured by group and (if `numbered`) labelled with
    their iBUG index, so a person can check that 8 sits on the chin, 33 under the nose, 48/54 at the corners."""
    image = image_bgr.copy()
    scale = max(image.shape[:2]) / 1000  # readable labels on both 256-pixel crops and 1920-pixel frames
    radius, font_scale = max(1, round(3 * scale)), max(0.3, 0.5 * scale)
    for group, indices in GROUPS.items():
        for index in indices:
            x, y = (int(round(v)) for v in landmarks[index])
            cv2.circle(image, (x, y), radius, GROUP_COLOURS[group], -1)
            if numbered:
                cv2.putText(image, str(index), (x + radius + 1, y - radius), cv2.FONT_HERSHEY_SIMPLEX,
                            font_scale, GROUP_COLOURS[group], max(1, round(scale)), cv2.LINE_AA)
    return image
