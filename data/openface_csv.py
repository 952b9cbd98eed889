"""68-point facial landmarks in OpenFace's CSV format (what DINet's data preparation reads).

OpenFace 2.x `FeatureExtraction` writes one row per frame with several hundred columns (gaze, pose,
2-D and 3-D landmarks, action units) and a header whose names follow ", ". The 2-D landmarks are the
columns x_0..x_67 and y_0..y_67 (the 3-D ones are X_/Y_/Z_, the eye landmarks eye_lmk_x_...), so they
are found by exact header name, never by position; the `success` column (0 where OpenFace, or our
detector, found no face in the frame) comes with them. `write_openface_csv` writes the minimal subset.
"""
import csv

import numpy as np

from common.errors import UserError
from common.files import atomic_output

NUM_POINTS = 68
X_COLUMNS = [f"x_{i}" for i in range(NUM_POINTS)]
Y_COLUMNS = [f"y_{i}" for i in range(NUM_POINTS)]
LEADING_COLUMNS = ["frame", "face_id", "timestamp", "confidence", "success"]


def write_openface_csv(path, landmarks, fps=25, found=None):
    """Write (T, 68, 2) pixel landmarks as an OpenFace CSV (frames numbered from 1, as OpenFace does).

    found: (T,) bool, whether a face was detected in each frame (written as `success`); default all True.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_POINTS, 2):
        raise ValueError(f"landmarks must be (T, 68, 2), got {landmarks.shape}")
    found = np.ones(len(landmarks), dtype=bool) if found is None else np.asarray(found, dtype=bool)
    with atomic_output(path) as partial, open(partial, "w", newline="") as f:
        f.write(", ".join(LEADING_COLUMNS + X_COLUMNS + Y_COLUMNS) + "\n")
        for index, (points, success) in enumerate(zip(landmarks, found)):
            leading = [str(index + 1), "0", f"{index / fps:.3f}", "0.98" if success else "0", str(int(success))]
            coordinates = [f"{value:.3f}" for value in np.concatenate([points[:, 0], points[:, 1]])]
            f.write(", ".join(leading + coordinates) + "\n")


def read_openface_csv(path, with_success=False):
    """(T, 68, 2) float landmarks from an OpenFace CSV (ours or OpenFace 2.x's), in file row order.

    with_success: also return (T,) bool, the `success` column (all True when the file has none).
    """
    with open(path, newline="") as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    if not rows:
        raise UserError(f"{path}: empty landmark file; rerun OpenFace FeatureExtraction on the video")
    header = [name.strip() for name in rows[0]]
    missing = [name for name in X_COLUMNS + Y_COLUMNS if name not in header]
    if missing:
        raise UserError(f"{path}: no 2-D landmark columns ({missing[0]} missing); run OpenFace "
                         f"FeatureExtraction with -2Dfp (or its default outputs) to write x_0..x_67, y_0..y_67")
    x_index = [header.index(name) for name in X_COLUMNS]
    y_index = [header.index(name) for name in Y_COLUMNS]
    try:
        table = np.array([row for row in rows[1:] if row], dtype=np.float64).reshape(-1, len(header))  # (T, columns)
    except ValueError:
        raise UserError(f"{path}: a row is not numbers or has the wrong number of columns; "
                         f"the file is damaged, make it again")
    landmarks = np.stack([table[:, x_index], table[:, y_index]], axis=2)  # (T, 68, 2)
    finite = np.isfinite(landmarks).all(axis=(1, 2))
    if not finite.all():  # OpenFace writes zeros, not NaN, where it found no face
        raise UserError(f"{path}: the landmarks of frame {np.flatnonzero(~finite)[0] + 1} (its row under the header) are "
                         f"not all finite numbers; the file is damaged, make it again")
    if not with_success:
        return landmarks
    success = table[:, header.index("success")] > 0 if "success" in header else np.ones(len(table), dtype=bool)
    return landmarks, success
