"""The demo data set and the data-preparation steps it runs: files in DINet's layout, landmarks that match
the drawing, mouths that follow the audio, reproducible for a seed; plus the audio features and CSV reader."""
import json
import os
import wave

import cv2

import numpy as np
import pytest

from common.errors import UserError
from common.geometry import CropGeometry, compute_crop_radius, crop_box
from data.audio_features import FEATURE_WIDTHS, compute_audio_feature, mel_filter_bank
from data.openface_csv import read_openface_csv
from data.prepare import Layout, Settings, prepare_videos
from data.procedural_faces import make_demo_data
from media.ffmpeg import probe

NUM_VIDEOS, SECONDS, FRAMES = 2, 4.0, 100


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    demo_dir = str(tmp_path_factory.mktemp("demo"))
    json_path = make_demo_data(demo_dir, num_videos=NUM_VIDEOS, seconds=SECONDS, seed=0)
    return demo_dir, json_path


def _path(demo_dir, folder, name=""):
    return os.path.join(demo_dir, folder, name)


def _landmarks(demo_dir, video="demo_000"):
    return read_openface_csv(_path(demo_dir, "split_video_25fps_landmark_openface", video + ".csv"))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _wav_samples(path):
    with wave.open(path) as f:
        assert (f.getnchannels(), f.getframerate()) == (1, 16000)
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64)


def test_demo_videos_are_h264_mp4s_with_audio(demo):
    demo_dir, _ = demo
    for index in range(NUM_VIDEOS):
        info = probe(_path(demo_dir, "split_video_25fps", f"demo_{index:03d}.mp4"))
        assert info["has_audio"] and info["fps"] == 25
        assert info["duration"] == pytest.approx(SECONDS, abs=0.1)


def test_demo_writes_landmarks_frames_audio_and_features(demo):
    demo_dir, _ = demo
    landmarks = _landmarks(demo_dir)
    assert landmarks.shape == (FRAMES, 68, 2)
    assert len(os.listdir(_path(demo_dir, "split_video_25fps_frame", "demo_000"))) == FRAMES
    assert len(_wav_samples(_path(demo_dir, "split_video_25fps_audio", "demo_000.wav"))) == 16000 * SECONDS
    features = np.load(_path(demo_dir, "split_video_25fps_mel", "demo_000_mel.npy"))
    assert features.shape == (FRAMES, FEATURE_WIDTHS["mel"]) and features.dtype == np.float32


def test_training_json_is_in_dinet_layout_and_every_frame_exists(demo):
    demo_dir, json_path = demo
    assert json_path == os.path.join(demo_dir, "training_json.json")
    with open(json_path) as f:
        training = json.load(f)
    assert sorted(training) == ["demo_000", "demo_001"]
    for video_name, entry in training.items():
        assert entry["audio_feature"] == "mel" and entry["audio_channel"] == 80
        assert entry["video_clip_num"] == len(entry["clip_data_list"]) >= 6  # the frame dataset samples 6 clips
        for clip in entry["clip_data_list"]:
            assert len(clip["frame_path_list"]) == len(clip["frame_name_list"]) == 9
            assert np.array(clip["deep_speech_list"]).shape == (9, 80)
            assert clip["frame_name_list"][0].startswith(video_name + "/")
            for frame_path in clip["frame_path_list"]:
                assert not os.path.isabs(frame_path)  # relative to the JSON's directory
                assert os.path.isfile(os.path.join(demo_dir, frame_path))


