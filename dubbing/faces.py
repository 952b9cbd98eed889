"""Whom to dub, and in which frames: shots, faces tracked across frames, the chosen face's landmarks.

    frames -> shots (a colour-histogram cut detector on small copies of the frames)
           -> face boxes per frame (mediapipe's face detectors; where a shot's faces are small, again in windows of
              the full frame) -> tracks within each shot (kept by position and size)
           -> the chosen track per shot (--face: largest, N-th from the left, or the face at x,y)
           -> its 68 landmarks (the face mesh run on a box around that face only), checked frame by frame
           -> `FaceTrack`: landmarks, which frames have a usable face (and why not), the shot of each frame.

A frame is usable when the chosen face is found there, is large enough, frontal enough and where its neighbours
say it is; gaps of a frame or two inside a shot are filled from both sides. Landmarks are smoothed within runs of
usable frames, never across a cut or a gap. No identity is known across a cut: the choice is made again in each shot.
"""
import bisect
import contextlib
import itertools
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.ndimage import median_filter
from tqdm import tqdm

from common.errors import UserError
from data.landmark_detector import (NUM_POINTS, face_detector, face_mesh, face_turns, mesh_landmarks, mostly_turned,
                                    smooth_landmarks)

THUMBNAIL_SIDE = 480    # px of the longer side at which frames are looked at for cuts and face boxes
CUT_DISTANCE = 0.4      # Bhattacharyya distance between consecutive frames' colour histograms that is a cut:
                        # a talking head stays under 0.2 from frame to frame, a cut between two clips measured 0.79
TRACK_OVERLAP = 0.3     # intersection over union of boxes in consecutive frames that continues a track
TRACK_GAP = 5           # frames a track may go undetected and still continue
MIN_TRACK = 8           # detections a track needs (a third of a second) to be a face and not the detector's mistake
MESH_MARGIN = 0.8       # the mesh looks at the face box grown by this fraction of its size on each side
MIN_CROP_RADIUS = 12    # px: a smaller face is passed through (its crop would be upscaled from a few pixels)
MAX_YAW = 0.5           # nose tip off the eyes' midpoint, over the eyes' distance: beyond it, too far in profile
MAX_JUMP = 0.25         # of the face's size: a frame whose face is further than this from its neighbours' is not it
FILL_GAP = 2            # missing frames between usable ones in a shot that are filled from both sides
ZOOM_WINDOW = 540       # px of the full frame a closer look covers: the detectors shrink what they see to 128-192 px
                        # and find faces from about a ninth of it: faces from 60 px, the smallest worth dubbing
SMALL_FACE = 1 / 8      # of the frame's longer side: larger faces are found in whole frames, so only a shot that
                        # misses faces in some frames and whose faces are smaller (or unseen) is looked at closer
REASONS = {"face": "", "none": "no face found", "small": "face too small", "profile": "face in profile",
           "turned": "face on its side or upside down",
           "jump": "face unlike its neighbours", "crop": "face crop leaves the picture"}


@dataclass(frozen=True)
class FaceChoice:
    """--face: `largest`, the N-th face from the left (`index`, from 1), or the face containing a point."""
    kind: str = "largest"
    index: int = 0
    point: tuple = ()

    def __str__(self):
        if self.kind == "point":
            return "{:g},{:g}".format(*self.point)
        return str(self.index) if self.kind == "index" else "largest"


def parse_face(text):
    """argparse type of --face: `largest`, N or x,y (its error names the value; argparse adds the flag)."""
    text = text.strip()
    if text == "largest":
        return FaceChoice()
    if re.fullmatch(r"[1-9]\d*", text):
        return FaceChoice("index", int(text))
    match = re.fullmatch(r"(\d+(?:\.\d*)?),(\d+(?:\.\d*)?)", text)
    if match:
        return FaceChoice("point", point=(float(match.group(1)), float(match.group(2))))
    raise ValueError(f"'{text}': use largest, N (the N-th face from the left, from 1) or x,y (pixels)")


