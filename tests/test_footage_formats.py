"""What people dub from and with: a photograph instead of a video (jpg, png, webp), and speech in the formats
ffmpeg reads (mp3, m4a, wav at 8 to 48 kHz, mono or stereo, or a video's own soundtrack), each through
inference.py's command line, run in this process on footage made from the real sample clips (tests/footage.py)."""
import os
import runpy
import signal
import sys

import numpy as np
import pytest
import soundfile

import footage
from conftest import ROOT, refusal
from media.convert import VIDEO_CODEC, extract_audio
from media.decoder import read_video_frames
from media.ffmpeg import FFmpeg, probe, run
from test_inference import checkpoint  # noqa: F401  (fixture: an untrained mel generator at mouth 64)
from test_inference_e2e import face_box

pytestmark = pytest.mark.needs_shared(*footage.SOURCES)


def dub(source, audio, checkpoint, out_dir, monkeypatch, *flags):  # noqa: F811
    """`python inference.py` on `source` and `audio`, run in this process from the repository; the dubbed file."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["inference.py", "--source_video_path", str(source), "--driving_audio_path",
                                      str(audio), "--pretrained_clip_DINet_path", checkpoint, "--res_video_dir",
                                      str(out_dir), "--device", "cpu", *flags])
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        runpy.run_path(os.path.join(ROOT, "inference.py"), run_name="__main__")
    finally:  # inference.py turns SIGTERM and SIGHUP into Ctrl-C for its run; not for the rest of the tests
        for number, handler in handlers.items():
            signal.signal(number, handler)
    name = os.path.splitext(os.path.basename(str(source)))[0]
    output = os.path.join(out_dir, f"{name}_facial_dubbing_add_audio.mp4")
    assert os.listdir(out_dir) == [os.path.basename(output)]
    return output


def streams(path):
    """ffmpeg's lines describing the streams of a media file ("Stream #0:0...: Video: h264 ...")."""
    with FFmpeg(["-i", str(path)], str(path), loglevel="info") as ffmpeg:
        ffmpeg.wait()
        return [line for line in ffmpeg.messages() if "Stream #" in line]


def assert_dubbed_for_as_long_as(output, audio):
    """The output: H.264 video at 25 fps with an AAC soundtrack, one frame per 40 ms of `audio` and as long."""
    seconds = probe(str(audio), "audio file")["duration"]
    info, kinds = probe(output), streams(output)
    assert len(kinds) == 2 and "Video: h264" in kinds[0] and "Audio: aac" in kinds[1], kinds
    assert info["fps"] == 25 and abs(info["duration"] - seconds) <= 0.04, (info, seconds)
    frames = sum(1 for _ in read_video_frames(output))
    assert abs(frames - seconds * 25) <= 1, (frames, seconds)


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("footage")
    footage.still(folder / "face.png")
    footage.speech(folder / "speech.wav", seconds=0.83)
    return folder


@pytest.mark.parametrize("extension,turned,length", [("jpg", False, "pingpong"), ("png", False, "cut"),
                                                     ("webp", False, "pingpong"), ("jpg", True, "pingpong")],
                         ids=["jpg", "png_length_cut", "webp", "phone_jpg_turned_by_exif"])
