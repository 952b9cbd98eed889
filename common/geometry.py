"""DINet's face-crop geometry, kept exactly, and the frame windows every stage shares.

For mouth size m: r = m/2, r4 = r/4; the face crop is (3r + r4) high and (2r + 2r4) wide
(m=64 -> 104x80, 128 -> 208x160, 256 -> 416x320). The mouth hole that the generator fills is
rows r..r+m, columns r4..r4+m. In a video frame the crop is placed from 68-point landmarks:
centre column at point 33 (nose tip), top at point 29 (nose bridge) minus the radius.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from common.errors import UserError

AUDIO_WINDOW = 5    # video frames of audio the generator sees, centred on the frame it makes
NUM_REFERENCES = 5  # reference frames the generator sees beside the masked source
CLIP_LENGTH = 9     # frames per training clip, as DINet cuts them
MOUTH_FRAMES = 5    # consecutive mouths a SyncNet (and the clip stage) judges at once
AUDIO_FRAMES = 9    # audio vectors a SyncNet hears with them: the mouths' frames and 2 more on each side
# The clip stage needs CLIP_LENGTH == AUDIO_FRAMES == MOUTH_FRAMES + AUDIO_WINDOW - 1 (its clip is one SyncNet window)
# Frames (about 2 s at 25 fps) whose landmarks size a crop. The chin drops as the mouth opens, so a radius taken
# over a clip's few frames (DINet's) makes the face smaller in the crop the wider the clip's mouth opens: a cue
# to the opening that dubbing with other speech contradicts. Over 2 s of speech the widest opening is nearly
# always there, so the crop's scale no longer tells the model how far this clip's mouth opens.
SIZING_WINDOW = 51


@dataclass(frozen=True)
class CropGeometry:
    mouth_size: int

    def __post_init__(self):
        m = self.mouth_size
        if m < 16 or m % 8 != 0:
            raise ValueError(f"mouth_region_size={m} cannot be used: DINet's crop geometry needs a multiple of 8, "
                             f"16 or more; use 64, 128 or 256 (the trained sizes)")

    @classmethod
    def checked(cls, mouth_size, flag="--mouth_region_size"):
        """The geometry of `mouth_size`, or exit naming the flag and the sizes to use."""
        try:
            return cls(mouth_size)
        except ValueError:
            raise UserError(f"{flag} {mouth_size}: DINet's crop geometry needs a multiple of 8, 16 or more; use 64, "
                             f"128 or 256 (the trained sizes)") from None

    @property
    def radius(self) -> int:
        return self.mouth_size // 2

    @property
    def radius_1_4(self) -> int:
        return self.radius // 4

    @property
    def height(self) -> int:
        return self.radius * 3 + self.radius_1_4

    @property
    def width(self) -> int:
        return self.radius * 2 + self.radius_1_4 * 2

    @property
    def mouth_rows(self) -> slice:
        return slice(self.radius, self.radius + self.mouth_size)

    @property
    def mouth_cols(self) -> slice:
        return slice(self.radius_1_4, self.radius_1_4 + self.mouth_size)


def mask_mouth(face_crop, geometry: CropGeometry):
    """A copy of a face crop (H, W, C array or (..., C, H, W) tensor) with DINet's mouth hole zeroed."""
    masked = face_crop.copy() if isinstance(face_crop, np.ndarray) else face_crop.clone()
    if isinstance(face_crop, np.ndarray):
        masked[geometry.mouth_rows, geometry.mouth_cols, :] = 0
    else:
        masked[..., geometry.mouth_rows, geometry.mouth_cols] = 0
    return masked


def compute_crop_radius(video_size, landmark_clip, random_scale=None, rng=None, sizing=None):
    """DINet's `compute_crop_radius`: one crop radius for a clip of 68-point landmarks.

    video_size is (width, height); landmark_clip is (T, 68, 2) in pixels. `sizing` (S, 68, 2), default the clip:
    the landmarks whose extent sets the radius (see SIZING_WINDOW). Returns the radius (a multiple of 4), or None
    when the crop leaves the frame in a frame of the clip or the face size changes by more than 1.5x within the
    sizing frames (DINet's limits).
    """
    video_w, video_h = video_size
    landmark_clip = np.asarray(landmark_clip, dtype=np.float64)
    sizing = landmark_clip if sizing is None else np.asarray(sizing, dtype=np.float64)
    if random_scale is None:
        random_scale = (rng.random() if rng is not None else np.random.random()) / 10 + 1.05
    landmark_max = sizing.max(axis=1)  # (S, 2)
    radius_h = (landmark_max[:, 1] - sizing[:, 29, 1]) * random_scale
    radius_w = (sizing[:, 54, 0] - sizing[:, 48, 0]) * random_scale
    radius_clip = np.max(np.stack([radius_h, radius_w], 1), 1) // 2
    radius = (int(np.max(radius_clip) / 4) + 1) * 4
    radius_1_4 = radius // 4
    min_h = landmark_clip[:, 29, 1] - radius
    max_h = landmark_clip[:, 29, 1] + radius * 2 + radius_1_4
    min_w = landmark_clip[:, 33, 0] - radius - radius_1_4
    max_w = landmark_clip[:, 33, 0] + radius + radius_1_4
    if min(min_h.min(), min_w.min()) < 0 or max_h.max() > video_h or max_w.max() > video_w:
        return None
    if radius_clip.max() > radius_clip.min() * 1.5:
        return None
    return radius


def sizing_frames(start, stop, labels, label=True):
    """Indices of the frames that size the crop of frames [start, stop): those of the SIZING_WINDOW frames centred
    on them whose entry in `labels` ((T,): e.g. face found, or segment number) is `label`, and always [start, stop)
    itself."""
    centre = (start + stop - 1) // 2
    low, high = max(0, centre - SIZING_WINDOW // 2), min(len(labels), centre + SIZING_WINDOW // 2 + 1)
    window = np.arange(low, high)
    return np.union1d(window[np.asarray(labels[low:high]) == label], np.arange(start, stop))


def crop_box(landmarks, radius):
    """(top, bottom, left, right) of DINet's face crop in a frame, from one frame's (68, 2) landmarks."""
    landmarks = np.asarray(landmarks).astype(int)
    radius_1_4 = radius // 4
    top = landmarks[29, 1] - radius
    bottom = landmarks[29, 1] + radius * 2 + radius_1_4
    left = landmarks[33, 0] - radius - radius_1_4
    right = landmarks[33, 0] + radius + radius_1_4
    return top, bottom, left, right


def paste_mask(geometry):
    """(H, W) float32 weights of the generated crop: 1 over the mouth hole, fading to 0 well inside the crop
    border (a Gaussian edge), so no box edge or colour step shows in the output."""
    mask = np.zeros((geometry.height, geometry.width), np.float32)
    mask[geometry.mouth_rows, geometry.mouth_cols] = 1
    sigma = geometry.mouth_size / 32  # 3 sigma < the m/8 margin between the hole and the crop border
    return cv2.GaussianBlur(mask, (0, 0), sigma)
