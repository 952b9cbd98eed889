"""H.264 + AAC encoding, frames streamed to ffmpeg's stdin as they are made.

crf 18 throughout. Dubbing encodes at `veryfast` with superfast's motion search (`FAST_MOTION_SEARCH`), so the
encoder keeps up with the generator at full resolution; `write_video` (data preparation, tests) uses x264's
default, `medium`. The output is written under a hidden name and renamed when complete (common/files.py).
"""
import itertools
import time

import numpy as np

from common.files import atomic_output

from .ffmpeg import FFmpeg
from .yuv import frame_bytes

DEFAULT_PRESET = "veryfast"
FAST_MOTION_SEARCH = "me=dia:subme=1"  # x264 options added to DEFAULT_PRESET unless x264_params says otherwise


class VideoEncoder:
    """with VideoEncoder(path, width, height, audio_path=...) as encoder: encoder.write(frame) ...

    frames are (H, W, 3) uint8 RGB, or with `colour` (a media.yuv.Colour) 4:2:0 YUV as media/decoder.py
    decodes them, encoded as they are and labelled with the source's colour tags; `x264_params` ("key=value:...")
    are x264's own options ("" for none; FAST_MOTION_SEARCH by default with the default preset); `audio_seconds`
    cuts the audio to that length; `seconds` is the time spent waiting on ffmpeg (writes block when its input pipe is
    full, and the final wait for it to finish)."""

    def __init__(self, path, width, height, fps=25, audio_path=None, preset=DEFAULT_PRESET, crf=18, threads=None,
                 colour=None, x264_params=None, audio_seconds=None):
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
            inputs += [*(["-t", f"{audio_seconds:.3f}"] if audio_seconds else []), "-i", audio_path]
            streams += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]  # the track the lips were made from
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
        self._ffmpeg = FFmpeg([*inputs, *streams, *video_codec, "-movflags", "+faststart", partial], path,
                              output=path, stdin=True)

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
                    self._ffmpeg.write(np.ascontiguousarray(band))
        except BrokenPipeError:
            self._fail()  # ffmpeg stopped early; its log says why
        self.frames += 1
        self.seconds += time.perf_counter() - started

    def close(self):
        """Finish the file; raises UserError with ffmpeg's last error line if it failed."""
        started = time.perf_counter()
        returncode = self._ffmpeg.wait()
        self.seconds += time.perf_counter() - started
        if returncode != 0 or self.frames == 0:
            self._fail()
        self._finished = True
        self._ffmpeg.close()
        self._atomic.__exit__(None, None, None)

    def abort(self):
        """Stop ffmpeg and remove the partial file."""
        if self._finished:
            return
        self._finished = True
        self._ffmpeg.close()
        try:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass

    def _fail(self):
        self._ffmpeg.stop()
        error = self._ffmpeg.failure("no frames to write" if self.frames == 0 else None)
        self.abort()
        raise error

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()
        else:
            self.abort()


def write_video(path, frames, fps=25, audio_path=None, preset="medium"):
    """Encode an iterable of (H, W, 3) uint8 RGB frames as an H.264 mp4, with `audio_path` as AAC."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    height, width = first.shape[:2]
    with VideoEncoder(path, width, height, fps, audio_path, preset) as encoder:
        for frame in itertools.chain([first], frames):
            encoder.write(np.ascontiguousarray(frame, dtype=np.uint8))
