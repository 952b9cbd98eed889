"""Data preparation from real videos: the bundled 68-point detector, video decoding, `data_processing.py`
over a folder of good and bad videos, DeepSpeech features made elsewhere, and `--check`. The real clips in
../shared/data are used only where present."""
import json
import os
import shutil
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile

from common.geometry import CropGeometry, compute_crop_radius, crop_box
from conftest import ROOT, SHARED, write_dinet_json
from data.landmark_detector import detect_landmarks, fill_missing
from data.openface_csv import read_openface_csv, write_openface_csv
from data.prepare import Layout, Settings, VIDEO_STEPS, prepare_videos
from data.procedural_faces import FaceStyle, mouth_openings, render_talking_face, synthesize_speech
from media.convert import extract_frames, resample_video
from media.decoder import read_video_frames
from media.encoder import write_video
from media.ffmpeg import probe

KEY_POINTS = [8, 33, 48, 51, 54, 57]  # chin, nose base, mouth corners, lip centres: what DINet's crop uses


def _talking_face(seed, seconds):
    """A procedural talking face: frames (T, 256, 256, 3) RGB, the 68 points it was drawn from, its speech."""
    rng = np.random.default_rng([seed, 0])
    style = FaceStyle.draw(rng)
    wav, spreads = synthesize_speech(rng, seconds)
    frames, landmarks = render_talking_face(style, mouth_openings(wav), spreads)
    return frames, landmarks, wav


def _write_video(path, frames, wav=None, fps=25):
    wav_path = None
    if wav is not None:
        wav_path = str(path) + ".wav"
        soundfile.write(wav_path, wav, 16000, subtype="PCM_16")
    write_video(str(path), frames, fps=fps, audio_path=wav_path)
    if wav_path:
        os.remove(wav_path)