@dataclass
class FaceTrack:
    """Per source frame: landmarks (T, 68, 2) of the dubbed face (zeros where there is none), `reason` (T,) a key
    of REASONS ("face" where it is usable), `shot` (T,) the shot's number; `chosen` says whom, per shot."""
    landmarks: np.ndarray
    reason: np.ndarray
    shot: np.ndarray
    chosen: list = field(default_factory=list)

    @property
    def usable(self):
        return self.reason == "face"

    @classmethod
    def whole(cls, landmarks):
        """Landmarks given for every frame (an OpenFace CSV): one shot, every frame usable."""
        count = len(landmarks)
        return cls(landmarks, np.full(count, "face", dtype=object), np.zeros(count, int), ["the landmark file's face"])


# ---------------------------------------------------------------------------------------------- shots

def colour_signature(thumbnail):
    """A normalised hue-saturation-value histogram of a small RGB frame, for `is_cut`."""
    hsv = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1, 2], None, [16, 4, 4], [0, 180, 0, 256, 0, 256])
    return cv2.normalize(histogram, histogram).flatten()


def is_cut(previous, signature):
    return cv2.compareHist(previous, signature, cv2.HISTCMP_BHATTACHARYYA) > CUT_DISTANCE


# ---------------------------------------------------------------------------------------------- tracks

def overlap(a, b):
    """Intersection over union of boxes (left, top, right, bottom)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@dataclass
class Track:
    """A face's boxes in one shot, frame by frame; frames are added in increasing order."""
    shot: int
    boxes: dict = field(default_factory=dict)  # frame -> box
    frames: list = field(default_factory=list)  # the keys of boxes, in order

    def add(self, frame, box):
        self.boxes[frame] = box
        self.frames.append(frame)

    @property
    def first(self):
        return self.frames[0]

    @property
    def last(self):
        return self.frames[-1]

    def area(self):
        """Area times time: the face that fills most of its shot."""
        return sum((box[2] - box[0]) * (box[3] - box[1]) for box in self.boxes.values())

    def box(self, frame):
        """The box at `frame`, interpolated between detections across a gap of up to TRACK_GAP frames."""
        if frame in self.boxes:
            return self.boxes[frame]
        after = bisect.bisect(self.frames, frame)
        if after == 0 or after == len(self.frames):
            return None
        before, after = self.frames[after - 1], self.frames[after]
        if after - before > TRACK_GAP + 1:
            return None
        weight = (frame - before) / (after - before)
        return tuple(a + (b - a) * weight for a, b in zip(self.boxes[before], self.boxes[after]))


