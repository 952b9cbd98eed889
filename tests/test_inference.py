"""Dubbing: one frame per 40 ms of audio, audio in the file, the source's resolution, the face pasted back softly."""
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from benchmark.dubbing import face_boxes, video_psnr
from common.errors import UserError
from common.geometry import CropGeometry, paste_mask
from conftest import ROOT
from data.openface_csv import read_openface_csv
from data.procedural_faces import make_demo_data
from dubbing.pipeline import dub, first_pasted_row, load_generator, ping_pong
from inference import length_note, rate_note
from media.decoder import read_video_frames
from media.ffmpeg import probe
from models import DINet
from models.checkpoint import atomic_save


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dub_demo")
    make_demo_data(str(folder), num_videos=2, seconds=3.0, seed=3)
    return folder


def save_generator(network, folder):
    path = str(folder / "netG_model_epoch_2.pth")
    atomic_save({"epoch": 3, "state_dict": {"net_g": network.state_dict()}, "generator_config":
                 network.config.to_dict(), "mouth_region_size": 64, "audio_feature": "mel"}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained mel generator at mouth 64, saved as training saves it."""
    torch.manual_seed(0)
    return save_generator(DINet(3, 15, 80), tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def audio_driven_checkpoint(tmp_path_factory):
    """The same generator with its BatchNorm statistics taken from one batch of random inputs, so that every layer
    passes on a full-scale signal as trained weights do: its mouths follow the audio visibly (with fresh statistics
    each layer shrinks the signal, and the face it paints is a nearly flat grey whatever the audio)."""
    torch.manual_seed(0)
    network = DINet(3, 15, 80)
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # the statistics of the one batch below, not a running average
    inputs = torch.Generator().manual_seed(1)
    with torch.no_grad():
        network.train()(torch.rand(8, 3, 104, 80, generator=inputs), torch.rand(8, 15, 104, 80, generator=inputs),
                        torch.randn(8, 80, 5, generator=inputs))
    return save_generator(network.eval(), tmp_path_factory.mktemp("ckpt_audio_driven"))


def cut_audio(source, seconds, path):
    """The first `seconds` of `source`, looped when it is shorter."""
    import imageio_ffmpeg
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-stream_loop", "3", "-i", str(source),
                    "-t", str(seconds), str(path)], check=True)
    return str(path)


def test_a_video_at_another_frame_rate_is_said_to_be_dubbed_at_25_fps(tmp_path):
    """A phone's 29.97 fps, a 60 fps clip or a 15 fps screen recording: the dub has 25 frames a second whatever the
    source's, and the user is told; a 25 fps video needs no word."""
    import imageio_ffmpeg
    notes = {}
    for rate in ("30000/1001", "60", "15", "25"):
        video = str(tmp_path / f"clip_{rate.replace('/', '_')}.mp4")
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc=size=64x64:rate={rate}:duration=0.4", video], check=True)
        notes[rate] = rate_note(video, probe(video))
    assert "29.97 fps; the dub is 25 fps" in notes["30000/1001"] and notes["30000/1001"].endswith("left out")
    assert "60 fps;" in notes["60"] and "15 fps;" in notes["15"] and notes["15"].endswith("repeated")
    assert notes["25"] is None


def test_ping_pong_runs_the_video_forwards_then_backwards():
    assert ping_pong(3, 8).tolist() == [0, 1, 2, 2, 1, 0, 0, 1]
    assert ping_pong(5, 3).tolist() == [0, 1, 2]


def test_paste_mask_covers_the_mouth_and_fades_before_the_crop_border():
    geometry = CropGeometry(64)
    mask = paste_mask(geometry)
    assert mask[geometry.radius + 32, geometry.radius_1_4 + 32] > 0.99
    assert mask[0].max() < 1e-3 and mask[:, 0].max() < 1e-3 and mask[-1].max() < 1e-3 and mask[:, -1].max() < 1e-3
    assert mask[: geometry.radius - 8].max() < 1e-3  # the upper face is the source's own


def test_dubbed_video_follows_the_audio_and_keeps_the_upper_face(demo, audio_driven_checkpoint, tmp_path):
    video = demo / "split_video_25fps" / "demo_000.mp4"
    audio = cut_audio(demo / "split_video_25fps_audio" / "demo_001.wav", 5.0, tmp_path / "speech.wav")  # > video
    generator = load_generator(audio_driven_checkpoint, torch.device("cpu"))
    assert (generator.mouth_size, generator.audio_feature) == (64, "mel")
    output = tmp_path / "out.mp4"
    result = dub(str(video), audio, generator, str(output), torch.device("cpu"),
                 landmark_csv=str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv"), batch_size=4,
                 face_video_path=str(tmp_path / "face.mp4"))
    info, source_info = probe(str(output)), probe(str(video))
    assert result.frames == 125 and result.passed_through == 0
    assert length_note(result, "pingpong").startswith(
        "note: the video (3.00 s) is shorter than the speech (5.00 s): played forwards and backwards")
    assert info["has_audio"] and info["fps"] == 25
    assert (info["width"], info["height"]) == (source_info["width"], source_info["height"])
    assert abs(info["duration"] - 5.0) < 0.1
    out_frames = np.stack(list(read_video_frames(str(output))))
    source_frames = np.stack(list(read_video_frames(str(video))))
    assert len(out_frames) == 125
    aligned = source_frames[ping_pong(len(source_frames), 125)].astype(np.float32)
    landmarks = read_openface_csv(str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv"))
    eyes = int(landmarks[:, 27, 1].max())  # nose bridge top: everything above is upper face
    upper = np.abs(out_frames[:, :eyes].astype(np.float32) - aligned[:, :eyes]).mean()
    lower = np.abs(out_frames.astype(np.float32) - aligned).max()
    assert upper < 2.0  # codec noise only
    assert lower > 50   # the untrained generator's mouth differs visibly: the paste-back happened
    assert probe(str(tmp_path / "face.mp4"))["width"] == 80
    # the same video dubbed with other speech as long: other mouths, and the same frames away from the face
    other = cut_audio(demo / "split_video_25fps_audio" / "demo_000.wav", 5.0, tmp_path / "other.wav")
    dub(str(video), other, generator, str(tmp_path / "other.mp4"), torch.device("cpu"),
        landmark_csv=str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv"), batch_size=4, progress=False)
    other_frames = np.stack(list(read_video_frames(str(tmp_path / "other.mp4"))))
    assert len(other_frames) == 125
    change = np.abs(other_frames.astype(np.float32) - out_frames).mean(axis=3)  # (125, H, W)
    for t, points in enumerate(landmarks[ping_pong(len(landmarks), 125)]):
        lips = points[48:68].astype(int)
        (lips_left, lips_top), (lips_right, lips_bottom) = lips.min(0), lips.max(0)
        assert change[t, lips_top:lips_bottom, lips_left:lips_right].mean() > 3, t  # each frame's mouth moved
        (left, top), (right, bottom) = points.min(0), points.max(0)
        margin = 0.25 * max(right - left, bottom - top)
        away = np.ones(change.shape[1:], bool)
        away[max(0, int(top - margin)):int(bottom + margin), max(0, int(left - margin)):int(right + margin)] = False
        assert change[t][away].mean() < 0.5, t  # a quarter of the face's size away from it: encoder noise only
    from dubbing.pipeline import encoder_threads
    threads = encoder_threads(torch.device("cpu"))
    assert threads == max(1, torch.get_num_threads() // 4) and encoder_threads(torch.device("cuda")) is None
    assert f" threads={threads} ".encode() in open(output, "rb").read()  # x264 writes its options into the stream


MAPPED_BLOCKS = """
import ctypes, sys, torch
from dubbing.pipeline import dub, load_generator
libc = ctypes.CDLL("libc.so.6")
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def mapped_for_a_large_block():  # 1 GB: no free chunk of the heap holds it, so glibc maps it unless told not to
    before = libc.mallinfo2().hblks
    block = libc.malloc(1 << 30)
    mapped = libc.mallinfo2().hblks - before
    libc.free(block)
    return mapped
video, audio, csv, checkpoint, output = sys.argv[1:]
dub(video, audio, load_generator(checkpoint, torch.device("cpu")), output, torch.device("cpu"), landmark_csv=csv,
    progress=False)
print(mapped_for_a_large_block())
from inference import tune_cpu_allocator
tune_cpu_allocator()
print(mapped_for_a_large_block())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc statistics")
def test_dubbing_from_python_leaves_the_allocator_to_inference_py(demo, checkpoint, tmp_path):
    """dub() changes no process-wide setting: after it, glibc still maps a large block on its own; inference.py's
    tune_cpu_allocator (run before its work) is what keeps the generator's tensors in the reused heap."""
    audio = cut_audio(demo / "split_video_25fps_audio" / "demo_001.wav", 0.4, tmp_path / "speech.wav")
    result = subprocess.run([sys.executable, "-c", MAPPED_BLOCKS, str(demo / "split_video_25fps" / "demo_000.mp4"),
                             audio, str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv"), checkpoint,
                             str(tmp_path / "out.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "0"]


def test_audio_shorter_than_five_frames_is_a_clear_error_and_writes_nothing(demo, checkpoint, tmp_path):
    audio = cut_audio(demo / "split_video_25fps_audio" / "demo_001.wav", 0.1, tmp_path / "short.wav")
    generator = load_generator(checkpoint, torch.device("cpu"))
    with pytest.raises(UserError, match="short.wav: 100 ms of audio; dubbing needs at least 200 ms"):
        dub(str(demo / "split_video_25fps" / "demo_000.mp4"), audio, generator, str(tmp_path / "o.mp4"),
            torch.device("cpu"), landmark_csv=str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv"))
    assert os.listdir(tmp_path) == ["short.wav"]


def test_checkpoint_for_another_mouth_size_is_rejected(checkpoint):
    with pytest.raises(UserError, match="trained at mouth 64, but --mouth_region_size is 256"):
        load_generator(checkpoint, torch.device("cpu"), mouth_size=256)


def test_dinet_checkpoint_needs_deepspeech_features(demo, tmp_path):
    path = str(tmp_path / "dinet.pth")
    torch.save({"epoch": 1, "state_dict": {"net_g": {"module." + k: v for k, v in DINet(3, 15, 29).state_dict().items()}}}, path)
    generator = load_generator(path, torch.device("cpu"), mouth_size=256)
    assert (generator.mouth_size, generator.audio_feature) == (256, "deepspeech")
    with pytest.raises(UserError, match="pass --audio_feature_path FILE.npy"):
        dub(str(demo / "split_video_25fps" / "demo_000.mp4"), str(demo / "split_video_25fps_audio" / "demo_001.wav"),
            generator, str(tmp_path / "o.mp4"), torch.device("cpu"))


@pytest.mark.parametrize("args,message", [
    (["--source_video_path", "/nonexistent.mp4"], "--source_video_path /nonexistent.mp4: no such file"),
    (["--pretrained_clip_DINet_path", "/nonexistent.pth"], "--pretrained_clip_DINet_path /nonexistent.pth: no such checkpoint file"),
])
def test_bad_inference_input_is_one_line_and_nonzero_exit(demo, args, message):
    base = ["--source_video_path", str(demo / "split_video_25fps" / "demo_000.mp4"),
            "--driving_audio_path", str(demo / "split_video_25fps_audio" / "demo_001.wav")]
    result = subprocess.run([sys.executable, "inference.py", *base, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)


@pytest.mark.parametrize("box_height, box_width", [(312, 240), (78, 60), (70, 53)])
def test_pasting_reads_no_crop_row_above_the_first_pasted_row(box_height, box_width):
    """Dubbing leaves the generated rows above first_pasted_row uncomputed: whatever they hold, the frame pasted
    is the same, the face box larger or smaller than the crop."""
    from dubbing.blend import FaceBlender
    from media.yuv import Colour, frame_bytes, planes
    geometry = CropGeometry(64)
    mask = paste_mask(geometry)
    first_row = first_pasted_row(mask)
    assert 16 <= first_row <= geometry.radius - 8  # most of the band above the mouth is left out
    rng = np.random.default_rng(0)
    frame = planes(rng.integers(16, 236, frame_bytes(400, 300), dtype=np.uint8), 400, 300)
    face = rng.uniform(0, 255, (geometry.height, geometry.width, 3)).astype(np.float32)
    other = face.copy()
    other[:first_row] = rng.uniform(0, 255, (first_row, geometry.width, 3))
    box = (41, 41 + box_height, 17, 17 + box_width)
    pasted = []
    for generated in (face, other):
        rows = tuple(np.array(plane[slice(41, box[1]) if i == 0 else slice(20, (box[1] + 1) // 2)])
                     for i, plane in enumerate(frame))
        FaceBlender(mask, Colour("bt709")).paste(rows, generated, box)
        pasted.append(rows)
    assert all(np.array_equal(a, b) for a, b in zip(*pasted))


@pytest.mark.parametrize("chroma", [128, 110])
def test_a_black_and_white_frame_gets_a_black_and_white_mouth(chroma):
    """The generator draws in colour; pasted into black and white footage (neutral chroma) the frame keeps its chroma
    and takes the face's luma, pasted into colour footage it takes both."""
    from dubbing.blend import FaceBlender
    from media.yuv import Colour, frame_bytes, planes
    geometry = CropGeometry(64)
    rng = np.random.default_rng(0)
    y, u, v = planes(rng.integers(16, 236, frame_bytes(400, 300), dtype=np.uint8), 400, 300)
    u[:], v[:] = chroma, 128 + (128 - chroma)
    face = np.zeros((geometry.height, geometry.width, 3), np.float32)
    face[..., 0] = 230  # a red mouth
    box = (40, 40 + geometry.height, 20, 20 + geometry.width)
    rows = tuple(np.array(plane[box[0]:box[1]] if i == 0 else plane[box[0] // 2:box[1] // 2])
                 for i, plane in enumerate((y, u, v)))
    before = tuple(plane.copy() for plane in rows)
    FaceBlender(paste_mask(geometry), Colour("bt709")).paste(rows, face, box)
    assert not np.array_equal(rows[0], before[0])
    assert all(np.array_equal(a, b) for a, b in zip(rows[1:], before[1:])) == (chroma == 128)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux's")
def test_pipes_to_and_from_ffmpeg_hold_a_megabyte():
    import fcntl
    from media.ffmpeg import PIPE_BYTES, widen_pipe
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as pipe, os.fdopen(write_end, "wb"):
        before = fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_GETPIPE_SZ", 1032))
        widen_pipe(pipe)
        assert fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_GETPIPE_SZ", 1032)) == PIPE_BYTES > before


def test_decoded_video_streams_frames_and_stops_early(demo):
    from media.decoder import DecodedVideo
    path = str(demo / "split_video_25fps" / "demo_000.mp4")
    expected = list(read_video_frames(path))
    video = DecodedVideo(path, background=True)
    assert np.array_equal(video.frame(3), expected[3])  # waits for frame 3 only
    assert len(video) == len(expected) and np.array_equal(video.frames[-1], expected[-1])
    video.close()
    DecodedVideo(path, background=True).close()  # closing while it decodes ends the decoder
    video = DecodedVideo(path)  # waits for every frame
    assert len(video.frames) == len(expected) and np.array_equal(video.frames[5], expected[5])
    video.close()


def test_decoded_video_streams_4_2_0_frames_and_stops_early(demo):
    from media.decoder import DecodedVideo
    path = str(demo / "split_video_25fps" / "demo_000.mp4")
    expected = list(read_video_frames(path))  # RGB as ffmpeg converts it
    near = lambda ours, theirs: np.abs(ours.astype(int) - theirs).mean() < 1.5  # two conversions, not one
    video = DecodedVideo(path, background=True, pixel_format="yuv420p")
    height, width = expected[0].shape[:2]
    y, u, v = video.frame(3)  # waits for frame 3 only
    assert y.shape == (height, width) and u.shape == v.shape == (height // 2, width // 2)
    assert near(video.rgb(3), expected[3])
    assert len(video) == len(expected) and near(video.rgb(len(expected) - 1), expected[-1])
    video.close()
    DecodedVideo(path, background=True, pixel_format="yuv420p").close()  # closing while it decodes ends the decoder
    video = DecodedVideo(path, background=True, pixel_format="yuv420p")
    streamed = list(video.rgb_frames())  # as they decode, to the last
    assert len(streamed) == len(expected) and near(streamed[0], expected[0]) and near(streamed[-1], expected[-1])
    video.close()
    video = DecodedVideo(path, pixel_format="yuv420p")  # waits for every frame
    frames = list(video.rgb_frames())
    assert len(frames) == len(expected) and near(frames[5], expected[5])
    video.close()


def test_decoding_on_the_gpus_decoder_gives_the_software_decoders_frames_or_falls_back_to_it(demo):
    """NVDEC is asked for on CUDA device 0: where it cannot start (no GPU, no driver, this ffmpeg without CUDA), the
    software decoder decodes instead and the reason is kept; either way the frames are the software decoder's."""
    from media.decoder import DecodedVideo
    path = str(demo / "split_video_25fps" / "demo_000.mp4")
    software, asked = (DecodedVideo(path, pixel_format="yuv420p", cuda_device=device) for device in (None, 0))
    try:
        assert software.decoder == "software" and software.hardware_failure is None
        assert len(asked) == len(software) and np.array_equal(asked.frames, software.frames)
        if not torch.cuda.is_available():
            assert asked.decoder == "software" and asked.hardware_failure, asked.hardware_failure
        assert (asked.decoder == "cuda") == (asked.hardware_failure is None)
    finally:
        software.close()
        asked.close()


def test_an_ffmpeg_built_without_a_cuda_decoder_is_named_with_the_package_that_has_one(tmp_path, monkeypatch):
    """The ffmpeg that requirements.txt installs lists CUDA's decoder; one that does not (imageio-ffmpeg 0.7's,
    answering -hwaccels as below) is why dubbing on a GPU decodes in software, and the reason names it and the fix."""
    from media.ffmpeg import hardware_decoders, no_cuda_decoder
    assert no_cuda_decoder() is None, no_cuda_decoder()
    older = tmp_path / "ffmpeg"
    older.write_text("#!/bin/sh\nprintf 'Hardware acceleration methods:\\nvdpau\\n\\n'\n")
    older.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(older))
    hardware_decoders.cache_clear()
    try:
        assert hardware_decoders() == {"vdpau"}
        assert str(older) in no_cuda_decoder() and "imageio-ffmpeg 0.8" in no_cuda_decoder()
    finally:
        hardware_decoders.cache_clear()


STOPPABLE = ("import signal, sys, time\nfrom common.errors import run_command, stopped_without\n"
             "def main():\n    with stopped_without('out.mp4'):\n        {block}\nrun_command(main)\n")


def test_a_run_started_with_nohup_goes_on_when_its_terminal_closes():
    """nohup (or a shell's `&`, for SIGINT) starts a run with the signal ignored: it stays ignored, not made a stop."""
    block = "print('started', flush=True); time.sleep(1); print('finished', flush=True)"
    process = subprocess.Popen([sys.executable, "-c", STOPPABLE.format(block=block)], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # as nohup does
    assert process.stdout.readline() == "started\n"
    process.send_signal(signal.SIGHUP)  # the terminal closed
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0 and stdout == "finished\n" and stderr == ""


def test_a_second_ctrl_c_does_not_cut_the_first_ones_cleanup_short():
    """Ctrl-C pressed twice: the second, come while the first one's cleanup runs (dubbing's threads joined, its
    scratch and partial output removed), would leave threads running as Python exits, which aborts it."""
    block = ("try:\n            signal.raise_signal(signal.SIGINT); time.sleep(10)\n        finally:\n"
             "            signal.raise_signal(signal.SIGINT); time.sleep(0.2); print('cleaned up', flush=True)")
    result = subprocess.run([sys.executable, "-c", STOPPABLE.format(block=block)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGINT and result.stdout == "cleaned up\n", result
    assert result.stderr == "stopped by SIGINT: out.mp4 not written\n"


def running(pid):
    """Whether process `pid` runs (a zombie, ended but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_ffmpeg_ends_with_the_process_that_started_it_even_a_killed_one():
    """SIGKILL (the out-of-memory killer's) runs no cleanup: a decoder's ffmpeg left running would go on filling
    the scratch folder with frames that nothing reads."""
    script = ("import time\nfrom media.ffmpeg import FFmpeg\n"
              "ffmpeg = FFmpeg(['-re', '-f', 'lavfi', '-i', 'testsrc=size=64x64:rate=25:duration=60', '-f', 'null', "
              "'-'], 'testsrc')\nprint(ffmpeg.process.pid, flush=True)\ntime.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    ffmpeg = int(process.stdout.readline())
    try:
        assert running(ffmpeg)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while running(ffmpeg) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(ffmpeg)
    finally:
        process.kill()
        if running(ffmpeg):
            os.kill(ffmpeg, signal.SIGKILL)


def test_frames_that_fill_the_scratch_folder_stop_decoding_naming_it_and_leave_nothing(tmp_path):
    """A raw H.264 stream gives no duration, so the folder is chosen for 11 s of frames: 20 s fill it (2 MB of its
    own, in a user and mount namespace), as another program filling the disk meanwhile would. ffmpeg's messages go
    to the same full folder, so the full folder is seen by its free space."""
    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -Urm (user namespaces) to mount a small file system")
    stream = tmp_path / "long.h264"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=25:duration=20", "-c:v", "libx264", "-preset", "ultrafast", str(stream)],
                   check=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    decode = ("import sys\nfrom common.errors import UserError\nfrom media.decoder import DecodedVideo\ntry:\n"
              "    print(len(DecodedVideo(sys.argv[1], pixel_format='yuv420p')))\n"
              "except UserError as error:\n    sys.exit(str(error))\n")
    script = ("mount -t tmpfs -o size=1m tmpfs /dev/shm && mount -t tmpfs -o size=2m tmpfs \"$TMPDIR\" && "
              "\"$@\"; status=$?; echo left: $(ls -A /dev/shm) $(ls -A \"$TMPDIR\") >&2; exit $status")
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", sys.executable, "-c", decode, str(stream)],
                            cwd=ROOT, env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr[-2000:]
    assert lines[0].startswith(f"{stream}: the decoded frames filled {scratch}/dub-frames-"), lines
    assert "TMPDIR" in lines[0] and lines[-1] == "left:"


def test_faces_found_as_the_video_decodes_are_those_of_the_decoded_video(demo):
    from data.landmark_detector import detect_landmarks
    from dubbing.faces import find_face
    from media.decoder import DecodedVideo
    path = str(demo / "split_video_25fps" / "demo_000.mp4")
    video = DecodedVideo(path, background=True, pixel_format="yuv420p")
    streamed = find_face(video)  # from the first frames on, beside the decoder
    again = find_face(video)
    whole_frames, found = detect_landmarks(list(video.rgb_frames()))
    video.close()
    assert streamed.usable.all() and np.array_equal(streamed.landmarks, again.landmarks)
    # the mesh run on a box around the face finds the face it finds in the whole frame
    assert found.all() and np.abs(streamed.landmarks - whole_frames).mean() < 1.0


def test_mediapipe_is_silenced_only_while_it_starts_even_when_threads_start_it_together(capfd):
    """stderr is the process's file descriptor 2 (a terminal's progress bars write there, as below)."""
    from data.landmark_detector import _quiet_native_stderr, face_detector
    with face_detector():
        os.write(2, b"while faces are found\n")  # where the first pass's progress bar writes
    with contextlib.ExitStack() as second:
        with _quiet_native_stderr():  # two threads start detectors; the first is done first
            second.enter_context(_quiet_native_stderr())
        os.write(2, b"while the second starts\n")
    os.write(2, b"after both\n")
    err = capfd.readouterr().err
    assert "while faces are found" in err and "after both" in err and "while the second starts" not in err
    assert "XNNPACK" not in err  # mediapipe's start-up line


def test_bf16_dubbing_stays_near_fp32_and_writes_the_face_video(demo, audio_driven_checkpoint, tmp_path):
    video = str(demo / "split_video_25fps" / "demo_000.mp4")
    # 5 frames (the shortest audio dubbed): bf16 runs on every CPU, emulated (~4 s a frame) where it is not native
    audio = cut_audio(demo / "split_video_25fps_audio" / "demo_001.wav", 0.2, tmp_path / "speech.wav")
    landmarks = str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv")
    generator = load_generator(audio_driven_checkpoint, torch.device("cpu"))  # faces that vary, as trained ones do
    timings = {}
    for amp in ("off", "bf16"):
        dub(video, audio, generator, str(tmp_path / f"{amp}.mp4"), torch.device("cpu"), landmark_csv=landmarks,
            batch_size=16, amp=amp, face_video_path=str(tmp_path / f"{amp}_face.mp4"), timings=timings,
            progress=False)
    assert {"decode", "references", "crops", "generator", "blend", "encode", "total"} <= set(timings)
    boxes = face_boxes(landmarks, (probe(video)["width"], probe(video)["height"]), 5)
    in_boxes = video_psnr(str(tmp_path / "bf16.mp4"), str(tmp_path / "off.mp4"), boxes)
    crops = video_psnr(str(tmp_path / "bf16_face.mp4"), str(tmp_path / "off_face.mp4"))
    whole = video_psnr(str(tmp_path / "bf16.mp4"), str(tmp_path / "off.mp4"))
    assert 33 < in_boxes < whole < 60  # the README's 35 dB in the boxes, the rest the same; bf16 did change them
    assert crops > 29  # the generated crops themselves


def test_two_generator_streams_dub_as_one_does(demo, checkpoint, tmp_path, monkeypatch):
    """On a CPU, batches go to two generator streams at once (each on half the threads); their faces reach the
    writer in order, the same as one stream makes them."""
    import dubbing.pipeline
    video = str(demo / "split_video_25fps" / "demo_000.mp4")
    audio = cut_audio(demo / "split_video_25fps_audio" / "demo_001.wav", 1.2, tmp_path / "speech.wav")
    landmarks = str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv")
    generator = load_generator(checkpoint, torch.device("cpu"))
    mask_mouth, threads = dubbing.pipeline.mask_mouth, set()

    def masking(*args):  # called once per batch, in the stream that generates it
        threads.add(threading.current_thread().name)
        return mask_mouth(*args)
    monkeypatch.setattr(dubbing.pipeline, "mask_mouth", masking)
    frames = {}
    for streams in (1, 2):
        threads.clear()
        monkeypatch.setattr(dubbing.pipeline, "generator_streams", lambda device: streams)
        dub(video, audio, generator, str(tmp_path / f"{streams}.mp4"), torch.device("cpu"), landmark_csv=landmarks,
            batch_size=4, progress=False)
        assert len(threads) == streams  # the batches went to that many generator threads
        frames[streams] = np.stack(list(read_video_frames(str(tmp_path / f"{streams}.mp4")))).astype(np.float64)
    assert len(frames[1]) == len(frames[2]) == 30  # 8 batches
    between_frames = np.abs(np.diff(frames[1], axis=0)).mean(axis=(1, 2, 3))
    between_runs = np.abs(frames[2] - frames[1]).mean(axis=(1, 2, 3))
    assert between_runs.max() < between_frames.min() / 10  # each frame in its place (an order mix-up would show)
    monkeypatch.undo()
    assert dubbing.pipeline.generator_streams(torch.device("cpu")) == (2 if torch.get_num_threads() >= 2 else 1)


def test_crops_and_blends_spread_over_host_threads_dub_as_one_thread_does(demo, checkpoint, tmp_path, monkeypatch):
    """On a GPU the host crops and blends on several threads (`host_threads`); forced here on a CPU, the dubbed
    video and the face video are the one-thread run's to the bit, each frame in its place."""
    import dubbing.pipeline
    video = str(demo / "split_video_25fps" / "demo_000.mp4")
    audio = cut_audio(demo / "split_video_25fps_audio" / "demo_001.wav", 1.2, tmp_path / "speech.wav")
    landmarks = str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv")
    generator = load_generator(checkpoint, torch.device("cpu"))
    face_crop, paste, threads = dubbing.pipeline.face_crop, dubbing.pipeline.FaceBlender.paste, set()

    def cropping(*args):
        threads.add(threading.current_thread().name.rsplit("_", 1)[0])
        return face_crop(*args)

    def pasting(*args):
        threads.add(threading.current_thread().name.rsplit("_", 1)[0])
        return paste(*args)
    monkeypatch.setattr(dubbing.pipeline, "face_crop", cropping)
    monkeypatch.setattr(dubbing.pipeline.FaceBlender, "paste", pasting)
    outputs = {}
    for count in (1, 4):
        threads.clear()
        monkeypatch.setattr(dubbing.pipeline, "host_threads", lambda device: count)
        out, faces = tmp_path / f"{count}.mp4", tmp_path / f"{count}_face.mp4"
        dub(video, audio, generator, str(out), torch.device("cpu"), landmark_csv=landmarks, batch_size=4,
            face_video_path=str(faces), progress=False)
        outputs[count] = [np.stack(list(read_video_frames(str(path)))) for path in (out, faces)]
        expected = {"dub-crop", "dub-blend"} if count > 1 else {"dub-generator", "dub-writer"}
        assert expected <= threads, threads
    assert len(outputs[1][0]) == len(outputs[1][1]) == 30
    for one, spread in zip(outputs[1], outputs[4]):
        assert np.array_equal(one, spread)
    monkeypatch.undo()
    assert dubbing.pipeline.host_threads(torch.device("cpu")) == 1


def test_published_loop_dubs_as_dinets_inference_script(demo, tmp_path):
    """benchmark/published/ (bench.py's baseline): frames - 1 frames made, the driving audio muxed in, and each
    frame the source's except the top 3r rows of its face crop, where the generator's face is pasted."""
    from benchmark.published import published_inference, published_way
    from common.geometry import compute_crop_radius
    video = demo / "split_video_25fps" / "demo_000.mp4"
    audio = str(demo / "split_video_25fps_audio" / "demo_001.wav")
    csv = demo / "split_video_25fps_landmark_openface" / "demo_000.csv"
    torch.manual_seed(0)
    network = published_way(DINet(3, 15, 80).eval())
    started = time.perf_counter()
    seconds, made = published_inference(str(video), audio, str(csv), np.random.rand(20, 80), network, 64, 12,
                                        str(tmp_path))
    wall = time.perf_counter() - started
    output = str(tmp_path / "published.mp4")
    assert made == 11 and probe(output)["has_audio"]
    assert 0.8 * wall < seconds <= wall  # its time is the whole call's, from frame extraction to the muxed file
    out_frames = np.stack(list(read_video_frames(output))).astype(np.float32)
    source = np.stack(list(read_video_frames(str(video))))[:12].astype(np.float32)
    landmarks = np.pad(read_openface_csv(str(csv))[:12].astype(int), ((2, 2), (0, 0), (0, 0)), mode="edge")
    assert len(out_frames) == 11
    for t in (0, 5, 10):  # output t: source frame t, the centre of padded landmark rows t..t+4
        window = landmarks[t:t + 5]
        radius = compute_crop_radius((source.shape[2], source.shape[1]), window, random_scale=1.05)
        points = window[2]
        top, left = points[29, 1] - radius, points[33, 0] - radius - radius // 4
        inside = np.zeros(source.shape[1:3], bool)
        inside[top:top + 3 * radius, left:points[33, 0] + radius + radius // 4] = True
        difference = np.abs(out_frames[t] - source[t]).mean(axis=2)
        assert difference[~inside].mean() < 4 and difference[inside].mean() > 4 * difference[~inside].mean()


def run_bench(tmp_path, *args):
    """bench.py's rows (its --json) and the seconds its process ran, by this test's clock: every timed run of a row
    happens in that process, one after another, so the times its rates imply add up to less."""
    import json
    path = tmp_path / "bench.json"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "bench.py", *args, "--json", str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(path.read_text()), result.stdout, wall


@pytest.mark.long
def test_bench_quick_reports_end_to_end_dubbing_and_the_loader(tmp_path):
    """bench.py --quick: the published loop's row, the inference rows (fp32, and bf16 with its PSNR against fp32)
    with their speed-up over it, and the loader row."""
    # bf16 is measured on every CPU (emulated where it has no native bf16: slow, so 12 frames)
    rows, _, wall = run_bench(tmp_path, "--tasks", "inference,loader", "--quick", "--video", "320x480",
                              "--video_seconds", "0.48", "--precision", "fp32,bf16")
    published = [row for row in rows if row["task"] == "inference" and row.get("baseline")]
    assert len(published) == 1 and published[0]["frames"] == 11 and published[0]["batch"] == 1
    assert published[0]["adaat"] == "published"
    inference = [row for row in rows if row["task"] == "inference" and not row.get("baseline")]
    assert {row["precision"] for row in inference} == {"fp32", "bf16"}
    for row in inference:
        assert row["end_to_end"] is True and row["mouth"] == 64 and row["frames"] == 12
        assert "speedup_vs_published" in row
        assert {"decode", "references", "crops", "generator", "blend", "encode"} <= set(row["stage_seconds"])
    bf16 = next(row for row in inference if row["precision"] == "bf16")
    assert 43 <= bf16["face_psnr_vs_fp32"] < bf16["psnr_vs_fp32"] < 100  # the README's 43 (45) dB; bf16 did run
    assert bf16["psnr_vs_fp32"] >= 45
    loaders = {row["mouth"]: row for row in rows if row["task"] == "loader"}  # one row per lab stage
    assert {mouth: row["batch"] for mouth, row in loaders.items()} == {64: 24, 128: 12, 256: 4}
    timed = sum(row["frames"] / rate for row in published + inference for rate in row["runs_frames_per_s"])
    timed += sum(row["samples_per_epoch"] * (1 / row["decoded_samples_per_s"] + 1 / row["samples_per_s"])
                 for row in loaders.values())
    assert timed < wall


def test_bench_baseline_runs_the_published_layers():
    """published_way (bench.py's baseline) computes AdaAT, UpBlock2d and every block's ReLU as DINet's published
    code does: a different computation of the same function, with DINet's FLOP count, as the plain model's."""
    from benchmark.measure import network_flops
    from benchmark.published import published_way
    from models.adaat import AdaAT
    from models.blocks import ResBlock, SameBlock, UpBlock2d
    from models.formulations import plain_formulations
    torch.manual_seed(0)
    network = DINet(3, 15, 29).eval()
    inputs = (torch.rand(1, 3, 104, 80), torch.rand(1, 15, 104, 80), torch.rand(1, 29, 5))
    with plain_formulations(network):  # how FLOPs are counted: the plain fallbacks, then the layers as they were
        assert not any(m.transposed for m in network.modules() if isinstance(m, UpBlock2d))
    ups = [m for m in network.modules() if isinstance(m, UpBlock2d)]
    assert len(ups) == 2 and all(up.transposed for up in ups)
    flops = network_flops(network, inputs)
    with torch.no_grad():
        ours = network(*inputs)
        published_way(network)
        published = network(*inputs)
    blocks = [m for m in network.modules() if isinstance(m, (SameBlock, ResBlock, UpBlock2d))]
    assert all(type(block).__name__.startswith("Published") for block in blocks)
    assert all(m.implementation == "published" for m in network.modules() if isinstance(m, AdaAT))
    assert not torch.equal(ours, published) and (ours - published).abs().max() < 1e-5
    assert network_flops(network, inputs) == flops == pytest.approx(22.4e9, rel=2e-3)


@pytest.mark.long
def test_bench_training_rows_each_in_a_process_of_their_own(tmp_path):
    """bench.py --quick training rows: the published way (fp32, NCHW, 3-D AdaAT, its iteration) and ours in
    fp32 and (where the CPU has native bf16) bf16, each measured in a process of its own and written as JSON."""
    from common.devices import cpu_has_native_bf16
    rows, stdout, wall = run_bench(tmp_path, "--tasks", "baseline,train_frame", "--quick", "--mouths", "64")
    ours = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]  # --precision auto: bf16 where it is native
    assert [(row["task"], row["precision"], row["baseline"]) for row in rows] == [
        ("train_frame", "fp32", True)] + [("train_frame", precision, False) for precision in ours]
    assert ("bf16 rows skipped" in stdout) == (ours == ["fp32"])
    assert rows[0]["adaat"] == "published" and rows[0]["channels_last"] is False
    for row in rows:
        assert row["mouth"] == 64 and row["batch"] == 2 and row["gflops_per_sample"] > 50
        assert 0.2 < row["peak_memory_gb"] < 20
    assert sum(2 * row["batch"] / row["samples_per_s"] for row in rows) < wall  # 2 timed iterations a row
    assert "published way" in stdout or "3dAdaAT" in stdout


def test_bench_generator_rows_and_model_flop_utilisation(tmp_path):
    """bench.py --tasks generator: the whole network and the generator as dubbing runs it (reference branch once:
    fewer FLOPs a frame, 15.8 of lab1's 22.4 at mouth 64), each with its MFU against --peak_tflops."""
    from benchmark.cli import peak_tflops
    rows, stdout, wall = run_bench(tmp_path, "--tasks", "generator", "--mouths", "64", "--precision", "fp32",
                                   "--iterations", "1", "--warmup", "0", "--peak_tflops", "bf16=1,fp32=0.5")
    assert [row["reference_once"] for row in rows] == [False, True]
    for row, gflops in zip(rows, (22.4, 15.8)):  # DINet's count of a frame, and without the reference branch
        assert row["gflops_per_sample"] == pytest.approx(gflops, abs=0.1)
        assert row["batch"] == 1 and row["channels_last"]
        # a frame's FLOPs at the measured rate, against the fp32 peak given (not bf16's)
        assert row["mfu"] == pytest.approx(gflops * row["frames_per_s"] / 500, rel=0.01)
    assert sum(1 / row["frames_per_s"] for row in rows) < wall  # one timed call each
    assert "MFU" in stdout and "+ref1x" in stdout
    assert peak_tflops("989", torch.device("cpu")) == {"bf16": 989.0, "fp32": 989.0}
    assert peak_tflops(None, torch.device("cpu")) == {}


@pytest.mark.long
def test_bench_inference_repeats_interleave_with_the_published_loop_and_give_medians(tmp_path):
    """--inference_repeats 2: the published loop and ours run twice each, in turn; the rows hold every run's rate
    and the median run's (the lower middle one for an even count), and the speed-up is the ratio of those."""
    import statistics
    rows, stdout, wall = run_bench(tmp_path, "--tasks", "inference", "--quick", "--video", "160x240",
                                   "--video_seconds", "0.48", "--precision", "fp32", "--inference_repeats", "2")
    published, ours = rows
    assert published["baseline"] and not ours.get("baseline")
    medians = [statistics.median_low(row["runs_frames_per_s"]) for row in rows]
    for row, median in zip(rows, medians):
        assert len(row["runs_frames_per_s"]) == 2 and len(set(row["runs_frames_per_s"])) == 2  # two timed runs
        assert row["frames_per_s"] == median
    assert sum(row["frames"] / rate for row in rows for rate in row["runs_frames_per_s"]) < wall
    assert ours["speedup_vs_published"] == pytest.approx(medians[1] / medians[0])
    assert ours["stage_seconds"]["total"] == pytest.approx(ours["frames"] / medians[1], abs=1e-3)  # its stages
    assert "median of 2 runs" in stdout


def test_dubbing_frames_the_face_as_training_crops_do(demo):
    """The face in a dubbing crop is as large as in the training crops the data preparation cut from the same
    frames (on average over clips, whose scale it draws at random): a tighter crop showed models a face larger than
    they learnt, whose mouth then opened far less."""
    import glob

    import cv2

    from common.geometry import CLIP_LENGTH
    from data.prepare import Layout, landmark_csv
    from dubbing.pipeline import crop_radii
    layout = Layout.under(str(demo))
    ratios = []
    for name in ("demo_000", "demo_001"):
        landmarks = read_openface_csv(landmark_csv(name, layout)[0])
        radii = crop_radii(landmarks, (256, 256))
        for clip in sorted(glob.glob(os.path.join(layout.crop_dir, name, "*"))):
            centre = int(os.path.basename(clip)) * CLIP_LENGTH + CLIP_LENGTH // 2
            width = cv2.imread(sorted(glob.glob(os.path.join(clip, "*.jpg")))[CLIP_LENGTH // 2]).shape[1]
            ratios.append(radii[centre] / (width / 2.5))  # a crop is 2.5 radii wide
    assert len(ratios) >= 10
    assert 0.97 < np.mean(ratios) < 1.03


def test_references_span_the_openings_of_the_video_the_most_closed_first(demo):
    """Training draws its references at random from a whole video, closed and open mouths alike; dubbing gives the
    generator five that span the video's openings, the same five every time, the most closed first (the one
    --close_on_silence shows)."""
    from dubbing.pipeline import choose_references
    landmarks = read_openface_csv(str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv"))
    opening = np.linalg.norm(landmarks[:, 66] - landmarks[:, 62], axis=1) / (landmarks[:, 8, 1] - landmarks[:, 27, 1])
    candidates = np.arange(len(landmarks))
    chosen = choose_references(landmarks, candidates)
    assert len(set(chosen.tolist())) == 5 and chosen.tolist() == choose_references(landmarks, candidates).tolist()
    rank = np.argsort(np.argsort(opening)) / (len(opening) - 1)  # each frame's place among the openings, 0 to 1
    assert rank[chosen[0]] <= 0.1 and rank[chosen].max() >= 0.75
    assert np.all(np.diff(opening[chosen]) >= -0.01)  # ascending, but for the turned-face penalty


def test_references_come_from_the_first_frames_that_open_as_far(demo):
    """The references are the frames dubbing waits for before its first output frame: a video that says the same
    thing four times over gives them from its first saying, each as open as the frames of its place among them."""
    from dubbing.pipeline import REFERENCE_QUANTILES, choose_references
    face = read_openface_csv(str(demo / "split_video_25fps_landmark_openface" / "demo_000.csv"))[0]
    saying = np.random.default_rng(0).permutation(60) * 0.4  # px between the inner lips, in no order
    landmarks = np.repeat(face[None], 4 * len(saying), axis=0)
    landmarks[:, 66] = landmarks[:, 62] + np.stack([np.zeros(len(landmarks)), np.tile(saying, 4)], axis=1)
    chosen = choose_references(landmarks, np.arange(len(landmarks)))
    assert chosen.max() < len(saying)
    rank = np.argsort(np.argsort(saying)) / (len(saying) - 1)  # in the first saying, 0 (closed) to 1
    assert np.abs(rank[chosen] - REFERENCE_QUANTILES).max() <= 0.05