def _data_processing(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "data_processing.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- the detector

@pytest.fixture(scope="module")
def drawn_face():
    frames, truth, _ = _talking_face(seed=0, seconds=2.0)
    return frames, truth, detect_landmarks(frames)


def test_detector_puts_chin_nose_and_mouth_points_on_the_drawn_face(drawn_face):
    frames, truth, (detected, found) = drawn_face
    assert detected.shape == (len(frames), 68, 2) and detected.dtype == np.float32
    assert found.all()
    face_width = truth[0, :, 0].max() - truth[0, :, 0].min()
    error = np.linalg.norm(detected - truth, axis=2).mean(axis=0)  # (68,) px
    assert error[KEY_POINTS].max() < 0.05 * face_width, dict(zip(KEY_POINTS, error[KEY_POINTS].round(1)))
    assert error.mean() < 0.08 * face_width  # jaw, brows and eyes follow the same convention too


def test_smoothed_lips_still_follow_every_opening(drawn_face):
    _, truth, (detected, _) = drawn_face
    drawn_opening = truth[:, 66, 1] - truth[:, 62, 1]
    detected_opening = detected[:, 66, 1] - detected[:, 62, 1]
    assert np.corrcoef(drawn_opening, detected_opening)[0, 1] > 0.95


def test_frames_without_a_face_are_flagged_and_filled_from_their_neighbours(drawn_face):
    frames, _, (with_face, _) = drawn_face
    frames = frames[:30].copy()
    frames[10:13] = 128  # three grey frames: no face
    detected, found = detect_landmarks(frames, smooth=False)
    assert not found[10:13].any() and found[:10].all() and found[13:].all()
    between = np.stack([detected[9], detected[13]])
    assert (detected[10:13] >= between.min(0) - 1e-3).all() and (detected[10:13] <= between.max(0) + 1e-3).all()


def test_fill_missing_interpolates_in_time_and_holds_the_ends():
    landmarks = np.zeros((5, 68, 2), np.float32)
    landmarks[1], landmarks[3] = 10, 30
    filled = fill_missing(landmarks, np.array([False, True, False, True, False]))
    np.testing.assert_allclose(filled[:, 0, 0], [10, 10, 20, 30, 30])


def test_landmark_csv_keeps_which_frames_had_a_face(tmp_path):
    landmarks = np.random.default_rng(0).uniform(0, 200, (4, 68, 2))
    found = np.array([True, False, True, True])
    write_openface_csv(str(tmp_path / "v.csv"), landmarks, found=found)
    read, success = read_openface_csv(str(tmp_path / "v.csv"), with_success=True)
    np.testing.assert_allclose(read, landmarks, atol=1e-3)
    np.testing.assert_array_equal(success, found)


# ---------------------------------------------------------------- video decoding

def test_read_video_frames_decodes_rgb_and_resamples_to_the_requested_rate(tmp_path):
    brightness = np.linspace(0, 250, 30).astype(np.uint8)
    frames = [np.full((48, 64, 3), (value, 0, 255 - value), np.uint8) for value in brightness]  # 1 s at 30 fps
    _write_video(tmp_path / "v.mp4", frames, fps=30)
    native = list(read_video_frames(str(tmp_path / "v.mp4")))
    resampled = list(read_video_frames(str(tmp_path / "v.mp4"), fps=25))
    assert len(native) == 30 and len(resampled) == 25
    assert native[0].shape == (48, 64, 3) and native[0].dtype == np.uint8
    reds = [frame[..., 0].mean() for frame in resampled]
    assert np.all(np.diff(reds) > -3) and reds[-1] > 200  # in order, red rising; blue is the other channel
    assert resampled[0][..., 2].mean() > 200


@pytest.mark.parametrize("name", ["50%off", "take%03d"])
def test_frames_of_a_video_whose_name_holds_a_percent_sign_go_to_its_own_folder(tmp_path, name):
    """ffmpeg reads a % in an image sequence's path as a frame number's place; the folder's name is the video's."""
    _write_video(tmp_path / f"{name}.mp4", [np.full((32, 32, 3), value, np.uint8) for value in (0, 128, 255)])
    assert extract_frames(str(tmp_path / f"{name}.mp4"), str(tmp_path / "frames" / name)) == 3
    assert os.listdir(tmp_path / "frames") == [name]
    assert sorted(os.listdir(tmp_path / "frames" / name)) == ["000000.jpg", "000001.jpg", "000002.jpg"]


# ---------------------------------------------------------------- data_processing.py, end to end

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """data_processing.py --all over good videos (one at 30 fps in .mkv) and one of each kind of bad video."""
    work = tmp_path_factory.mktemp("prepare")
    source = work / "videos"
    source.mkdir()
    for seed, name in enumerate(["talk_a", "talk_b"]):
        frames, _, wav = _talking_face(seed, seconds=3.0)
        _write_video(source / f"{name}.mp4", frames, wav)
    resample_video(str(source / "talk_a.mp4"), str(source / "talk_a.mkv"), fps=30)  # any rate, any container
    os.remove(source / "talk_a.mp4")
    shutil.copy(source / "talk_b.mp4", source / "talk_b.mov")  # two videos of one name: one is left out, and said
    frames, _, wav = _talking_face(2, seconds=1.0)
    _write_video(source / "silent.mp4", frames)
    _write_video(source / "short.mp4", frames[:5], wav[:3200])
    (source / "broken.mp4").write_bytes(b"not a video at all")
    noise = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    _write_video(source / "no_face.mp4", noise, wav)
    at_the_edge = np.concatenate([frames[:, :, 100:], np.repeat(frames[:, :, -1:], 100, axis=2)], axis=2)
    _write_video(source / "at_the_edge.mp4", at_the_edge, wav)  # the crop would leave the frame
    on_its_side = np.ascontiguousarray(np.rot90(_talking_face(3, seconds=1.0)[0], -1, axes=(1, 2)))
    _write_video(source / "on_its_side.mp4", on_its_side, wav)  # a phone held wrong: the mesh would fit it anyway
    two_faces = np.concatenate([frames, _talking_face(4, seconds=1.0)[0]], axis=2)
    _write_video(source / "two_faces.mp4", two_faces, wav)  # an interview: the mesh follows one, maybe not the speaker
    result = _data_processing("--all", "--source_video_dir", str(source), "--workers", "2", "--debug_draw",
                              cwd=work)
    return work, result


def test_all_steps_prepare_good_videos_and_skip_bad_ones_with_a_reason(prepared):
    work, result = prepared
    assert result.returncode == 0, result.stderr[-2000:]
    report = {line.split(":")[0].strip(): line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "2 of 10 videos ready, 8 skipped" in result.stdout
    assert "75 frames, face in 100.0% (detected), 8/8 clips" in report["talk_a"]
    assert "face in 100.0% (detected), 8/8 clips" in report["talk_b"]
    for name, reason in [("silent", "no audio stream"), ("short", "too short"), ("broken", "not a readable video"),
                         ("no_face", "a face in only 0% of frames"), ("at_the_edge", "beyond DINet's limits"),
                         ("on_its_side", "the face is on its side in"),
                         ("two_faces", "8 of 8 frames looked at show several faces"),
                         ("talk_b.mov", "has the name of " + str(work / "videos" / "talk_b.mp4"))]:
        assert "skipped:" in report[name] and reason in report[name], report[name]


def test_all_steps_write_dinet_layout_and_nothing_for_bad_videos(prepared):
    work, _ = prepared
    data = work / "asserts" / "training_data"
    with open(data / "training_json.json") as f:
        training = json.load(f)
    assert sorted(training) == ["talk_a", "talk_b"]
    assert {(entry["audio_feature"], entry["audio_channel"]) for entry in training.values()} == {("mel", 80)}
    assert probe(str(data / "split_video_25fps" / "talk_a.mp4"))["fps"] == 25  # resampled from 30 fps .mkv
    assert not (data / "split_video_25fps" / "talk_b.mp4").exists()  # already 25 fps mp4: used in place
    assert sorted(os.listdir(data / "split_video_25fps_crop_face")) == ["talk_a", "talk_b"]
    assert len(os.listdir(data / "split_video_25fps_landmark_debug" / "talk_a")) == 4
    leftovers = [name for _, _, names in os.walk(work) for name in names if ".partial" in name]
    assert not leftovers


def test_check_accepts_the_prepared_json(prepared):
    work, _ = prepared
    result = _data_processing("--check", "--json", "asserts/training_data/training_json.json", cwd=work)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_rerun_skips_finished_work(prepared):
    work, _ = prepared
    data = work / "asserts" / "training_data"
    outputs = [data / "split_video_25fps_landmark" / "talk_a.csv", data / "split_video_25fps_crop_face" / "talk_b",
               data / "split_video_25fps" / "talk_a.mp4", data / "split_video_25fps_mel" / "talk_a_mel.npy"]
    before = [os.path.getmtime(path) for path in outputs]
    result = _data_processing("--all", "--source_video_dir", str(work / "videos"), cwd=work)
    assert result.returncode == 0 and "2 of 10 videos ready" in result.stdout
    assert [os.path.getmtime(path) for path in outputs] == before


def test_check_lists_every_problem_and_exits_nonzero(tmp_path):
    json_path = write_dinet_json(str(tmp_path), videos=2, clips=3)
    with open(json_path) as f:
        training = json.load(f)
    os.remove(training["video0"]["clip_data_list"][0]["frame_path_list"][4])
    training["video0"]["clip_data_list"][1]["frame_path_list"].pop()
    training["video1"]["clip_data_list"][2]["deep_speech_list"] = [[0.0] * 80] * 9
    with open(json_path, "w") as f:
        json.dump(training, f)
    result = _data_processing("--check", "--json", json_path, cwd=tmp_path)
    assert result.returncode != 0
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 3, problems
    assert "video0 clip 0" in problems[0] and "does not exist" in problems[0]
    assert "video0 clip 1: 8 frames and 9 audio vectors" in problems[1]
    assert "widths disagree" in problems[2] and "29" in problems[2] and "80" in problems[2]


def test_a_later_step_names_why_an_earlier_one_skipped_the_video_not_only_its_missing_output(tmp_path):
    """Steps run one at a time: a video the frame or audio step could not use is named for its own fault."""
    source = tmp_path / "videos"
    source.mkdir()
    (source / "broken.mp4").write_bytes(b"not a video at all")
    _write_video(source / "silent.mp4", [np.full((32, 32, 3), value, np.uint8) for value in range(0, 250, 10)])
    layout = Layout.under(str(tmp_path / "data"), source_video_dir=str(source))
    for steps in (["extract_audio_feature"], ["crop_face"], ["debug_draw"]):
        skipped = {report.name: report.skipped for report in prepare_videos(layout, Settings(), steps)}
        assert "not a readable video" in skipped["broken"] and "no audio stream" in skipped["silent"], skipped


# ---------------------------------------------------------------- DeepSpeech made elsewhere

def test_deepspeech_features_are_read_from_npy_or_dinet_txt(tmp_path):
    source, deepspeech = tmp_path / "videos", tmp_path / "deepspeech"
    source.mkdir(), deepspeech.mkdir()
    for name in ["a", "b", "c", "d"]:
        (source / f"{name}.mp4").write_bytes(b"")  # this step reads only the features
    features = np.random.default_rng(0).normal(size=(40, 29)).astype(np.float32)
    np.savetxt(deepspeech / "a_deepspeech.txt", features)  # what DINet's data_processing.py writes
    np.save(deepspeech / "b.npy", features)
    np.save(deepspeech / "d_deepspeech.npy", features[:, :28])
    layout = Layout.under(str(tmp_path / "data"), "deepspeech", source_video_dir=str(source))
    layout = Layout(**{**layout.__dict__, "deepspeech_dir": str(deepspeech)})
    reports = prepare_videos(layout, Settings(audio_feature="deepspeech"), ["extract_audio_feature"])
    skipped = {report.name: report.skipped for report in reports}
    assert skipped["a"] is None and skipped["b"] is None
    assert "no DeepSpeech features" in skipped["c"] and "(T, 29)" in skipped["d"]
    for name in ["a", "b"]:
        np.testing.assert_allclose(np.load(os.path.join(layout.feature_dir, f"{name}_deepspeech.npy")), features,
                                   rtol=1e-6)


# ---------------------------------------------------------------- the real clips

@pytest.mark.needs_shared("data/talking_head_a.mp4")
def test_real_clip_has_a_face_in_every_frame_and_its_lips_in_dinets_mouth_hole(tmp_path):
    source = tmp_path / "videos"
    source.mkdir()
    # 3 s of the 1080x1920 HEVC clip, kept HEVC but halved and at 30 fps in .mov: decoded, then resampled
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-t", "3",
                    "-i", os.path.join(SHARED, "data", "talking_head_a.mp4"), "-vf", "scale=540:960,fps=30",
                    "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error", "-c:a", "aac",
                    str(source / "real.mov")], check=True)
    layout = Layout.under(str(tmp_path / "data"), source_video_dir=str(source))
    steps = [step for step in VIDEO_STEPS if step != "debug_draw"]
    report, = prepare_videos(layout, Settings(), steps)
    assert report.skipped is None and report.frames == 75
    assert report.face_fraction >= 0.99 and report.clips == report.possible_clips == 8
    landmarks = read_openface_csv(os.path.join(layout.landmark_dir, "real.csv")).astype(int)
    geometry = CropGeometry(64)
    for end in range(9, len(landmarks), 9):
        radius = compute_crop_radius((540, 960), landmarks[end - 9:end], random_scale=1.1)
        for points in landmarks[end - 9:end]:
            top, _, left, _ = crop_box(points, radius)
            lips = (points[48:68] - [left, top]) * geometry.radius / radius  # in the mouth-64 crop
            assert geometry.mouth_cols.start <= lips[:, 0].min() and lips[:, 0].max() < geometry.mouth_cols.stop
            assert geometry.mouth_rows.start <= lips[:, 1].min() and lips[:, 1].max() < geometry.mouth_rows.stop
