"""Frames as the codecs hold them: 8-bit YUV 4:2:0 (a full-resolution luma plane Y, then the chroma planes U and
V at half resolution each way), limited range, in the source's colour matrix.

Dubbing decodes and encodes in this form, so ffmpeg converts no frame to RGB and back and every pixel outside the
pasted mouth reaches the encoder exactly as decoded. Only the face box is converted to RGB for the generator
(`rgb_region`), and the generated face is converted back and blended into the rows it covers (dubbing/blend.py).
"""
import re
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

# luma weights (Kr, Kb) of the matrices ffmpeg names; an untagged video is read as BT.601, as ffmpeg does
_MATRICES = {"bt709": (0.2126, 0.0722), "bt2020nc": (0.2627, 0.0593), "bt2020c": (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)
# what a source coded in RGB is converted to: no 4:2:0 video can carry its `gbr` matrix, and BT.709 is HD's
RGB_SOURCE_MATRIX = "bt709"
_RGB_PIXELS = re.compile(r"(?:0|x2|a)?(?:rgb|bgr|gbr)|pal8")  # ffmpeg's RGB pixel formats: rgb24, gbrp, bgra, ...


@dataclass(frozen=True)
class Colour:
    """The source's colour description: `space` is ffmpeg's name of its matrix ("bt709", "bt470bg", ...) or
    None when the file does not say; `primaries` and `transfer` likewise. Gives the conversions and the tags
    the output carries."""
    space: str = None
    primaries: str = None
    transfer: str = None

    def _forward(self):
        """(3, 3) matrix and (3,) offset: limited-range YUV = matrix @ RGB + offset, RGB in 0..255."""
        kr, kb = _MATRICES.get(self.space, _BT601)
        kg = 1 - kr - kb
        luma = np.array([kr, kg, kb])
        blue_difference = (np.array([0, 0, 1]) - luma) / (2 * (1 - kb))
        red_difference = (np.array([1, 0, 0]) - luma) / (2 * (1 - kr))
        matrix = np.stack([luma * 219, blue_difference * 224, red_difference * 224]) / 255
        return matrix, np.array([16.0, 128.0, 128.0])

    @cached_property
    def from_rgb(self):
        """(3, 4) float32 for cv2.transform: RGB -> YUV."""
        matrix, offset = self._forward()
        return np.hstack([matrix, offset[:, None]]).astype(np.float32)

    @cached_property
    def to_rgb(self):
        """(3, 4) float32 for cv2.transform: YUV -> RGB."""
        matrix, offset = self._forward()
        inverse = np.linalg.inv(matrix)
        return np.hstack([inverse, -(inverse @ offset)[:, None]]).astype(np.float32)

    def ffmpeg_tags(self):
        """Output options that label an encoded video as the source was labelled."""
        tags = [("-colorspace", self.space), ("-color_primaries", self.primaries), ("-color_trc", self.transfer)]
        return [item for flag, value in tags if value for item in (flag, value)] + ["-color_range", "tv"]


def source_colour(info):
    """(Colour of a source's 4:2:0 frames as dubbing decodes them, the ffmpeg filter that decodes them so or None),
    from `media.ffmpeg.probe`'s info: the source's own colour, or for a source coded in RGB (libx264rgb, PNG) its
    conversion to limited-range RGB_SOURCE_MATRIX, which the output is then labelled with."""
    space, primaries, transfer = info["colour"]
    if space != "gbr" and not _RGB_PIXELS.match(info["pixel_format"] or ""):
        return Colour(space, primaries, transfer), None
    return (Colour(RGB_SOURCE_MATRIX, primaries, transfer),
            f"scale=out_color_matrix={RGB_SOURCE_MATRIX}:out_range=tv")


def frame_bytes(height, width):
    return height * width * 3 // 2


def planes(frame, height, width):
    """(Y (H, W), U (H/2, W/2), V (H/2, W/2)) views of one flat 4:2:0 frame (even H and W)."""
    luma, chroma = height * width, height * width // 4
    return (frame[:luma].reshape(height, width), frame[luma:luma + chroma].reshape(height // 2, width // 2),
            frame[luma + chroma:luma + 2 * chroma].reshape(height // 2, width // 2))


def rgb_region(frame_planes, colour, top, bottom, left, right):
    """(bottom - top, right - left, 3) uint8 RGB of a box of a 4:2:0 frame, each chroma sample covering its
    2x2 luma pixels."""
    y, u, v = frame_planes
    top2, left2 = top // 2, left // 2
    rows, cols = slice(top - 2 * top2, top - 2 * top2 + bottom - top), slice(left - 2 * left2, left - 2 * left2 + right - left)

    def upsampled(plane):  # numpy's repeat(2, 0).repeat(2, 1), without its copies
        chroma = plane[top2:(bottom + 1) // 2, left2:(right + 1) // 2]
        doubled = cv2.resize(chroma, (2 * chroma.shape[1], 2 * chroma.shape[0]), interpolation=cv2.INTER_NEAREST)
        return doubled[rows, cols]

    return cv2.transform(cv2.merge([y[top:bottom, left:right], upsampled(u), upsampled(v)]), colour.to_rgb)


def rgb_frame(frame_planes, colour):
    height, width = frame_planes[0].shape
    return rgb_region(frame_planes, colour, 0, height, 0, width)