def distinct(boxes):
    """Boxes largest first, less those overlapping a larger one by over TRACK_OVERLAP: the detector's duplicates."""
    taken = []
    for box in sorted(map(tuple, boxes), key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
        if all(overlap(box, other) <= TRACK_OVERLAP for other in taken):
            taken.append(box)
    return taken


def track_faces(boxes_per_frame, shot_per_frame):
    """Tracks of face boxes: each frame's distinct boxes continue the tracks of the same shot they overlap most (seen
    within TRACK_GAP frames), largest first."""
    tracks, open_tracks = [], []
    for frame, (boxes, shot) in enumerate(zip(boxes_per_frame, shot_per_frame)):
        open_tracks = [track for track in open_tracks if track.shot == shot and frame - track.last <= TRACK_GAP]
        continued = set()
        for box in distinct(boxes):
            scores = [(overlap(box, track.boxes[track.last]), i) for i, track in enumerate(open_tracks)
                      if i not in continued]
            best = max(scores, default=(0.0, None))
            if best[0] > TRACK_OVERLAP:
                open_tracks[best[1]].add(frame, box)
                continued.add(best[1])
            else:
                track = Track(shot)
                track.add(frame, box)
                tracks.append(track)
                open_tracks.append(track)
    return tracks


def same_faces(tracks, shot):
    """Tracks joined where a face left the picture (or was hidden) and came back within its shot: a track that starts
    after another has ended continues it when their boxes are of a size (within 1.5x), the nearest such. Tracks
    seen in fewer than MIN_TRACK frames (or half a shorter shot) are dropped first: the detector's passing mistakes."""
    lengths = np.bincount(shot)
    joined = []
    for track in sorted(tracks, key=lambda t: t.first):
        if len(track.boxes) < max(1, min(MIN_TRACK, lengths[track.shot] // 2)):
            continue
        start = track.boxes[track.first]
        size = lambda box: max(box[2] - box[0], box[3] - box[1])
        alike = lambda box: max(size(start), size(box)) < 1.5 * min(size(start), size(box))
        ended = [other for other in joined if other.shot == track.shot and other.last < track.first
                 and alike(other.boxes[other.last])]
        if ended:
            nearest = min(ended, key=lambda o: np.hypot(*np.subtract(o.boxes[o.last][:2], start[:2])))
            for frame in track.frames:  # after all of nearest's: it ended before this one began
                nearest.add(frame, track.boxes[frame])
        else:
            joined.append(track)
    return joined


def _where(box, scale):
    left, top, right, bottom = (value / scale for value in box)
    return f"x {left:.0f} to {right:.0f}, y {top:.0f} to {bottom:.0f}"  # a box past the left edge: x -7 to 194


def choose_tracks(tracks, choice, scale):
    """{shot: its chosen track}; a choice that fits no shot is one line saying how many faces were found, where."""
    chosen = {}
    for shot in sorted({track.shot for track in tracks}):
        in_shot = [track for track in tracks if track.shot == shot]
        if choice.kind == "largest":
            chosen[shot] = max(in_shot, key=Track.area)
            continue
        if choice.kind == "index":
            first = min(track.first for track in in_shot)  # the shot's first frame with a face
            present = sorted((t for t in in_shot if first in t.boxes), key=lambda t: t.boxes[first][0])
            if len(present) >= choice.index:
                chosen[shot] = present[choice.index - 1]
            continue
        x, y = (value * scale for value in choice.point)
        inside = [t for t in in_shot if any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in t.boxes.values())]
        if inside:
            chosen[shot] = max(inside, key=lambda t: sum(b[0] <= x <= b[2] and b[1] <= y <= b[3]
                                                         for b in t.boxes.values()))
    if not chosen:
        first = min(tracks, key=lambda track: track.first).first
        faces = sorted((track.boxes[first] for track in tracks if first in track.boxes), key=lambda box: box[0])
        where = "; ".join(f"{i + 1}: {_where(box, scale)}" for i, box in enumerate(faces))
        raise UserError(f"--face {choice}: no shot has that face; {len(faces)} face(s) found in frame {first} "
                        f"({where}); pass --face largest, a number up to {len(faces)} or a point inside a face")
    return chosen


# ---------------------------------------------------------------------------------------------- landmarks

def turn(landmarks):
    """(T, 68, 2) -> (T,) how far each face is turned: the nose tip (30) off the outer eye corners' midpoint, over
    their distance (0 frontal)."""
    eyes = np.maximum(np.abs(landmarks[:, 45, 0] - landmarks[:, 36, 0]), 1e-6)
    return np.abs(landmarks[:, 30, 0] - (landmarks[:, 36, 0] + landmarks[:, 45, 0]) / 2) / eyes


def _checked(landmarks, found, shot):
    """REASONS' key per frame for mesh landmarks: too small, in profile, or unlike its neighbours."""
    reason = np.where(found, "face", "none").astype(object)
    radius = np.maximum(landmarks[:, :, 1].max(axis=1) - landmarks[:, 29, 1],
                        landmarks[:, 54, 0] - landmarks[:, 48, 0]) / 2
    reason[found & (radius < MIN_CROP_RADIUS)] = "small"
    reason[(reason == "face") & (turn(landmarks) > MAX_YAW)] = "profile"
    for start, stop in runs(reason == "face", shot):  # against the median of its neighbours within the run
        centre = landmarks[start:stop, 33]
        typical = median_filter(centre, size=(7, 1), mode="nearest")
        far = np.linalg.norm(centre - typical, axis=1) > MAX_JUMP * 2 * radius[start:stop]
        reason[start:stop][far] = "jump"
    return reason


def runs(mask, shot):
    """[(start, stop)] of the runs of True in `mask` that stay within one shot."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    spans = []
    for start, stop in zip(edges[::2], edges[1::2]):
        cuts = np.flatnonzero(np.diff(shot[start:stop])) + start + 1
        bounds = [start, *cuts, stop]
        spans += list(zip(bounds[:-1], bounds[1:]))
    return spans


def _fill_gaps(landmarks, reason, shot):
    """Gaps of up to FILL_GAP frames between usable frames of one shot: landmarks interpolated, usable."""
    usable = reason == "face"
    for start, stop in runs(~usable, shot):
        if 0 < start and stop < len(reason) and stop - start <= FILL_GAP and usable[start - 1] and usable[stop] \
                and shot[start - 1] == shot[stop]:
            weight = ((np.arange(start, stop) - start + 1) / (stop - start + 1))[:, None, None]
            landmarks[start:stop] = landmarks[start - 1] + (landmarks[stop] - landmarks[start - 1]) * weight
            reason[start:stop] = "face"


def find_face(video, choice=FaceChoice(), timings=None, progress=False, threads=1):
    """The FaceTrack of the face `choice` picks in a DecodedVideo, frames read as they decode. `timings(stage)`
    (dubbing's Timings) times `shots`, `tracking` and `landmarks`; two passes over the frames (with `progress`, each
    with a progress bar): small copies for cuts and face boxes, on `threads` threads side by side, then the mesh on
    the chosen face's box, a shot to a thread."""
    timed = timings or (lambda stage: contextlib.nullcontext())
    width, height = video.size
    scale = min(1.0, THUMBNAIL_SIDE / max(width, height))
    signatures, boxes = _look_at_frames(video, scale, timed, progress, threads)
    with timed("shots"):
        shot = np.zeros(len(signatures), int)
        shot[1:] = np.cumsum([is_cut(a, b) for a, b in zip(signatures, signatures[1:])])
    with timed("landmarks"):
        boxes = _look_closer(video, list(boxes), shot, scale, progress, threads)
    count = len(shot)
    landmarks = np.zeros((count, NUM_POINTS, 2), np.float32)
    found = np.zeros(count, bool)
    with timed("tracking"):
        tracks = same_faces(track_faces(boxes, shot), shot)
        chosen = choose_tracks(tracks, choice, scale) if tracks else {}
    if not chosen:
        return FaceTrack(landmarks, np.full(count, "none", dtype=object), shot)
    bar = _Bar(total=sum(track.last + 1 - track.first for track in chosen.values()), desc="landmarks",
               disable=not progress)

    def mesh_shot(track, stop):
        with face_mesh() as mesh:  # a new mesh per shot: its tracking must not carry across a cut
            for frame in range(track.first, track.last + 1):
                if stop.is_set():
                    return
                bar.update()
                box = track.box(frame)
                if box is None:
                    continue
                face = [value / scale for value in box]
                top, bottom, left, right = _surroundings(box, scale, video.size)
                points = mesh_landmarks(mesh, video.region(frame, top, bottom, left, right))
                nose = points[30] + (left, top) if points is not None else None
                # the mesh sees a margin around the face: a neighbour's face there is not the chosen one
                if nose is not None and face[0] <= nose[0] <= face[2] and face[1] <= nose[1] <= face[3]:
                    landmarks[frame] = points + np.array([left, top], np.float32)
                    found[frame] = True
    with timed("landmarks"), bar:
        _side_by_side(mesh_shot, list(chosen.values()), threads, "dub-mesh")  # shots share nothing
        turned = _turned(video, list(chosen.values()), scale)
    with timed("tracking"):
        reason = _checked(landmarks, found, shot)
        for track in turned:  # the mesh fits an upright face to it all the same: its mouth would be elsewhere
            reason[track.first:track.last + 1] = "turned"
        _fill_gaps(landmarks, reason, shot)
        for start, stop in runs(reason == "face", shot):
            landmarks[start:stop] = smooth_landmarks(landmarks[start:stop])
    described = [f"shot {number + 1} (from {np.flatnonzero(shot == number)[0] / video.fps:.2f} s): face at "
                 f"{_where(track.boxes[track.first], scale)} px in frame {track.first}"
                 for number, track in sorted(chosen.items())]
    return FaceTrack(landmarks, reason, shot, described)


def _surroundings(box, scale, size):
    """(top, bottom, left, right) of the full frame around a thumbnail face box, grown by MESH_MARGIN of its size on
    each side and kept inside the picture: what the mesh looks at."""
    width, height = size
    left, top, right, bottom = (value / scale for value in box)
    margin = MESH_MARGIN * max(right - left, bottom - top)
    return (max(0, int(top - margin)), min(height, int(bottom + margin)), max(0, int(left - margin)),
            min(width, int(right + margin)))


def _turned(video, tracks, scale):
    """The tracks whose face is on its side or upside down: in most of their first, middle and last frames, the
    detectors are surer of it turned upright than as it is (face_turns, one start of the detectors for them all)."""
    looked = [(track, frame) for track in tracks
              for frame in sorted({track.first, track.frames[len(track.frames) // 2], track.last})]
    turns = face_turns([video.region(frame, *_surroundings(track.boxes[frame], scale, video.size))
                        for track, frame in looked])
    return [track for track in tracks
            if mostly_turned([turn for (owner, _), turn in zip(looked, turns) if owner is track]) is not None]


def _look_at_frames(video, scale, timed, progress, threads):
    """Per frame of a DecodedVideo, in order: its colour signature and face boxes (`face_detector`), found on its
    small copy as it decodes. Each of `threads` threads takes every `threads`-th frame with a detector of its own:
    the detector keeps nothing from frame to frame, so the boxes are the same for any number of threads."""
    looks = {}
    bar = _Bar(total=video.expected_frames, desc="finding faces", disable=not progress)

    def look(first, stop):
        with face_detector() as detect:
            for frame in itertools.count(first, threads):
                video.wait_for(frame)
                if stop.is_set() or frame >= len(video.frames):
                    return
                with timed("shots"):
                    thumbnail = video.thumbnail(frame, scale) if scale < 1 else video.rgb(frame)
                    signature = colour_signature(thumbnail)
                with timed("landmarks"):
                    looks[frame] = signature, detect(thumbnail)
                bar.update()
    with bar:
        _side_by_side(look, range(threads), threads, "dub-faces")
    return tuple(zip(*(looks[frame] for frame in range(len(looks))))) or ((), ())


def _windows(frame_size, boxes, scale):
    """Full-frame (top, bottom, left, right) windows of at least ZOOM_WINDOW px (4 face sizes for a larger face),
    centred on thumbnail `boxes` and kept inside the picture; tiles overlapping by half over the whole frame where
    `boxes` is None."""
    width, height = frame_size
    if boxes is None:
        side = min(ZOOM_WINDOW, width, height)
        corners = [(top, left) for top in np.linspace(0, height - side, int(np.ceil(2 * (height - side) / side)) + 1)
                   for left in np.linspace(0, width - side, int(np.ceil(2 * (width - side) / side)) + 1)]
        return [(int(top), int(top) + side, int(left), int(left) + side) for top, left in corners]
    windows = []
    for left, top, right, bottom in np.asarray(boxes) / scale:
        side = int(min(max(ZOOM_WINDOW, 4 * max(right - left, bottom - top)), width, height))
        x = int(np.clip((left + right - side) / 2, 0, width - side))
        y = int(np.clip((top + bottom - side) / 2, 0, height - side))
        windows.append((y, y + side, x, x + side))
    return windows


def _look_closer(video, boxes, shot, scale, progress, threads):
    """Faces too small for the detectors to find in every whole frame, found in windows of the full frame. A shot
    with frames without a face, whose faces are all smaller than SMALL_FACE (or which has none; a larger one in
    fewer than MIN_TRACK frames is the detectors' mistake), is looked at again, each frame in windows around the
    faces found in the frame before it (or after it, before the first), starting where whole frames showed a face; a
    shot with none is first searched in tiles, on a frame every 5 s. Its boxes are then all the full-range detector's,
    whose boxes are tighter than the short-range one's: one detector's boxes follow each other from frame to frame.
    Frames smaller than two windows are left as they are."""
    width, height = video.size
    if max(width, height) < 2 * ZOOM_WINDOW:
        return boxes
    small = SMALL_FACE * max(width, height) * scale
    shots = [np.flatnonzero(shot == number) for number in range(shot[-1] + 1)] if len(shot) else []
    shots = [frames for frames in shots if any(not len(boxes[f]) for f in frames)
             and sum(any(max(b[2] - b[0], b[3] - b[1]) >= small for b in boxes[f]) for f in frames) < MIN_TRACK]
    bar = _Bar(total=sum(map(len, shots)), desc="looking closer", disable=not progress)

    def look(frames, stop):
        with face_detector() as detect:
            def around(frame, near):
                found = [detect(video.region(frame, top, bottom, left, right), small=True) + (left, top, left, top)
                         for top, bottom, left, right in _windows(video.size, near, scale)]
                return np.array(distinct(np.concatenate(found) * scale), np.float32).reshape(-1, 4)
            seen = {i: boxes[f] for i, f in enumerate(frames) if len(boxes[f])}
            for i in range(min(62, len(frames) // 2), len(frames), 125) if not seen else ():  # every 5 s
                tiles = around(frames[i], None)
                seen.update({i: tiles} if len(tiles) else {})
            if not seen:
                return bar.update(len(frames))
            first, closer = min(seen), {}
            for order in (range(first, len(frames)), range(first, -1, -1)):  # onwards, then back
                near = seen[first]
                for i in order:
                    if stop.is_set():
                        return
                    if i not in closer:
                        closer[i] = around(frames[i], near)
                        bar.update()
                    near = closer[i] if len(closer[i]) else seen.get(i, near)
            for i, frame in enumerate(frames):
                boxes[frame] = closer[i]
    with bar:
        _side_by_side(look, shots, threads, "dub-closer")
    return boxes


def _side_by_side(work, items, threads, name):
    """work(item, stop) for every item, on up to `threads` threads. The first error is raised; then, or on Ctrl-C,
    `stop` is set, which each `work` looks at between frames."""
    stop = threading.Event()
    with ThreadPoolExecutor(max(1, min(threads, len(items))), name) as pool:
        try:
            for future in [pool.submit(work, item, stop) for item in items]:
                future.result()
        finally:
            stop.set()


class _Bar(tqdm):
    """A frame counter that threads update together."""

    def __init__(self, **options):
        super().__init__(unit="frame", leave=False, **options)
        self._count_lock = threading.Lock()

    def update(self, n=1):
        with self._count_lock:
            return super().update(n)


# ---------------------------------------------------------------------------------------------- output frames

FADE_FRAMES = 4  # the dubbed mouth fades in and out over this many frames beside frames passed through


def fade_weights(dubbed, shot):
    """(T,) weight of the generated mouth per output frame: 1 in dubbed frames FADE_FRAMES or more from a passed-
    through frame of the same shot, rising by 1/FADE_FRAMES a frame towards it; 0 where nothing is dubbed."""
    weight = np.zeros(len(dubbed), np.float32)
    for start, stop in runs(np.asarray(dubbed), np.asarray(shot)):
        steps, level = np.arange(stop - start), np.full(stop - start, FADE_FRAMES)
        rise = steps + 1 if start > 0 and shot[start - 1] == shot[start] else level
        fall = steps[::-1] + 1 if stop < len(dubbed) and shot[stop] == shot[stop - 1] else level
        weight[start:stop] = np.minimum(np.minimum(rise, fall), FADE_FRAMES) / FADE_FRAMES
    return weight


RANGES_SHOWN = 6


def describe_ranges(frames, reasons, fps=25):
    """'frames 50-99 (2.00-3.96 s): no face found; ...' for output frame numbers and their reasons."""
    parts, frames = [], list(frames)
    start = 0
    while start < len(frames):
        stop = start
        while stop + 1 < len(frames) and frames[stop + 1] == frames[stop] + 1 and reasons[stop + 1] == reasons[start]:
            stop += 1
        first, last = frames[start], frames[stop]
        span = f"frame {first}" if first == last else f"frames {first}-{last}"
        parts.append(f"{span} ({first / fps:.2f}-{(last + 1) / fps:.2f} s): {REASONS[reasons[start]]}")
        start = stop + 1
    shown = parts[:RANGES_SHOWN]
    return "; ".join(shown + ([f"and {len(parts) - len(shown)} more"] if len(parts) > len(shown) else []))
