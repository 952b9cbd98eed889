"""Decoding videos: `read_video_frames` streams a video's frames as RGB arrays; `DecodedVideo` keeps a decoded
video in a file, not in the process's memory: ffmpeg writes its raw frames (RGB, or with pixel_format="yuv420p"
4:2:0 YUV as the codec holds them, media/yuv.py, odd sizes padded by a pixel to even) straight into a file that is
memory-mapped as it grows, so any frame can be revisited (ping-pong) and no frame passes through a pipe and a copy
in Python (a large share of decoding's time, docs/performance.md). Short videos go to /dev/shm (RAM), long ones to
the temporary folder on disk, so a long 1080p video costs disk, not RAM.

With background=True the constructor returns at once and decoding goes on in a thread: `frame(i)` and
`wait_for(i)` block until frame i is there, so the dubbing loop starts on the first frames while ffmpeg decodes
the rest, and `wait_all()` returns the frame count once decoding ends. By default the constructor waits for the
whole video, so `frames` holds every frame. `rgb(i)` and `rgb_frames()` give frames in RGB in either format.
With `cuda_device`, the GPU's decoder (NVDEC) decodes, and ffmpeg's software decoder where NVDEC cannot start.

Scratch folders (`scratch_folder`) are named dub-<kind>-<pid>-*: closing removes them, and a later run removes those
whose process is gone (a killed run's). The frames' file is checked against the free space before decoding.
"""
import math
import os
import re
import shutil
import tempfile
import threading
import time

import cv2
import numpy as np

from common.errors import UserError

from .ffmpeg import FFmpeg, cuda_decoding, probe
from .yuv import frame_bytes, planes, rgb_frame, rgb_region, source_colour


SHARED_MEMORY = "/dev/shm"
POLL_SECONDS = 0.002  # how often the decoder thread looks at how far ffmpeg has written (a frame at 500 frames/s)
# the fix for scratch that does not fit, in every message that says so
MAKE_ROOM = "free space there or point TMPDIR at a folder with room (TMPDIR=/big/folder python inference.py ...)"
_SCRATCH_NAME = re.compile(r"dub-[a-z]+-(\d+)-[a-z0-9_]{8}")  # mkdtemp adds 8 of these


def scratch_folder(kind, size=0, video_path=None):
    """A TemporaryDirectory dub-<kind>-<pid>-*, made after removing those that runs killed before they could clean
    up left in /dev/shm and the temporary folder; for `size` bytes of `video_path`'s frames where `_frame_folder`
    says, else in the temporary folder."""
    for parent in {SHARED_MEMORY, tempfile.gettempdir()}:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            match = _SCRATCH_NAME.fullmatch(name)
            if match and not _running(int(match.group(1))):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    folder = _frame_folder(size, video_path) if size else None
    return tempfile.TemporaryDirectory(prefix=f"dub-{kind}-{os.getpid()}-", dir=folder)


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def _file_size(path):
    """Its size as of now: opened anew each time, as a network file system refreshes a file's size on open."""
    try:
        with open(path, "rb") as file:
            return os.fstat(file.fileno()).st_size
    except FileNotFoundError:  # ffmpeg has not opened it yet
        return 0


def _free_bytes(folder):
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def _frame_folder(size, video_path):
    """Where the frames go: RAM-backed /dev/shm when they take less than a quarter of its free space and of
    the free memory (no disk writeback racing the decoder), else the temporary folder if they fit there; else
    the run stops here, before any work, saying how to give it room."""
    try:
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
        if size < min(_free_bytes(SHARED_MEMORY), available) / 4:
            return SHARED_MEMORY
    except (OSError, StopIteration):
        pass
    folder = tempfile.gettempdir()
    free = _free_bytes(folder)
    if size > free:
        raise UserError(f"{video_path}: its decoded frames need {_megabytes(size)} of scratch space while dubbing, "
                         f"but the temporary folder {folder} has {_megabytes(free)} free (and {SHARED_MEMORY} too "
                         f"little); {MAKE_ROOM}")
    return folder


def _megabytes(size):
    return f"{size / 1e6:,.0f} MB"


def even_size(width, height):
    """The size a 4:2:0 frame of a width x height picture has: odd sides grow by a pixel."""
    return width + width % 2, height + height % 2


