"""Data preparation when writes fail, and training data that must not be trusted.

A full disk is simulated without root: the child process gets a file-size limit (RLIMIT_FSIZE), so each write
past it fails with EFBIG ("File too large") as on a full disk, and ffmpeg is killed by SIGXFSZ. A failed write
must stop the run with one line naming the output, leave nothing that a rerun takes as finished, and a rerun
without the limit must finish correctly. A training JSON with a NaN or a string for an audio value, or a frame
path climbing out of its folder, is refused by `data_processing.py --check` and by training, naming the file,
the video, the clip and the list."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from common.errors import UserError
from conftest import ROOT, write_dinet_json
from data.prepare import generate_training_json
from data.training_json import load_training_json
from test_bad_input import FRAME
from test_data_processing import _talking_face, _write_video

DATA = os.path.join("asserts", "training_data")  # data_processing.py's default layout, under its cwd
CROPS = os.path.join(DATA, "split_video_25fps_crop_face")
JSON = os.path.join(DATA, "training_json.json")


def _run(script, *args, cwd, file_limit=None):
    """`python script args` in `cwd`; with file_limit, no file it (or ffmpeg under it) writes may grow past that."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd, timeout=300,
                          capture_output=True, text=True, preexec_fn=limit_files if file_limit else None)


def _failure_line(result):
    """The one line a failed run ends with; no traceback before it."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def landmarked(tmp_path_factory):
    """Two 3 s talking-face videos with frames, audio, mel features and landmarks prepared (8 clips each)."""
    work = tmp_path_factory.mktemp("landmarked")
    (work / "videos").mkdir()
    for seed, name in enumerate(["talk_a", "talk_b"]):
        frames, _, wav = _talking_face(seed, seconds=3.0)
        _write_video(work / "videos" / f"{name}.mp4", frames, wav)
    result = _run("data_processing.py", "--extract_video_frame", "--extract_audio", "--extract_audio_feature",
                  "--detect_landmarks", "--source_video_dir", work / "videos", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    return work


@pytest.fixture
def work(landmarked, tmp_path):
    shutil.copytree(landmarked, tmp_path, dirs_exist_ok=True)
    return tmp_path


# ---------------------------------------------------------------- Ctrl-C

def test_ctrl_c_stops_the_run_with_one_line_and_leaves_no_partial_output(work):
    """Ctrl-C in a terminal reaches the process group: the pool's workers and their ffmpeg too."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "data_processing.py"), "--crop_face",
                                "--generate_training_json", "--source_video_dir", work / "videos", "--workers", "2"],
                               cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while "videos:" not in process.stderr.read(8):  # the progress bar: the workers are starting
        pass
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (f"stopped by SIGINT: ./{JSON} not written; what was finished is kept: "
                                                f"run the same command again to go on")
    assert not [name for _, folders, names in os.walk(work) for name in folders + names if ".partial" in name]


# ---------------------------------------------------------------- a full disk, a folder that cannot be written

def test_crops_on_a_full_disk_stop_the_run_naming_the_folder_and_a_rerun_redoes_them(work):
    steps = ["--crop_face", "--generate_training_json", "--source_video_dir", work / "videos", "--workers", 2]
    full = _run("data_processing.py", *steps, cwd=work, file_limit=2000)  # every crop is 4-6 KB
    line = _failure_line(full)
    assert line.startswith((f"./{CROPS}/talk_a: not written, the disk is full (File too large)",
                            f"./{CROPS}/talk_b: not written, the disk is full (File too large)")), line
    assert f"Free space in {work / CROPS} and run again" in line
    assert [text for text in full.stderr.splitlines() if "not written" in text] == [line]
    assert os.listdir(work / CROPS) == []  # no empty or partial crop folder a rerun would take as done
    assert not (work / JSON).exists()

    rerun = _run("data_processing.py", *steps, cwd=work)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for video in ("talk_a", "talk_b"):
        assert f"  {video}: 8/8 clips" in rerun.stdout
        clips = sorted(os.listdir(work / CROPS / video))
        assert len(clips) == 8
        for clip in clips:
            crops = sorted((work / CROPS / video / clip).iterdir())
            assert len(crops) == 9 and all(cv2.imread(str(crop)) is not None for crop in crops)
    assert _run("data_processing.py", "--check", "--json", JSON, cwd=work).returncode == 0


