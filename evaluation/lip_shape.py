"""Lip-shape scores from 68-point landmarks: how close a generated mouth is to the real one, with no SyncNet.

Both compare a generated face with the real face of the same frame (a self-reconstruction: a clip dubbed with
its own audio, so its real frames are the ground truth), each face's landmarks taken relative to the face:
its translation removed (the centre of the eyes and the nose, which the mouth does not move) and its scale (the
face size: the distance between the outer eye corners, 36 and 45).

    lmd_mouth        mean distance of the 20 mouth points (48-67), in units of the face size, over frames
                     (0: the real mouth; lower is better)
    mouth_open_corr  Lin's concordance correlation over time of the generated and the real mouth opening (the
                     inner-lip gap in units of the face size): 1 when the mouth opens and closes with the real one,
                     as far and when it does; about 0 when either barely moves. Unlike Pearson's correlation it
                     weighs how far the mouth moves: a still mouth keeps a little motion in time with the real one
                     (the detector reads the real jaw around a pasted mouth), which Pearson's would count as sync;
                     `timing_and_scale` splits it into Pearson's correlation (when) and the ratio of spreads (how far)

The same detector must measure both sides; its own noise is what a re-encoded copy of the real video scores.
"""
import numpy as np

MOUTH = np.arange(48, 68)
RIGID = np.arange(27, 48)              # nose 27-35 and eyes 36-47
OUTER_EYE_CORNERS = (36, 45)
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper and lower inner-lip points facing each other


def face_size(landmarks):
    """(T, 68, 2) -> (T,) the distance between the outer eye corners."""
    left, right = OUTER_EYE_CORNERS
    return np.linalg.norm(landmarks[:, left] - landmarks[:, right], axis=-1)


def normalised_mouth(landmarks):
    """(T, 68, 2) -> (T, 20, 2): the mouth points relative to the face's centre, in units of its size."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    centre = landmarks[:, RIGID].mean(axis=1, keepdims=True)
    return (landmarks[:, MOUTH] - centre) / face_size(landmarks)[:, None, None]


def mouth_opening(landmarks):
    """(T, 68, 2) -> (T,) the inner-lip gap in units of the face size."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    gaps = [np.linalg.norm(landmarks[:, upper] - landmarks[:, lower], axis=-1) for upper, lower in INNER_LIP_PAIRS]
    return np.mean(gaps, axis=0) / face_size(landmarks)


def lmd_mouth(generated, real):
    """Mouth landmark distance of generated against real landmarks (T, 68, 2) each: lower is closer."""
    if len(generated) != len(real) or not len(real):
        raise ValueError(f"lmd_mouth needs the same number of frames on both sides, got {len(generated)} and "
                         f"{len(real)}")
    distance = np.linalg.norm(normalised_mouth(generated) - normalised_mouth(real), axis=-1)  # (T, 20)
    return float(distance.mean())


def concordance(a, b):
    """Lin's concordance correlation of two series, 2 cov(a, b) / (var a + var b + (mean a - mean b)^2): 1 only
    where a equals b; 0 when either is constant (nothing moves together)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = a.var() + b.var() + (a.mean() - b.mean()) ** 2
    return float(2 * np.mean((a - a.mean()) * (b - b.mean())) / scale) if scale > 1e-12 else 0.0


def mouth_open_corr(generated, real, offset=0):
    """Concordance over time of the mouth openings of generated and real landmarks (T, 68, 2); `offset` > 0
    compares generated frame t + offset with real frame t."""
    return concordance(*aligned_openings(generated, real, offset))


def aligned_openings(generated, real, offset=0):
    """The mouth openings of generated and real landmarks (T, 68, 2), generated frame t + offset beside real frame t."""
    if len(generated) != len(real):
        raise ValueError(f"mouth_open_corr needs the same number of frames on both sides, got {len(generated)} "
                         f"and {len(real)}")
    opening_generated, opening_real = mouth_opening(generated), mouth_opening(real)
    if offset > 0:
        return opening_generated[offset:], opening_real[:-offset]
    if offset < 0:
        return opening_generated[:offset], opening_real[-offset:]
    return opening_generated, opening_real


def timing_and_scale(generated, real, offset=0):
    """What mouth_open_corr is made of: (Pearson's correlation of the two openings: 1 when the mouth opens at the
    real one's moments, however far; the generated opening's spread over the real one's: 1 when it opens as far)."""
    opening_generated, opening_real = aligned_openings(generated, real, offset)
    spread_generated, spread_real = opening_generated.std(), opening_real.std()
    scale = float(spread_generated / spread_real) if spread_real >= 1e-9 else float("nan")
    if spread_generated < 1e-9 or spread_real < 1e-9:
        return 0.0, scale  # Pearson's is undefined where a mouth never moves: nothing opens in time
    return float(np.corrcoef(opening_generated, opening_real)[0, 1]), scale


def best_offset_corr(generated, real, max_offset=1):
    """(offset, correlation) of the offset within +-max_offset frames where the openings correlate best."""
    scores = {offset: mouth_open_corr(generated, real, offset) for offset in range(-max_offset, max_offset + 1)}
    best = max(scores, key=lambda offset: (scores[offset], -abs(offset)))
    return best, scores[best]


def lip_shape_scores(generated, real, found):
    """{"lmd_mouth", "mouth_open_corr"} of generated against real landmarks (T, 68, 2) over the frames where
    `found` (T,) says both faces were detected (the detector's guesses elsewhere are not measurements); NaN when
    there are none."""
    found = np.asarray(found, bool)
    if not found.any():
        return {"lmd_mouth": float("nan"), "mouth_open_corr": float("nan")}
    generated, real = np.asarray(generated)[found], np.asarray(real)[found]
    return {"lmd_mouth": lmd_mouth(generated, real), "mouth_open_corr": mouth_open_corr(generated, real)}