def read_video_frames(video_path, fps=None):
    """Yield the video's frames as (H, W, 3) uint8 RGB arrays, decoded by ffmpeg (any codec it reads);
    with `fps`, resampled to that rate the way `extract_frames` does, so frame i here is frame i there."""
    info = probe(video_path)
    if not info["has_video"] or info["width"] is None:
        raise UserError(f"{video_path}: no video stream; remove it from the video directory")
    filters = ["-vf", f"fps={fps}"] if fps else []
    with FFmpeg(["-i", video_path, "-map", info["video_stream"], *filters, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                video_path, stdout=True) as ffmpeg:  # a caller that stops early stops ffmpeg
        while True:
            frame = np.empty((info["height"], info["width"], 3), np.uint8)
            if not ffmpeg.read_into(memoryview(frame).cast("B")):
                break
            yield frame
        ffmpeg.finish()


class DecodedVideo:
    def __init__(self, video_path, fps=25, background=False, pixel_format="rgb24", cuda_device=None, max_frames=None):
        info = probe(video_path)
        if not info["has_video"] or info["width"] is None:
            raise UserError(f"{video_path}: no video stream; use a video file")
        self.path = video_path
        self._stream = info["video_stream"]  # the stream whose size was read, by name: not ffmpeg's choice anew
        self.fps = fps
        self.shape = (info["height"], info["width"], 3)             # as decoded, after any rotation
        self.yuv = pixel_format == "yuv420p"
        width, height = even_size(*self.size) if self.yuv else self.size
        self.stored = (height, width)
        self.colour, self._colour_filter = source_colour(info)
        self._frame_bytes = frame_bytes(*self.stored) if self.yuv else int(np.prod(self.shape))
        self._frame_shape = (self._frame_bytes,) if self.yuv else self.shape
        self.decode_seconds = 0.0                                    # time the decoder thread spent, for profiles
        # "cuda": the GPU's decoder (NVDEC) on CUDA device `cuda_device`, tried first, else ffmpeg's software one
        self.decoder = "software" if cuda_device is None else "cuda"
        self._cuda_device = cuda_device
        self.hardware_failure = None                                 # ffmpeg's reason when NVDEC could not start
        # the frame count (for progress bars) is a guess from the duration; the scratch folder is chosen for it and a
        # second more; a photograph is one frame
        self.expected_frames = int(math.ceil(info["duration"] * fps)) if info["duration"] else None
        self.expected_frames = 1 if info["still"] else self.expected_frames
        self.max_frames = max_frames  # the first frames only (None: all)
        if max_frames is not None:
            self.expected_frames = min(self.expected_frames or max_frames, max_frames)
        expected_bytes = (1 if info["still"] else (self.expected_frames or 10 * fps) + fps) * self._frame_bytes
        self._folder = scratch_folder("frames", expected_bytes, video_path)
        self._raw_path = os.path.join(self._folder.name, "frames.raw")
        self._frames = np.empty((0, *self._frame_shape), np.uint8)  # the file's frames mapped so far (`_mapped`)
        self._map_lock = threading.Lock()
        self._decoded = 0
        self._done = False
        self._error = None
        self._closing = False
        self._process = None
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._decode, name="dub-decode", daemon=True)
        self._thread.start()
        if not background:
            self.wait_all()

    # ------------------------------------------------------------------ decoder thread

    def _decode(self):
        started = time.perf_counter()
        filters = [f"fps={self.fps}"]
        if self.stored != self.shape[:2]:  # 4:2:0 needs even sizes: the last column or row is repeated
            right, bottom = self.shape[1] % 2, self.shape[0] % 2
            filters += ["pad=ceil(iw/2)*2:ceil(ih/2)*2", f"fillborders=right={right}:bottom={bottom}:mode=smear"]
        if self.yuv and self._colour_filter:
            filters.append(self._colour_filter)
        pixels = ["-pix_fmt", "yuv420p", "-color_range", "tv"] if self.yuv else ["-pix_fmt", "rgb24"]
        first = ["-frames:v", str(self.max_frames)] if self.max_frames is not None else []
        output = ["-map", self._stream, "-vf", ",".join(filters), *first, "-f", "rawvideo", *pixels, self._raw_path]
        try:
            # NVDEC's frames come back to memory as the software decoder's would (the same pixels: decoding is
            # exact); where it cannot start (no driver, no video library), ffmpeg stops at once and software decodes
            if self.decoder == "cuda" and not self._run_ffmpeg([*cuda_decoding(self._cuda_device), "-i", self.path,
                                                                *output]):
                self.decoder = "software"
            if self.decoder == "software":
                self._run_ffmpeg(["-i", self.path, *output])
            if self._decoded == 0 and not self._closing:
                raise UserError(f"{self.path}: no video frames could be decoded; re-encode it with ffmpeg")
        except BaseException as error:  # handed to the thread that waits for frames
            self._error = error
        finally:
            self.decode_seconds = time.perf_counter() - started
            with self._condition:
                self._done = True
                self._condition.notify_all()

    def _run_ffmpeg(self, arguments):
        """Run ffmpeg, counting the frames it writes as it writes them, until it ends or close() stops it; False
        when a hardware decoder failed before its first frame (the reason kept in `hardware_failure`), else True;
        any other failure raises its UserError."""
        # leaving the block stops ffmpeg: after close(), or an error here
        with FFmpeg(arguments, self.path) as ffmpeg:
            self._process = ffmpeg.process
            while not self._closing:
                ended = ffmpeg.process.poll() is not None  # asked first: the size read next then holds it all
                count = _file_size(self._raw_path) // self._frame_bytes  # a partial frame is never counted
                if count > self._decoded:
                    with self._condition:
                        self._decoded = count
                        self._condition.notify_all()
                if ended:
                    break
                time.sleep(POLL_SECONDS)
            if self._closing or ffmpeg.wait() == 0:
                return True
            # its messages may not say so: they go to the temporary folder, which may be the full one
            if _free_bytes(self._folder.name) < self._frame_bytes or ffmpeg.filled_disk():
                raise UserError(
                    f"{self.path}: the decoded frames filled {self._folder.name} "
                    f"({_megabytes(self._decoded * self._frame_bytes)} so far); {MAKE_ROOM}")
            if self.decoder == "cuda" and self._decoded == 0:
                messages = [re.sub(r"^(\[[^]]*\] )+", "", line) for line in ffmpeg.messages()] or ["no message"]
                self.hardware_failure = next((line for line in messages if re.search("cuda|cuvid", line, re.I)),
                                             messages[-1])  # "Cannot load libnvcuvid.so.1" says more than the last
                return False
            raise ffmpeg.failure()

    def _mapped(self, count):
        """The file's first `count` frames (decoded), mapped anew when the last mapping holds fewer; views of an
        older mapping stay valid."""
        with self._map_lock:
            if len(self._frames) < count:
                self._frames = np.memmap(self._raw_path, dtype=np.uint8, mode="r",
                                         shape=(self._decoded, *self._frame_shape))
            return self._frames

    # ------------------------------------------------------------------ readers

    def wait_for(self, index):
        """Block until frame `index` is decoded (or decoding ended without it)."""
        with self._condition:
            while self._decoded <= index and not self._done:
                self._condition.wait()
        if self._error is not None:
            raise self._error

    def wait_all(self):
        """Block until decoding ends; the number of frames."""
        with self._condition:
            while not self._done:
                self._condition.wait()
        if self._error is not None:
            raise self._error
        return self._decoded

    @property
    def frames(self):
        """(T, H, W, 3) uint8 RGB of the frames decoded so far (all of them after wait_all); (T, bytes) in 4:2:0."""
        return self._mapped(self._decoded)[:self._decoded]

    def frame(self, index):
        """Frame `index`, (H, W, 3) uint8 RGB or in 4:2:0 its (Y, U, V) planes (views of the stored frame),
        waiting for the decoder if need be."""
        self.wait_for(index)
        if index >= self._decoded:
            raise IndexError(f"{self.path}: frame {index} asked for, the video has {self._decoded}")
        frame = self._mapped(index + 1)[index]
        return planes(frame, *self.stored) if self.yuv else frame

    def rgb(self, index):
        """Frame `index`, (H, W, 3) uint8 RGB."""
        if not self.yuv:
            return self.frame(index)
        height, width = self.shape[:2]
        return rgb_frame(self.frame(index), self.colour)[:height, :width]

    def region(self, index, top, bottom, left, right):
        """(bottom - top, right - left, 3) uint8 RGB of a box of frame `index`, the box inside the picture."""
        frame = self.frame(index)
        return rgb_region(frame, self.colour, top, bottom, left, right) if self.yuv else frame[top:bottom, left:right]

    def thumbnail(self, index, scale):
        """Frame `index` in RGB, `scale` times its size (below 1), resized before the conversion from 4:2:0."""
        height, width = self.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if not self.yuv:
            return cv2.resize(self.frame(index), size, interpolation=cv2.INTER_AREA)
        y, u, v = (cv2.resize(plane, size, interpolation=cv2.INTER_AREA) for plane in self.frame(index))
        return cv2.transform(cv2.merge([y, u, v]), self.colour.to_rgb)

    def rgb_frames(self):
        """Every frame in turn as RGB, converted one at a time as the decoder delivers it (so a landmark detector
        runs beside the decoder instead of after it)."""
        index = 0
        while True:
            self.wait_for(index)
            if index >= self._decoded:  # decoding ended
                return
            yield self.rgb(index)
            index += 1

    def __len__(self):
        return self.wait_all()

    @property
    def size(self):
        """(width, height), as DINet's geometry functions take it."""
        return self.shape[1], self.shape[0]

    def close(self):
        """Stop decoding if it still runs, and delete the frames."""
        self._closing = True
        if self._thread.is_alive() and self._process is not None and self._process.poll() is None:
            self._process.kill()
        self._thread.join()
        del self._frames
        self._folder.cleanup()
