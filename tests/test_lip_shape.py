"""Lip-shape scores (evaluation/lip_shape.py) on landmarks of procedural talking faces, whose mouths open with
their speech: the scores must tell the true mouth from a moved, a delayed and another speech's mouth."""
import numpy as np
import pytest

from data.procedural_faces import (
    FaceStyle,
    mouth_openings,
    render_talking_face,
    synthesize_speech,
)
from evaluation.lip_shape import (
    best_offset_corr,
    lmd_mouth,
    mouth_open_corr,
    mouth_opening,
    timing_and_scale,
)


def speech_landmarks(seed, style_seed=0, seconds=3.0):
    """(T, 68, 2) landmarks of a procedural face speaking the procedural speech of `seed`."""
    wav, spreads = synthesize_speech(np.random.default_rng(seed), seconds)
    _, landmarks = render_talking_face(FaceStyle.draw(np.random.default_rng(style_seed)), mouth_openings(wav), spreads)
    return landmarks


def test_the_real_mouth_scores_lmd_0_and_correlation_1_wherever_the_face_is_and_however_large():
    real = speech_landmarks(seed=1)
    moved = real * 1.7 + np.array([40.0, -25.0])  # the same face, larger and elsewhere in the frame
    assert lmd_mouth(moved, real) == pytest.approx(0, abs=1e-9)
    assert mouth_open_corr(moved, real) == pytest.approx(1, abs=1e-9)


def test_lmd_is_the_mouths_displacement_in_units_of_the_face_size():
    real = speech_landmarks(seed=1)
    eye_distance = np.linalg.norm(real[:, 36] - real[:, 45], axis=-1)
    lowered = real.copy()
    lowered[:, 48:68, 1] += 0.1 * eye_distance[:, None]  # every mouth point a tenth of the face size lower
    assert lmd_mouth(lowered, real) == pytest.approx(0.1, rel=1e-3)  # the face's centre moves by 20 / 41 of it
    assert lmd_mouth(real, lowered) == pytest.approx(lmd_mouth(lowered, real))


def test_another_speech_or_a_delayed_mouth_scores_clearly_worse_than_the_true_one():
    real, other = speech_landmarks(seed=1), speech_landmarks(seed=2)
    assert mouth_open_corr(other, real) < 0.5
    assert lmd_mouth(other, real) > 0.015
    delayed = np.concatenate([real[:3], real[:-3]])  # the mouth three frames late
    assert mouth_open_corr(delayed, real) < 0.5
    assert best_offset_corr(delayed, real, max_offset=3) == (3, pytest.approx(1, abs=1e-9))
    assert best_offset_corr(real, real, max_offset=1) == (0, pytest.approx(1, abs=1e-9))


def test_a_mouth_that_never_moves_has_no_correlation_with_one_that_speaks():
    real = speech_landmarks(seed=1)
    still = np.repeat(real[:1], len(real), axis=0)
    assert mouth_open_corr(still, real) == 0.0
    assert mouth_opening(real).std() > 0.03  # the speaking mouth opens by a good share of the face size


def test_a_mouth_that_opens_on_time_but_half_as_far_is_told_apart_from_one_that_opens_at_the_wrong_times():
    wav, spreads = synthesize_speech(np.random.default_rng(1), 3.0)
    style = FaceStyle.draw(np.random.default_rng(0))
    _, real = render_talking_face(style, mouth_openings(wav), spreads)
    _, half = render_talking_face(style, 0.5 * mouth_openings(wav), spreads)
    pearson, scale = timing_and_scale(half, real)
    assert pearson > 0.99 and scale == pytest.approx(0.5, abs=0.02)
    assert mouth_open_corr(half, real) < 0.85  # the concordance counts the missing half
    pearson, scale = timing_and_scale(speech_landmarks(seed=2), real)  # another speech, as far but at other times
    assert pearson < 0.5 and scale > 0.7
    delayed = np.concatenate([real[:2], real[:-2]])
    assert timing_and_scale(delayed, real, offset=2)[0] == pytest.approx(1, abs=1e-9)
    assert timing_and_scale(np.repeat(real[:1], len(real), axis=0), real) == (0.0, 0.0)


def test_scores_refuse_sequences_of_different_lengths():
    real = speech_landmarks(seed=1)
    with pytest.raises(ValueError, match="same number of frames"):
        lmd_mouth(real[:-1], real)
    with pytest.raises(ValueError, match="same number of frames"):
        mouth_open_corr(real[:-1], real)
