"""A decoded video kept on disk, not in memory: frames are appended to a raw file and read back through
a memory map, so a long 1080p video costs disk, not RAM, and any frame can be revisited (ping-pong)."""
import os
import tempfile

import numpy as np

from data.video import read_video_frames


class DecodedVideo:
    def __init__(self, video_path, fps=25):
        self._folder = tempfile.TemporaryDirectory(prefix="dub-frames-")
        raw_path = os.path.join(self._folder.name, "frames.rgb")
        count, shape = 0, None
        with open(raw_path, "wb") as raw:
            for frame in read_video_frames(video_path, fps=fps):
                shape = frame.shape
                raw.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
                count += 1
        if count == 0:
            raise SystemExit(f"{video_path}: no video frames could be decoded; re-encode it with ffmpeg")
        self.frames = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=(count, *shape))  # (T, H, W, 3) RGB

    def __len__(self):
        return len(self.frames)

    @property
    def size(self):
        """(width, height), as DINet's geometry functions take it."""
        return self.frames.shape[2], self.frames.shape[1]

    def close(self):
        del self.frames
        self._folder.cleanup()
