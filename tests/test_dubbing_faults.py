"""Dubbing sources and runs that go wrong: RGB-coded and odd-sized sources dub as any other; scratch that does not
fit stops the run before any work; a run stopped in any way (SIGKILL included, by the next run) leaves nothing behind.

Each run is a real `inference.py` process on 2 s of ../shared/data/talking_head_a.mp4 at 270x480, with an
untrained mel generator at mouth 64 (test_inference.py's `checkpoint`).
"""
import os
import signal
import subprocess
import sys
import time

import imageio_ffmpeg
import numpy as np
import pytest

from conftest import ROOT, SHARED
from data.landmark_detector import detect_landmarks
from data.openface_csv import write_openface_csv
from media.decoder import read_video_frames
from media.ffmpeg import probe
from test_inference import checkpoint  # noqa: F401  (fixture: an untrained mel generator at mouth 64)

TALKING_HEAD = os.path.join(SHARED, "data", "talking_head_a.mp4")
SPEECH = os.path.join(SHARED, "data", "driving_speech_a.wav")
pytestmark = pytest.mark.needs_shared("data/talking_head_a.mp4", "data/driving_speech_a.wav")
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
# saturated red, green and blue patches above the face: a colour matrix taken wrongly moves them by 8-40 levels
PATCHES = ",".join(f"drawbox=x={90 * i}:y=0:w=90:h=60:color={colour}:t=fill"
                   for i, colour in enumerate(("red", "lime", "blue")))


def ffmpeg(*arguments):
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", *map(str, arguments)], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """2 s of the clip at 270x480 with colour patches, as libx264rgb (gbrp), as a PNG named .mp4 (its first
    frame), as ordinary 4:2:0 H.264; their landmarks; 2 s of speech."""
    folder = tmp_path_factory.mktemp("faults_media")
    rgb = folder / "rgb.mp4"
    ffmpeg("-t", 2, "-i", TALKING_HEAD, "-an", "-vf", f"scale=270:480,setsar=1,{PATCHES}", "-c:v", "libx264rgb",
           "-preset", "ultrafast", rgb)
    ffmpeg("-i", rgb, "-frames:v", 1, folder / "still.png")
    os.rename(folder / "still.png", folder / "png.mp4")
    ffmpeg("-i", rgb, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", folder / "yuv.mp4")
    ffmpeg("-i", SPEECH, "-t", 2, folder / "speech.wav")
    landmarks, found = detect_landmarks(read_video_frames(str(rgb)))
    assert found.all()
    write_openface_csv(str(folder / "rgb.csv"), landmarks)
    write_openface_csv(str(folder / "png.csv"), landmarks[:1])
    write_openface_csv(str(folder / "long.csv"), np.concatenate([landmarks, landmarks]))  # rows for 100 frames
    return folder


def command(media, checkpoint, source, out, landmarks=None):
    """inference.py on `source` with 2 s of speech, landmarks from the CSV `landmarks` or detected."""
    return [sys.executable, "inference.py", "--source_video_path", str(source), "--driving_audio_path",
            str(media / "speech.wav"), "--pretrained_clip_DINet_path", checkpoint, "--res_video_dir", str(out),
            "--device", "cpu", *(["--source_openface_landmark_path", str(landmarks)] if landmarks else [])]


def with_temporary_folder(tmp_path):
    """The environment of a run whose temporary folder is tmp_path/tmp."""
    os.makedirs(tmp_path / "tmp", exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp_path / "tmp")}


def run(arguments, tmp_path):
    return subprocess.run(arguments, cwd=ROOT, env=with_temporary_folder(tmp_path), capture_output=True, text=True,
                          timeout=300)


def frames_of(path):
    return np.stack(list(read_video_frames(str(path)))).astype(np.float32)


@pytest.mark.parametrize("source", ["rgb", "png"])
def test_rgb_coded_source_dubs_with_the_sources_colours(media, checkpoint, tmp_path, source):
    result = run(command(media, checkpoint, media / f"{source}.mp4", tmp_path / "out", media / f"{source}.csv"),
                 tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output = tmp_path / "out" / f"{source}_facial_dubbing_add_audio.mp4"
    info = probe(str(output))
    assert (info["width"], info["height"]) == (270, 480) and abs(info["duration"] - 2.0) < 0.05
    dubbed, original = frames_of(output), frames_of(media / f"{source}.mp4")
    assert len(dubbed) == 50
    expected = original[np.arange(50) % len(original)]  # the 50 source frames once, or the still 50 times
    for i in range(3):  # each patch, less the 4:2:0 chroma blur at its edges
        patch = (slice(None), slice(6, 54), slice(90 * i + 6, 90 * i + 84))
        assert np.abs(dubbed[patch] - expected[patch]).mean() < 3, f"patch {i}"
    assert np.abs(dubbed[:, :200] - expected[:, :200]).mean() < 3  # the upper part: the source's own


def test_odd_sized_source_says_its_output_size_first_and_repeats_its_edge(media, checkpoint, tmp_path):
    ffmpeg("-i", media / "yuv.mp4", "-t", 1, "-vf", "scale=271:481,setsar=1", "-c:v", "libx264", "-pix_fmt", "yuv444p",
           "-preset", "ultrafast", tmp_path / "odd.mp4")
    result = run(command(media, checkpoint, tmp_path / "odd.mp4", tmp_path / "out"), tmp_path)  # landmarks detected
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0]
    assert first.startswith("note: ") and "271x481" in first and "272x482" in first, result.stdout
    dubbed, original = frames_of(tmp_path / "out" / "odd_facial_dubbing_add_audio.mp4"), frames_of(tmp_path / "odd.mp4")
    assert dubbed.shape[1:3] == (482, 272) and len(dubbed) == 50
    assert np.abs(dubbed[:25, :200, :271] - original[:, :200]).mean() < 3
    assert np.abs(dubbed[:, :, 271] - dubbed[:, :, 270]).mean() < 3  # not a black line
    assert np.abs(dubbed[:, 481] - dubbed[:, 480]).mean() < 3


def frames_file(pid):
    """The decoded-frames file that process `pid` has mapped, or None."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return next((line.split()[-1] for line in maps if line.rstrip().endswith("/frames.raw")), None)
    except OSError:
        return None


