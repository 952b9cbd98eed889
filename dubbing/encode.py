"""Streaming H.264 + AAC encoding of the dubbed frames: frames go to ffmpeg's stdin as they are made.

Unlike data/video.py's `write_video` (crf 18 at x264's default preset, `medium`), the preset is a parameter:
dubbing encodes a full-resolution frame per output frame, and at 1080x1920 `medium` alone runs at ~13 frames/s
on 2 cores, slower than the generator at mouth 64. `veryfast` keeps crf 18's quality target at ~3x the speed
(files ~15% larger than `medium`'s on the sample clips), and with it dubbing uses `superfast`'s motion search
(`FAST_MOTION_SEARCH`: diamond search, one step of subpixel refinement without rate-distortion decisions): on 10 s
of the 1080x1920 sample clip x264 took 6.1-7.0 core-seconds instead of 8.8-10.2, for a file 18% larger and a PSNR
to the source of 47.5 instead of 47.8 dB, and dubbing at mouth 64 on 2 cores ran 6% faster (8.04 -> 8.57 and
8.03 -> 8.50 frames/s, medians of 4 and 5 interleaved runs). The output is written under a hidden name and
renamed when complete (data/video.py's `atomic_output`).
"""
import subprocess
import tempfile
import time

import imageio_ffmpeg
import numpy as np

from common.files import atomic_output
from data.video import ffmpeg_failure, widen_pipe

from .yuv import frame_bytes

DEFAULT_PRESET = "veryfast"
FAST_MOTION_SEARCH = "me=dia:subme=1"  # x264 options added to DEFAULT_PRESET unless x264_params says otherwise


class VideoEncoder:
    """with VideoEncoder(path, width, height, audio_path=...) as encoder: encoder.write(frame) ...

    frames are (H, W, 3) uint8 RGB, or with `colour` (a dubbing.yuv.Colour) 4:2:0 YUV as dubbing/frames.py
    decodes them, encoded as they are and labelled with the source's colour tags; `x264_params` ("key=value:...")
    are x264's own options ("" for none; FAST_MOTION_SEARCH by default with the default preset); `seconds` is the
    time spent waiting on ffmpeg (writes block when its input pipe is full, and the final wait for it to finish)."""

    def __init__(self, path, width, height, fps=25, audio_path=None, preset=DEFAULT_PRESET, crf=18, threads=None,
                 colour=None, x264_params=None):
        self.path = path
        self.shape = (height, width, 3)
        self.frame_bytes = height * width * 3 if colour is None else frame_bytes(height, width)
        self.frames = 0
        self.seconds = 0.0
        self._finished = False
        self._atomic = atomic_output(path)
        partial = self._atomic.__enter__()
        if colour is not None and (width % 2 or height % 2):
            raise ValueError(f"{path}: 4:2:0 frames of {width}x{height}; their sizes must be even")
        pixels = "rgb24" if colour is None else "yuv420p"
        # the frames are labelled as the source was, in and out: a label on the output alone makes ffmpeg convert
        # every frame from what it assumes of unlabelled input (BT.601), which shifted luma by a level (measured)
        tags = colour.ffmpeg_tags() if colour is not None else []
        inputs = ["-f", "rawvideo", "-pix_fmt", pixels, "-s", f"{width}x{height}", "-r", str(fps), *tags, "-i", "-"]
        streams = ["-map", "0:v"]
        if audio_path is not None:
            inputs += ["-i", audio_path]
            streams += ["-map", "1:a", "-c:a", "aac", "-b:a", "128k"]
        # yuv420p needs even sizes: pad odd ones by a pixel on the right/bottom, which moves no landmark
        pad = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"] if width % 2 or height % 2 else []
        video_codec = [*pad, "-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", "-crf", str(crf),
                       *tags]
        if x264_params is None and preset == DEFAULT_PRESET:
            x264_params = FAST_MOTION_SEARCH
        if x264_params:
            video_codec += ["-x264-params", x264_params]
        if threads:
            video_codec += ["-threads", str(threads)]
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *inputs, *streams,
                   *video_codec, "-movflags", "+faststart", partial]
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: a full stderr pipe would stall ffmpeg
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=self._log, bufsize=0)
        widen_pipe(self._process.stdin)

    def write(self, *bands):
        """One frame, given whole or as uint8 bands in the order of its bytes (rows of RGB, top to bottom; rows
        of Y, then of U, then of V): a frame changed in a few rows is written from its unchanged rows as they
        are, without copying them into one array."""
        if sum(band.nbytes for band in bands) != self.frame_bytes or any(band.dtype != np.uint8 for band in bands):
            raise ValueError(f"{self.path}: frame of {[band.shape for band in bands]} {bands[0].dtype}, "
                             f"the video's frames are {self.frame_bytes} bytes of uint8 ({self.shape})")
        started = time.perf_counter()
        try:
            for band in bands:
                if band.size:
                    self._process.stdin.write(memoryview(np.ascontiguousarray(band)).cast("B"))
        except BrokenPipeError:
            self._fail()  # ffmpeg stopped early; its log says why
        self.frames += 1
        self.seconds += time.perf_counter() - started

    def close(self):
        """Finish the file; raises UserError with ffmpeg's last error line if it failed."""
        started = time.perf_counter()
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        returncode = self._process.wait()
        self.seconds += time.perf_counter() - started
        if returncode != 0 or self.frames == 0:
            self._fail()
        self._finished = True
        self._atomic.__exit__(None, None, None)
        self._log.close()

    def abort(self):
        """Stop ffmpeg and remove the partial file."""
        if self._finished:
            return
        self._finished = True
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        try:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass
        self._log.close()

    def _fail(self):
        if self._process.poll() is None:
            self._process.kill()
        returncode = self._process.wait()
        self._log.seek(0)
        messages = self._log.read().decode(errors="replace").strip().splitlines()
        self.abort()
        raise ffmpeg_failure(self.path, returncode, messages, "no frames to write" if self.frames == 0 else None)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()
        else:
            self.abort()