def test_a_full_disk_while_writing_the_json_keeps_the_earlier_one_and_says_so(work):
    steps = ["--crop_face", "--generate_training_json", "--source_video_dir", work / "videos"]
    assert _run("data_processing.py", *steps, cwd=work).returncode == 0
    earlier = (work / JSON).read_bytes()
    assert len(earlier) > 60_000
    full = _run("data_processing.py", *steps, cwd=work, file_limit=50_000)  # crops fit, the JSON does not
    assert _failure_line(full) == (f"./{JSON}: not written, the disk is full (File too large); the earlier "
                                   f"training_json.json is intact. Free space in {work / DATA} and run again")
    assert (work / JSON).read_bytes() == earlier
    assert not [name for name in os.listdir(work / DATA) if name.startswith(".")]


def test_frames_on_a_full_disk_name_the_frame_folder_and_stop_the_run(landmarked, tmp_path):
    full = _run("data_processing.py", "--extract_video_frame", "--source_video_dir", landmarked / "videos",
                cwd=tmp_path, file_limit=2000)  # ffmpeg writes frames of 6 KB: killed by SIGXFSZ
    frame_dir = os.path.join(DATA, "split_video_25fps_frame")
    assert _failure_line(full) == (f"./{frame_dir}/talk_a: not written, the disk is full (File too large); nothing "
                                   f"was left behind. Free space in {tmp_path / frame_dir} and run again")
    assert "skipped" not in full.stdout  # the video is fine: the disk is not
    assert os.listdir(tmp_path / frame_dir) == []


@pytest.fixture
def read_only(tmp_path):
    """make(folder): nothing can be created in `folder` (root ignores permissions: an immutable folder then)."""
    made = []

    def make(folder):
        if os.geteuid() != 0:
            os.chmod(folder, 0o555)
        elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a file system without chattr +i: no folder can be made read-only")
        made.append(folder)
    yield make
    for folder in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o755)


@pytest.mark.parametrize("step,folder,output", [
    ("--crop_face", CROPS, "talk_a"),  # written by Python
    ("--extract_audio", os.path.join(DATA, "split_video_25fps_audio"), "talk_a.wav"),  # written by ffmpeg
])
def test_a_folder_that_cannot_be_written_stops_the_run_naming_the_output(work, read_only, step, folder, output):
    shutil.rmtree(work / folder, ignore_errors=True)
    os.makedirs(work / folder)
    read_only(work / folder)
    result = _run("data_processing.py", step, "--source_video_dir", work / "videos", cwd=work)
    line = _failure_line(result)
    assert line.startswith(f"./{folder}/{output}: not written ("), line
    assert line.endswith(f"nothing was left behind. Make {work / folder} writable, or pass another folder, and run "
                         f"again")
    assert "skipped" not in result.stdout