def test_crops_have_dinet_proportions(demo):
    demo_dir, _ = demo
    clip_dir = _path(demo_dir, "split_video_25fps_crop_face", "demo_000/000000")
    heights_widths = {cv2.imread(os.path.join(clip_dir, name)).shape[:2] for name in os.listdir(clip_dir)}
    (height, width), = heights_widths  # one radius per clip
    radius = width * 2 // 5  # width = 2r + r/2, height = 3r + r/4
    assert (height, width) == (radius * 3 + radius // 4, radius * 2 + radius // 2)


def test_crop_radius_fits_most_demo_clips_and_mouth_sits_in_dinet_hole(demo):
    demo_dir, _ = demo
    landmarks = _landmarks(demo_dir).astype(int)
    radii = [compute_crop_radius((256, 256), landmarks[end - 9:end], random_scale=1.1) for end in range(9, FRAMES, 9)]
    assert sum(r is not None for r in radii) >= 0.9 * len(radii)
    geometry = CropGeometry(64)
    for end, radius in zip(range(9, FRAMES, 9), radii):
        top, _, left, _ = crop_box(landmarks[end - 1], radius)
        lips = (landmarks[end - 1, 48:68] - [left, top]) * geometry.radius / radius  # in the 64-mouth crop
        assert geometry.mouth_cols.start <= lips[:, 0].min() and lips[:, 0].max() < geometry.mouth_cols.stop
        assert geometry.mouth_rows.start <= lips[:, 1].min() and lips[:, 1].max() < geometry.mouth_rows.stop


def test_a_training_crops_scale_does_not_tell_how_far_its_mouth_opens(demo):
    """The chin drops as the mouth opens. Sized over the clip's own frames (DINet's way), the prepared crops'
    radius follows the clip's widest opening (correlation 0.78 on these clips), so the face's size in the crop
    gives the model the answer that dubbing with other speech then contradicts; sized over the 2 s around the
    clip, it does not."""
    demo_dir, _ = demo
    radii, widest = [], []
    for video in ("demo_000", "demo_001"):
        landmarks = _landmarks(demo_dir, video)
        opening = landmarks[:, 66, 1] - landmarks[:, 62, 1]
        for clip in sorted(os.listdir(_path(demo_dir, "split_video_25fps_crop_face", video))):
            first = sorted(os.listdir(_path(demo_dir, "split_video_25fps_crop_face", f"{video}/{clip}")))[0]
            crop = cv2.imread(_path(demo_dir, "split_video_25fps_crop_face", f"{video}/{clip}/{first}"))
            radii.append(crop.shape[1] / 2.5)  # a crop is 2.5 radii wide
            widest.append(opening[int(clip) * 9:int(clip) * 9 + 9].max())
    assert len(radii) >= 16
    assert np.corrcoef(radii, widest)[0, 1] < 0.45


def test_mouth_opening_follows_audio_energy(demo):
    demo_dir, _ = demo
    landmarks = _landmarks(demo_dir)
    opening = landmarks[:, 66, 1] - landmarks[:, 62, 1]
    wav = _wav_samples(_path(demo_dir, "split_video_25fps_audio", "demo_000.wav"))
    energy = np.sqrt((wav[:FRAMES * 640].reshape(FRAMES, 640) ** 2).mean(axis=1))
    assert opening.max() > 10 and opening.min() < 1  # the mouth really opens and closes
    assert np.corrcoef(opening, energy)[0, 1] > 0.5


def test_same_seed_gives_same_data_and_other_seed_differs(demo, tmp_path):
    demo_dir, json_path = demo
    same = make_demo_data(str(tmp_path / "same"), num_videos=1, seconds=SECONDS, seed=0)
    other = make_demo_data(str(tmp_path / "other"), num_videos=1, seconds=SECONDS, seed=1)
    csv = os.path.join("split_video_25fps_landmark_openface", "demo_000.csv")
    wav = os.path.join("split_video_25fps_audio", "demo_000.wav")
    assert _read(os.path.join(demo_dir, csv)) == _read(tmp_path / "same" / csv)
    assert _read(os.path.join(demo_dir, wav)) == _read(tmp_path / "same" / wav)
    assert _read(os.path.join(demo_dir, csv)) != _read(tmp_path / "other" / csv)
    with open(json_path) as f, open(same) as g, open(other) as h:
        first, again, different = json.load(f)["demo_000"], json.load(g)["demo_000"], json.load(h)["demo_000"]
    assert first == again and first != different


def test_rerunning_a_step_keeps_finished_outputs(demo):
    demo_dir, _ = demo
    crop_dir = _path(demo_dir, "split_video_25fps_crop_face")
    before = os.path.getmtime(os.path.join(crop_dir, "demo_000"))
    reports = prepare_videos(Layout.under(demo_dir), Settings(), ["extract_video_frame", "crop_face"])
    assert [report.skipped for report in reports] == [None] * NUM_VIDEOS
    assert os.path.getmtime(os.path.join(crop_dir, "demo_000")) == before


def test_reads_openface2_csv_by_column_name(tmp_path):
    landmarks = np.random.default_rng(0).uniform(0, 500, (3, 68, 2)).round(1)
    header = (["frame", "face_id", "timestamp", "confidence", "success", "gaze_0_x", "gaze_angle_y"]
              + [f"eye_lmk_x_{i}" for i in range(56)] + [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
              + [f"X_{i}" for i in range(68)] + ["pose_Rx", "AU01_r", "AU45_c"])
    rows = []
    for index, points in enumerate(landmarks):
        values = [index + 1, 0, index * 0.04, 0.98, 1, 0.1, -0.2] + [7.0] * 56 + list(points[:, 0]) + list(points[:, 1])
        rows.append(values + [-1.0] * 68 + [0.05, 1.2, 0])
    path = tmp_path / "openface.csv"
    path.write_text("\n".join(", ".join(str(v) for v in row) for row in [header] + rows) + "\n")
    np.testing.assert_allclose(read_openface_csv(str(path)), landmarks)


@pytest.fixture(scope="module")
def one_second_wav(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("audio") / "tone.wav")
    time = np.arange(16000) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 220 * time) * 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize("name, width", [("mel", 80), ("mfcc", 52)])
def test_audio_features_give_one_vector_per_40ms_frame(one_second_wav, name, width):
    assert FEATURE_WIDTHS[name] == width
    features = compute_audio_feature(one_second_wav, name)
    assert features.shape == (25, width) and features.dtype == np.float32
    assert compute_audio_feature(one_second_wav, name, num_frames=30).shape == (30, width)  # padded
    assert compute_audio_feature(one_second_wav, name, num_frames=10).shape == (10, width)  # trimmed


def test_mel_is_wav2lip_normalised(one_second_wav):
    features = compute_audio_feature(one_second_wav, "mel")
    assert features.min() >= -4 and features.max() <= 4
    assert np.argmax(features.mean(axis=0)) < 20  # a 220 Hz tone lights the low mel bands


@pytest.mark.parametrize("settings", [(16000, 800, 80, 55, 7600), (22050, 1024, 128, 0, 11025),
                                      (16000, 512, 40, 300, 4000)])
def test_mel_filter_bank_is_librosas(settings):
    """Our Slaney filter bank (no librosa.filters import at dubbing time) is librosa.filters.mel's defaults."""
    import librosa
    sample_rate, n_fft, n_mels, fmin, fmax = settings
    expected = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    got = mel_filter_bank(sample_rate, n_fft, n_mels, fmin, fmax)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-7


def test_deepspeech_is_made_elsewhere_with_a_clear_message(one_second_wav):
    with pytest.raises(UserError, match="DeepSpeech"):
        compute_audio_feature(one_second_wav, "deepspeech")
