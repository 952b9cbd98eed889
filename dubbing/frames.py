"""A decoded video kept in a file, not in the process's memory: ffmpeg's raw frames (RGB, or with
pixel_format="yuv420p" 4:2:0 YUV as the codec holds them, dubbing/yuv.py, odd sizes padded by a pixel to even) go
straight into a memory-mapped file, so any frame can be revisited (ping-pong). Short videos go to /dev/shm (RAM), long ones
to the temporary folder on disk, so a long 1080p video costs disk, not RAM.

With background=True the constructor returns at once and decoding goes on in a thread: `frame(i)` and
`wait_for(i)` block until frame i is there, so the dubbing loop starts on the first frames while ffmpeg decodes
the rest, and `wait_all()` returns the frame count once decoding ends. By default the constructor waits for the
whole video, so `frames` holds every frame. `rgb(i)` and `rgb_frames()` give frames in RGB in either format.
"""
import math
import os
import subprocess
import tempfile
import threading
import time

import imageio_ffmpeg
import numpy as np

from data.video import probe, widen_pipe

from .yuv import Colour, frame_bytes, planes, rgb_frame


SHARED_MEMORY = "/dev/shm"


def _frame_folder(size):
    """Where the frames go: RAM-backed /dev/shm when they take less than a quarter of its free space and of
    the free memory (no disk writeback racing the decoder), else the temporary folder."""
    try:
        stat = os.statvfs(SHARED_MEMORY)
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return SHARED_MEMORY if size < min(stat.f_bavail * stat.f_frsize, available) / 4 else None


class DecodedVideo:
    def __init__(self, video_path, fps=25, background=False, pixel_format="rgb24"):
        info = probe(video_path)
        if not info["has_video"] or info["width"] is None:
            raise SystemExit(f"{video_path}: no video stream; use a video file")
        self.path = video_path
        self.fps = fps
        self.shape = (info["height"], info["width"], 3)             # as decoded, after any rotation
        self.yuv = pixel_format == "yuv420p"
        # 4:2:0 needs even sizes
        self.stored = (info["height"] + info["height"] % 2, info["width"] + info["width"] % 2) if self.yuv else self.shape[:2]
        self.colour = Colour(*info["colour"])
        self._frame_bytes = frame_bytes(*self.stored) if self.yuv else int(np.prod(self.shape))
        self._frame_shape = (self._frame_bytes,) if self.yuv else self.shape
        self.decode_seconds = 0.0                                    # time the decoder thread spent, for profiles
        # the frame count is a guess from the duration; the file is sparse, so an over-guess costs nothing,
        # and it grows if short
        self._capacity = int(math.ceil((info["duration"] or 10) * fps)) + fps
        self._folder = tempfile.TemporaryDirectory(prefix="dub-frames-", dir=_frame_folder(self._capacity * self._frame_bytes))
        self._raw_path = os.path.join(self._folder.name, "frames.raw")
        self._frames = np.memmap(self._raw_path, dtype=np.uint8, mode="w+", shape=(self._capacity, *self._frame_shape))
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
        pad = ",pad=ceil(iw/2)*2:ceil(ih/2)*2" if self.stored != self.shape[:2] else ""
        pixels = ["-pix_fmt", "yuv420p", "-color_range", "tv"] if self.yuv else ["-pix_fmt", "rgb24"]
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", self.path,
                   "-vf", f"fps={self.fps}{pad}", "-f", "rawvideo", *pixels, "-"]
        frame_bytes = self._frame_bytes
        try:
            with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full stderr pipe would stall ffmpeg
                process = self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, bufsize=0)
                widen_pipe(process.stdout)
                try:
                    while not self._closing:
                        if self._decoded == self._capacity:
                            self._grow()
                        slot = memoryview(self._frames[self._decoded].reshape(-1))
                        filled = 0
                        while filled < frame_bytes:
                            count = process.stdout.readinto(slot[filled:])
                            if not count:
                                break
                            filled += count
                        if filled < frame_bytes:
                            break  # end of stream (a partial last frame is never counted)
                        with self._condition:
                            self._decoded += 1
                            self._condition.notify_all()
                    if self._closing:  # close() while decoding: ffmpeg would block on a full pipe
                        process.kill()
                    returncode = process.wait()
                finally:
                    if process.poll() is None:  # stopped early (close() or an error): stop decoding
                        process.kill()
                        process.wait()
                    process.stdout.close()
                log.seek(0)
                messages = log.read().decode(errors="replace").strip().splitlines()
            if self._closing:
                return
            if returncode != 0:
                raise SystemExit(f"{self.path}: ffmpeg could not decode it "
                                 f"({messages[-1] if messages else f'exit code {returncode}'}); re-encode it with ffmpeg")
            if self._decoded == 0:
                raise SystemExit(f"{self.path}: no video frames could be decoded; re-encode it with ffmpeg")
        except BaseException as error:  # handed to the thread that waits for frames
            self._error = error
        finally:
            self.decode_seconds = time.perf_counter() - started
            with self._condition:
                self._done = True
                self._condition.notify_all()

    def _grow(self):
        self._frames.flush()
        self._capacity = self._capacity * 3 // 2 + 1
        with open(self._raw_path, "r+b") as raw:
            raw.truncate(self._capacity * self._frame_bytes)
        self._frames = np.memmap(self._raw_path, dtype=np.uint8, mode="r+", shape=(self._capacity, *self._frame_shape))

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
        return self._frames[:self._decoded]

    def frame(self, index):
        """Frame `index`, (H, W, 3) uint8 RGB or in 4:2:0 its (Y, U, V) planes (views of the stored frame),
        waiting for the decoder if need be."""
        self.wait_for(index)
        if index >= self._decoded:
            raise IndexError(f"{self.path}: frame {index} asked for, the video has {self._decoded}")
        return planes(self._frames[index], *self.stored) if self.yuv else self._frames[index]

    def rgb(self, index):
        """Frame `index`, (H, W, 3) uint8 RGB."""
        if not self.yuv:
            return self.frame(index)
        height, width = self.shape[:2]
        return rgb_frame(self.frame(index), self.colour)[:height, :width]

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