def test_a_photograph_is_dubbed_upright_into_a_video_as_long_as_the_speech(
        extension, turned, length, material, checkpoint, tmp_path, monkeypatch):  # noqa: F811
    photo = tmp_path / f"face.{extension}"
    footage.still(photo, turned=turned)
    output = dub(photo, material / "speech.wav", checkpoint, tmp_path / "out", monkeypatch, "--length", length)
    assert_dubbed_for_as_long_as(output, material / "speech.wav")
    assert (probe(output)["width"], probe(output)["height"]) == (footage.WIDTH, footage.HEIGHT)
    picture = next(read_video_frames(str(photo))).astype(np.float32)  # as ffmpeg shows it: upright
    top, bottom, left, right = face_box(picture.astype(np.uint8), scale=1)  # OpenCV finds upright faces only
    size = bottom - top
    away = np.ones(picture.shape[:2], bool)  # half the face's size or more away from it
    away[max(0, top - size // 2):bottom + size, max(0, left - size // 2):right + size // 2] = False
    encoded = str(tmp_path / "encoded.mp4")  # the photograph through x264 alone, at dubbing's quality (crf 18)
    run(["-i", str(photo), "-frames:v", "1", *VIDEO_CODEC, encoded], str(photo), encoded)
    loss = np.abs(next(read_video_frames(encoded)) - picture).mean(axis=2)[away].mean()
    for t, frame in enumerate(read_video_frames(output)):
        change = np.abs(frame - picture).mean(axis=2)
        mouth = change[top + 2 * size // 3:bottom, left + size // 4:right - size // 4]  # the box's lower middle
        assert mouth.mean() > 10, t  # the untrained generator's mouth, not the photograph's
        assert change[away].mean() < loss + 0.5, t  # the encoder's loss only


# every format at every rate, each rate in mono and in stereo, without trying all 24 combinations
AUDIO = [("mp3", 8000, 1), ("mp3", 16000, 2), ("mp3", 44100, 1), ("mp3", 48000, 2),
         ("m4a", 8000, 2), ("m4a", 16000, 1), ("m4a", 44100, 2), ("m4a", 48000, 1),
         ("wav", 8000, 1), ("wav", 16000, 2), ("wav", 44100, 2), ("wav", 48000, 1)]


@pytest.mark.parametrize("extension,rate,channels", AUDIO)
def test_speech_in_any_format_rate_and_layout_is_dubbed_for_its_whole_length(
        extension, rate, channels, material, checkpoint, tmp_path, monkeypatch):  # noqa: F811
    audio = tmp_path / f"speech.{extension}"
    footage.speech(audio, rate, channels, seconds=0.83)
    output = dub(material / "face.png", audio, checkpoint, tmp_path / "out", monkeypatch)
    assert_dubbed_for_as_long_as(output, audio)


def test_a_videos_own_soundtrack_is_speech_to_dub_with(material, checkpoint, tmp_path, monkeypatch):  # noqa: F811
    video = tmp_path / "talking.mp4"
    footage.short_clip(video, seconds=1)
    output = dub(material / "face.png", video, checkpoint, tmp_path / "out", monkeypatch)
    assert_dubbed_for_as_long_as(output, video)


def test_a_driving_video_dubs_with_its_first_audio_track_from_where_that_track_starts(
        material, checkpoint, tmp_path, monkeypatch):  # noqa: F811
    """Speech as a video's first audio track, starting 0.6 s into the file, and a 1 kHz tone as a second track in
    stereo (ffmpeg's own pick): the lips are made, and the output sounds, from the first track as it plays."""
    drive, late = tmp_path / "drive.mp4", 0.6
    footage.speech(tmp_path / "speech.wav", seconds=0.83)
    run(["-f", "lavfi", "-i", "color=c=gray:s=64x64:d=2", "-itsoffset", str(late), "-i", str(tmp_path / "speech.wav"),
         "-f", "lavfi", "-i", "sine=frequency=1000:duration=2", "-map", "0:v", "-map", "1:a", "-map", "2:a",
         *VIDEO_CODEC, "-c:a", "aac", "-ac:a:1", "2", "-ar:a:1", "44100", str(drive)], "lavfi", str(drive))
    output = dub(material / "face.png", drive, checkpoint, tmp_path / "out", monkeypatch)
    kinds = streams(output)
    assert len(kinds) == 2 and "Audio: aac" in kinds[1] and "mono" in kinds[1], kinds
    frames = sum(1 for _ in read_video_frames(output))
    assert abs(frames - (late + 0.83) * 25) <= 1, frames  # the tone's 2 s would give 50; the speech from 0 s, 21
    extract_audio(output, str(tmp_path / "heard.wav"))
    heard, rate = soundfile.read(tmp_path / "heard.wav")
    assert np.abs(heard[:int(0.5 * rate)]).max() < 0.01 < np.abs(heard[int(late * rate):]).max()


def test_of_two_video_streams_the_larger_is_dubbed_though_it_comes_second(
        material, checkpoint, tmp_path, monkeypatch):  # noqa: F811
    clip, both = tmp_path / "clip.mp4", tmp_path / "two_streams.mkv"
    footage.short_clip(clip, seconds=1)
    run(["-f", "lavfi", "-i", "testsrc=size=320x320:rate=25:duration=1", "-i", str(clip), "-map", "0:v", "-map",
         "1:v", "-map", "1:a", *VIDEO_CODEC, "-c:a", "copy", str(both)], "lavfi", str(both))
    output = dub(both, material / "speech.wav", checkpoint, tmp_path / "out", monkeypatch)
    assert (probe(output)["width"], probe(output)["height"]) == (footage.WIDTH, footage.HEIGHT)
    dubbed, source = (np.stack(list(read_video_frames(str(path))))[:20].astype(np.float32) for path in (output, clip))
    top, bottom, left, right = face_box(source[0].astype(np.uint8), scale=1)
    change = np.abs(dubbed - source).mean(axis=3)
    assert change[:, :top].mean() < 3 < change[:, top + 2 * (bottom - top) // 3:bottom].mean()  # the clip, dubbed


def test_a_text_file_named_jpg_is_one_line_naming_it_and_nothing_is_written(
        checkpoint, tmp_path, monkeypatch, capsys):  # noqa: F811
    photo = tmp_path / "face.jpg"
    photo.write_text("not a photograph\n")
    message = refusal("inference.py", ["--source_video_path", str(photo), "--driving_audio_path",
                                       footage.shared(footage.SPEECH_A), "--pretrained_clip_DINet_path",
                                       checkpoint, "--res_video_dir", str(tmp_path / "out"), "--device", "cpu"],
                      monkeypatch, capsys)
    assert message.startswith(f"--source_video_path {photo}: not a readable video"), message
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")
