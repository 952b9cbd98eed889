"""Whom dubbing dubs and where: face tracks across frames, the choice of face, fades at the edges of dubbed runs."""
import argparse
import re
import subprocess
import sys

import numpy as np
import pytest

from common.errors import UserError
from conftest import ROOT
from dubbing.faces import (
    FADE_FRAMES,
    FaceChoice,
    choose_tracks,
    describe_ranges,
    fade_weights,
    parse_face,
    runs,
    track_faces,
)
from dubbing.pipeline import output_index


def box(x, y, size):
    return (x, y, x + size, y + size)


def test_tracks_keep_identity_when_the_detector_lists_faces_in_another_order():
    left, right = [box(10 + t, 50, 40) for t in range(6)], [box(200 - t, 60, 60) for t in range(6)]
    frames = [[a, b] if t % 2 else [b, a] for t, (a, b) in enumerate(zip(left, right))]
    tracks = track_faces([np.array(f) for f in frames], np.zeros(6, int))
    assert len(tracks) == 2
    by_x = sorted(tracks, key=lambda track: track.boxes[0][0])
    assert [by_x[0].boxes[t] for t in range(6)] == left and [by_x[1].boxes[t] for t in range(6)] == right


def test_a_duplicate_detection_of_one_face_makes_no_second_track():
    frames = [np.array([box(10, 10, 50), box(12, 11, 48)]) for _ in range(4)]
    assert len(track_faces(frames, np.zeros(4, int))) == 1


def test_a_track_survives_a_short_miss_but_not_a_cut():
    frames = [np.array([box(10, 10, 50)])] * 3 + [np.zeros((0, 4))] * 2 + [np.array([box(11, 10, 50)])] * 3
    assert len(track_faces(frames, np.zeros(8, int))) == 1
    shots = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    assert len(track_faces(frames, shots)) == 2


def test_the_choice_picks_the_largest_the_nth_from_the_left_or_the_face_at_a_point():
    small_left = [box(10, 10, 30)] * 5
    big_right = [box(300, 10, 80)] * 5
    tracks = track_faces([np.array([a, b]) for a, b in zip(small_left, big_right)], np.zeros(5, int))
    chosen = lambda choice: choose_tracks(tracks, choice, 1.0)[0].boxes[0]
    assert chosen(FaceChoice()) == big_right[0]
    assert chosen(FaceChoice("index", 1)) == small_left[0]
    assert chosen(FaceChoice("index", 2)) == big_right[0]
    assert chosen(FaceChoice("point", point=(20, 20))) == small_left[0]


def test_a_face_that_is_not_there_names_how_many_were_found_and_where():
    tracks = track_faces([np.array([box(10, 10, 30), box(300, 10, 80)])] * 3, np.zeros(3, int))
    with pytest.raises(UserError, match=r"--face 3: .*2 face\(s\) found in frame 0 \(1: x 10 to 40, y 10 to 40; 2: x 300"):
        choose_tracks(tracks, FaceChoice("index", 3), 1.0)
    with pytest.raises(UserError, match="--face 200,200: .*2 face"):
        choose_tracks(tracks, FaceChoice("point", point=(200, 200)), 1.0)


@pytest.mark.parametrize("text, expected", [("largest", FaceChoice()), ("2", FaceChoice("index", 2)),
                                            ("640,360", FaceChoice("point", point=(640.0, 360.0)))])
def test_face_option_reads_largest_a_number_or_a_point(text, expected):
    assert parse_face(text) == expected and str(parse_face(text)) == text


@pytest.mark.parametrize("text", ["0", "left", "1,", "-3", "1,2,3"])
def test_face_option_refuses_anything_else_naming_the_forms(text):
    import inference
    parser = inference.build_parser()
    parser.exit_on_error = False
    with pytest.raises(argparse.ArgumentError) as error:  # the command line's message names --face once
        parser.parse_args([f"--face={text}"])
    assert re.fullmatch(f"argument --face: '{re.escape(text)}': use largest, N .* or x,y \\(pixels\\)",
                        str(error.value))


def test_dubbed_mouth_fades_in_and_out_beside_passed_frames_but_not_at_a_cut():
    dubbed = np.array([1] * 10 + [0] * 3 + [1] * 10, bool)
    weight = fade_weights(dubbed, np.zeros(23, int))
    assert weight[0] == 1 and weight[9] == 1 / FADE_FRAMES and (weight[10:13] == 0).all()
    assert weight[13] == 1 / FADE_FRAMES and weight[13 + FADE_FRAMES - 1] == 1 and weight[-1] == 1
    assert (np.diff(weight[13:13 + FADE_FRAMES]) > 0).all()
    cut = fade_weights(np.ones(10, bool), np.array([0] * 5 + [1] * 5))
    assert (cut == 1).all()


def test_runs_stop_at_cuts():
    assert runs(np.array([1, 1, 0, 1, 1, 1], bool), np.array([0, 0, 0, 0, 1, 1])) == [(0, 2), (3, 4), (4, 6)]


def test_passed_frames_are_reported_as_ranges_with_their_reason():
    text = describe_ranges([3, 4, 5, 9], np.array(["none", "none", "profile", "crop"], object))
    assert text == ("frames 3-4 (0.12-0.20 s): no face found; frame 5 (0.20-0.24 s): face in profile; "
                    "frame 9 (0.36-0.40 s): face crop leaves the picture")


@pytest.mark.parametrize("length, expected", [("pingpong", [0, 1, 2, 2, 1, 0, 0]), ("loop", [0, 1, 2, 0, 1, 2, 0]),
                                              ("pad", [0, 1, 2, 2, 2, 2, 2]), ("cut", [0, 1, 2])])
def test_length_policies_map_a_short_video_onto_long_audio(length, expected):
    assert output_index(length, 3, 7).tolist() == expected


@pytest.mark.parametrize("length", ["pingpong", "loop", "pad", "cut"])
def test_every_length_policy_cuts_a_long_video_to_short_audio(length):
    assert output_index(length, 10, 4).tolist() == [0, 1, 2, 3]


# a thread inside catch_warnings (as mediapipe's imports and ctypes are on dubbing's threads) while the first detector
# starts, then protobuf's warning as it comes on each frame with a face
DETECTOR_BESIDE_A_THREAD = """
import threading, warnings
from dubbing.faces import face_mesh
inside, leave = threading.Event(), threading.Event()
def other():
    with warnings.catch_warnings():
        inside.set()
        leave.wait()
thread = threading.Thread(target=other)
thread.start()
inside.wait()
with face_mesh():
    pass
leave.set()
thread.join()
warnings.warn("SymbolDatabase.GetPrototype() is deprecated. Please use message_factory.GetMessageClass()", UserWarning)
"""


def test_mediapipes_deprecation_warnings_stay_silenced_whatever_other_threads_do():
    result = subprocess.run([sys.executable, "-c", DETECTOR_BESIDE_A_THREAD], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "Warning" not in result.stderr, result.stderr[-2000:]
