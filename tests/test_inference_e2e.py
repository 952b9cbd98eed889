"""inference.py as a user runs it: from the shell, on a real phone clip, its landmarks detected (no CSV), the dubbed
file checked from outside (ffmpeg's view of it, and the frames against the source's)."""
import os
import subprocess
import sys

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from conftest import ROOT, SHARED
from media.decoder import read_video_frames
from media.ffmpeg import probe
from test_inference import checkpoint  # noqa: F401  (fixture: an untrained mel generator at mouth 64)

CLIP, SPEECH = "data/talking_head_a.mp4", "data/driving_speech_b.wav"
FACES = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))


def face_box(frame, scale=4):
    """(top, bottom, left, right) of the largest face OpenCV's own detector (not the pipeline's) finds."""
    grey = cv2.cvtColor(cv2.resize(frame, None, fx=1 / scale, fy=1 / scale, interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)
    faces = FACES.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    assert len(faces), "no face in a source frame"
    left, top, width, height = (scale * value for value in max(faces, key=lambda face: face[2] * face[3]))
    return top, top + height, left, left + width


@pytest.mark.needs_shared(CLIP, SPEECH)
def test_inference_from_the_shell_dubs_a_real_clip_and_changes_only_the_face(checkpoint, tmp_path):  # noqa: F811
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error"]
    source, speech = str(tmp_path / "talking.mp4"), str(tmp_path / "speech.wav")
    # 2 s of the 1080x1920 HEVC clip as shot, and 1.6 s of another speaker's speech: 40 frames
    subprocess.run([*ffmpeg, "-i", os.path.join(SHARED, CLIP), "-t", "2", "-c", "copy", source], check=True)
    subprocess.run([*ffmpeg, "-i", os.path.join(SHARED, SPEECH), "-t", "1.6", speech], check=True)
    result = subprocess.run([sys.executable, "inference.py", "--source_video_path", source, "--driving_audio_path",
                             speech, "--pretrained_clip_DINet_path", checkpoint, "--res_video_dir",
                             str(tmp_path / "out"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = str(tmp_path / "out" / "talking_facial_dubbing_add_audio.mp4")
    assert os.listdir(tmp_path / "out") == [os.path.basename(output)]
    info, source_info = probe(output), probe(source)
    assert info["has_video"] and info["has_audio"] and info["fps"] == 25
    assert (info["width"], info["height"]) == (source_info["width"], source_info["height"]) == (1080, 1920)
    # the source through x264 alone, at the quality dubbing encodes with (crf 18): what the encoder loses anyway
    encoded = str(tmp_path / "encoded.mp4")
    subprocess.run([*ffmpeg, "-i", source, "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf",
                    "18", "-pix_fmt", "yuv420p", encoded], check=True)
    frames = 0
    for dubbed, original, reencoded in zip(*(read_video_frames(path) for path in (output, source, encoded))):
        frames += 1
        change = np.abs(dubbed.astype(np.float32) - original).mean(axis=2)
        top, bottom, left, right = face_box(original)
        size = bottom - top
        mouth = change[top + 2 * size // 3:bottom, left + size // 4:right - size // 4]  # the box's lower middle
        assert mouth.mean() > 10, frames  # the untrained generator's mouth, not the speaker's
        away = np.ones(change.shape, bool)  # half the face's size or more away from it
        away[max(0, top - size // 2):bottom + size, max(0, left - size // 2):right + size // 2] = False
        loss = np.abs(reencoded.astype(np.float32) - original).mean(axis=2)[away].mean()
        assert change[away].mean() < loss + 0.5, frames  # the encoder's loss only
    assert frames == round(probe(speech, "audio file")["duration"] * 25) == 40