def start_and_wait_for_dubbing(arguments, tmp_path, partial):
    """Start a run in a process group of its own and return it, with its frames file, once it is encoding."""
    process = subprocess.Popen(arguments, cwd=ROOT, env=with_temporary_folder(tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    frames = None
    while not (frames and partial.exists()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        frames = frames or frames_file(process.pid)
        time.sleep(0.02)
    return process, frames


def scratch_left(tmp_path, frames):
    return os.listdir(tmp_path / "tmp") + ([frames] if os.path.exists(frames) else [])


def test_the_run_after_a_killed_one_removes_its_scratch_and_partial_even_when_it_fails_itself(media, checkpoint,
                                                                                             tmp_path):
    out = tmp_path / "out"
    partial = out / ".yuv_facial_dubbing_add_audio.partial.mp4"
    process, frames = start_and_wait_for_dubbing(
        command(media, checkpoint, media / "yuv.mp4", out, media / "rgb.csv"), tmp_path, partial)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its ffmpeg processes: no cleanup can run
    process.communicate()
    assert os.path.exists(frames) and partial.exists() and os.listdir(tmp_path / "tmp")  # what SIGKILL leaves
    # a landmark CSV with rows for 100 frames: found wrong once the 50 frames are decoded and dubbed
    result = run(command(media, checkpoint, media / "yuv.mp4", out, media / "long.csv"), tmp_path)
    assert result.returncode == 1 and "100 rows for 50 frames" in result.stderr.strip().splitlines()[-1]
    assert scratch_left(tmp_path, frames) == [] and os.listdir(out) == []


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_stopped_run_says_so_in_one_line_and_leaves_nothing(media, checkpoint, tmp_path, stop):
    """Ctrl-C (SIGINT to the terminal's process group, ffmpeg included) and a scheduler's SIGTERM."""
    out = tmp_path / "out"
    process, frames = start_and_wait_for_dubbing(
        command(media, checkpoint, media / "yuv.mp4", out, media / "rgb.csv"), tmp_path,
        out / ".yuv_facial_dubbing_add_audio.partial.mp4")
    number = getattr(signal, stop)
    (os.killpg if stop == "SIGINT" else os.kill)(process.pid, number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + number and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"stopped by {stop}: ")
    assert scratch_left(tmp_path, frames) == [] and not out.exists()  # nor the --res_video_dir made for it


def dub_with_small_folders(media, checkpoint, tmp_path, mounts, folders):
    """(the run, its stderr lines) of dubbing after the shell commands `mounts` made small file systems in a user and
    mount namespace of its own; its last line lists what was left in `folders`."""
    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -Urm (user namespaces) to mount small file systems")
    left = " ".join(f"$(ls -A {folder})" for folder in folders)
    script = f'{mounts} && "$@"; status=$?; echo left: {left} >&2; exit $status'
    result = run(["unshare", "-Urm", "sh", "-c", script, "sh",
                  *command(media, checkpoint, media / "yuv.mp4", tmp_path / "out", media / "rgb.csv")], tmp_path)
    return result, result.stderr.strip().splitlines()


def test_scratch_that_cannot_fit_stops_the_run_before_any_work_naming_the_folder(media, checkpoint, tmp_path):
    """/dev/shm and the temporary folder are 1 MB file systems of their own (a user and mount namespace): the
    frames need 15 MB."""
    tmp = tmp_path / "tmp"
    result, lines = dub_with_small_folders(media, checkpoint, tmp_path, "mount -t tmpfs -o size=1m tmpfs /dev/shm && "
                                           "mount -t tmpfs -o size=1m tmpfs \"$TMPDIR\"", ["/dev/shm", '"$TMPDIR"'])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-2].startswith(f"{media / 'yuv.mp4'}: its decoded frames need 15 MB of scratch space")
    assert f"the temporary folder {tmp} has 1 MB free" in lines[-2] and "TMPDIR" in lines[-2]
    assert lines[-1] == "left:"  # nothing in /dev/shm or the temporary folder
    assert "dubbing:" not in result.stderr and not (tmp_path / "out").exists()  # stopped before dubbing began


def test_a_temporary_folder_too_full_for_the_speech_stops_the_run_naming_it_and_tmpdir(media, checkpoint, tmp_path):
    """The temporary folder is a 1 MB file system of its own with 32 KB left: too little for the 2 s of speech as wav
    (64 KB), which dubbing writes there. ffmpeg's messages go to the same full folder, so its exit status tells."""
    tmp = tmp_path / "tmp"
    result, lines = dub_with_small_folders(media, checkpoint, tmp_path, "mount -t tmpfs -o size=1m tmpfs \"$TMPDIR\" "
                                           "&& head -c 1015808 /dev/zero > \"$TMPDIR/filler\"", ['"$TMPDIR"'])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-2].startswith(f"{media / 'speech.wav'}: ") and "exit code" not in lines[-2], lines
    assert f"the temporary folder {tmp}, which is full" in lines[-2] and "TMPDIR" in lines[-2]
    assert lines[-1] == "left: filler" and not (tmp_path / "out").exists()