def test_features_with_nan_are_refused_when_the_json_is_made_naming_the_file(tmp_path):
    crop_dir, feature_dir = tmp_path / "crops", tmp_path / "features"
    os.makedirs(crop_dir / "talk" / "000000")
    for frame in range(9):
        cv2.imwrite(str(crop_dir / "talk" / "000000" / f"{frame:06d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    features = np.zeros((20, 80), np.float32)
    features[4, 7] = np.nan
    os.makedirs(feature_dir)
    np.save(feature_dir / "talk_mel.npy", features)
    with pytest.raises(UserError, match=r"talk_mel.npy: holds NaN or infinite values; delete it and extract"):
        generate_training_json(str(crop_dir), str(feature_dir), "mel", str(tmp_path / "training_json.json"))
    assert not (tmp_path / "training_json.json").exists()


# ---------------------------------------------------------------- training data that must not be trusted

def _corrupt(json_path, corruption):
    """Break video1 clip 2 of a DINet JSON in one way; return what the message must say about it."""
    with open(json_path) as f:
        training = json.load(f)
    clip = training["video1"]["clip_data_list"][2]
    if corruption == "nan":
        clip["deep_speech_list"][3][5] = float("nan")
        expected = "video1 clip 2, deep_speech_list[3][5]: NaN is not a finite float32 number"
    elif corruption == "string":  # a string reaches training as it is and stops it mid-epoch
        clip["deep_speech_list"][3][5] = "0.25"
        expected = 'video1 clip 2, deep_speech_list[3][5]: "0.25" is not a number'
    else:  # as many .. as it takes to reach / from anywhere: a file that exists
        clip["frame_path_list"][4] = "../" * 40 + "etc/passwd"
        expected = f"video1 clip 2, frame_path_list[4]: {'../' * 40}etc/passwd leaves the dataset folder"
    with open(json_path, "w") as f:
        json.dump(training, f)
    return f"{json_path}: {expected}"


@pytest.fixture
def dinet_json(tmp_path, monkeypatch):
    """A JSON as DINet's data_processing.py writes it: frame paths relative to the working directory (tmp_path),
    the JSON in the data folder below it."""
    monkeypatch.chdir(tmp_path)
    return os.path.relpath(write_dinet_json(str(tmp_path / "data"), videos=2, clips=6, relative_to_cwd=True))


@pytest.mark.parametrize("corruption", ["nan", "string", "escaping_path"])
def test_check_refuses_broken_data_naming_the_file_video_clip_and_list(dinet_json, tmp_path, corruption):
    good = _run("data_processing.py", "--check", "--json", dinet_json, cwd=tmp_path)
    assert good.returncode == 0 and f"{dinet_json}: OK" in good.stdout, good.stderr
    expected = _corrupt(dinet_json, corruption)
    broken = _run("data_processing.py", "--check", "--json", dinet_json, cwd=tmp_path)
    assert broken.stderr.strip().splitlines() == [_failure_line(broken)]
    assert _failure_line(broken).startswith(expected), broken.stderr


@pytest.mark.parametrize("corruption", ["nan", "string", "escaping_path"])
def test_training_refuses_broken_data_before_any_step(dinet_json, tmp_path, corruption):
    expected = _corrupt(dinet_json, corruption)
    args = FRAME.format(tiny_json=dinet_json, tmp=tmp_path).split()
    result = _run("train_DINet_frame.py", *args, cwd=tmp_path)
    line = _failure_line(result)
    assert line.startswith(expected) and line.endswith("--generate_training_json`"), line
    assert "===>" not in result.stdout  # no training step logged
    assert not os.path.exists(tmp_path / "run") or not os.listdir(tmp_path / "run")


def test_a_json_outside_the_crop_folder_lists_absolute_paths_and_passes(tmp_path):
    crop_dir, feature_dir = tmp_path / "data" / "crops", tmp_path / "data" / "features"
    os.makedirs(crop_dir / "talk" / "000000")
    for frame in range(9):
        cv2.imwrite(str(crop_dir / "talk" / "000000" / f"{frame:06d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    os.makedirs(feature_dir)
    np.save(feature_dir / "talk_mel.npy", np.zeros((20, 80), np.float32))
    inside = generate_training_json(str(crop_dir), str(feature_dir), "mel", str(tmp_path / "data" / "inside.json"))
    outside = generate_training_json(str(crop_dir), str(feature_dir), "mel", str(tmp_path / "elsewhere" / "t.json"))
    for path, absolute in ((inside, False), (outside, True)):
        with open(path) as f:
            frames = json.load(f)["talk"]["clip_data_list"][0]["frame_path_list"]
        assert all(os.path.isabs(frame) == absolute for frame in frames), frames
        loaded = load_training_json(path).videos["talk"][0].frame_paths[0]
        assert loaded == str(crop_dir / "talk" / "000000" / "000000.jpg")
