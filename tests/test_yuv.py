"""4:2:0 frames from decoder to encoder: colour conversions, face boxes in RGB, the blend, and labelled encoding."""
import subprocess

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from dubbing.blend import FaceBlender
from media.encoder import VideoEncoder
from media.ffmpeg import probe
from media.yuv import Colour, frame_bytes, planes, rgb_frame, rgb_region

BT709 = Colour("bt709", "bt709", "bt709")


@pytest.mark.parametrize("colour", [BT709, Colour()])
def test_colour_conversions_are_the_standard_limited_range_ones_and_invert(colour):
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [30, 140, 200]]], np.uint8)
    yuv = cv2.transform(rgb, colour.from_rgb)
    assert yuv[0, 0].tolist() == [235, 128, 128] and yuv[0, 1].tolist() == [16, 128, 128]
    red_luma = 0.2126 if colour.space == "bt709" else 0.299
    assert yuv[0, 2, 0] == round(16 + 219 * red_luma) and yuv[0, 2, 2] == 240  # Cr of pure red is the maximum
    assert np.abs(cv2.transform(yuv, colour.to_rgb).astype(int) - rgb).max() <= 1


def random_frame(height, width, seed=0):
    return np.random.default_rng(seed).integers(16, 236, frame_bytes(height, width), dtype=np.uint8)


def test_rgb_frame_gives_each_chroma_sample_to_its_2x2_luma_pixels():
    height, width = 24, 16
    frame = planes(random_frame(height, width), height, width)
    y, u, v = (plane.astype(np.float64) for plane in frame)
    yuv = np.dstack([y, u.repeat(2, 0).repeat(2, 1), v.repeat(2, 0).repeat(2, 1)])
    expected = np.clip(np.rint(yuv @ BT709.to_rgb[:, :3].T.astype(np.float64) + BT709.to_rgb[:, 3]), 0, 255)
    assert np.abs(rgb_frame(frame, BT709).astype(int) - expected).max() <= 1  # float32 matrix: a level at most


@pytest.mark.parametrize("box", [(10, 30, 4, 20), (11, 30, 5, 21), (0, 24, 0, 16)])
def test_rgb_region_is_that_box_of_the_rgb_frame_at_any_parity(box):
    frame = planes(random_frame(24, 16), 24, 16)
    top, bottom, left, right = box
    assert np.array_equal(rgb_region(frame, BT709, *box), rgb_frame(frame, BT709)[top:bottom, left:right])


@pytest.mark.parametrize("top, left", [(40, 30), (41, 33)])
def test_face_blender_sets_the_mouth_and_leaves_the_rest_exactly(top, left):
    height, width = 160, 120
    frame = planes(random_frame(height, width), height, width)
    mask = np.zeros((52, 40), np.float32)
    mask[16:48, 4:36] = 1  # a hard mask, so the centre is the face alone
    box = (top, top + 78, left, left + 60)  # the crop shown 1.5x larger in the frame
    rows = (frame[0][top:box[1]].copy(), frame[1][top // 2:(box[1] + 1) // 2].copy(),
            frame[2][top // 2:(box[1] + 1) // 2].copy())
    before = tuple(plane.copy() for plane in rows)
    face = np.full((52, 40, 3), (200.0, 60.0, 90.0), np.float32)
    FaceBlender(mask, BT709).paste(rows, face, box)
    expected = cv2.transform(np.array([[[200, 60, 90]]], np.uint8), BT709.from_rgb)[0, 0]
    centre = (slice(40, 60), slice(left + 20, left + 40))
    assert np.abs(rows[0][centre].astype(int) - expected[0]).max() <= 1
    chroma_centre = ((top % 2 + 40) // 2 + 1, slice((left + 22) // 2, (left + 38) // 2))
    for plane, value in zip(rows[1:], expected[1:]):
        assert np.abs(plane[chroma_centre].astype(int) - value).max() <= 1
    changed = rows[0] != before[0]
    assert not changed[:20].any() and not changed[:, :left + 4].any() and not changed[:, left + 57:].any()


def test_face_blender_chroma_is_the_2x2_mean_of_the_full_resolution_blend():
    height, width = 32, 24  # the box is the crop's size, at even rows and columns, and the weight nowhere zero
    rng = np.random.default_rng(3)
    mask = (0.05 + 0.9 * rng.random((height, width))).astype(np.float32)
    face = (255 * rng.random((height, width, 3))).astype(np.float32)
    frame = planes(random_frame(height, width), height, width)
    rows = tuple(plane.copy() for plane in frame)
    FaceBlender(mask, BT709).paste(rows, face, (0, height, 0, width))
    yuv = cv2.transform(face, BT709.from_rgb).astype(np.float64)
    block_mean = lambda image: image.reshape(height // 2, 2, width // 2, 2).mean((1, 3))
    for plane, before, channel in ((rows[1], frame[1], 1), (rows[2], frame[2], 2)):
        expected = before * (1 - block_mean(mask)) + block_mean(mask * yuv[..., channel])
        assert np.abs(plane - np.floor(expected + 0.5)).max() <= 1


def test_encoder_keeps_4_2_0_frames_and_the_sources_colour_labels(tmp_path):
    """Labelled frames go in as they are: no conversion shifts a level (labelling the output alone did)."""
    height, width = 64, 48
    frame = np.concatenate([np.full(height * width, 92, np.uint8), np.full(height * width // 2, 128, np.uint8)])
    path = str(tmp_path / "grey.mp4")
    with VideoEncoder(path, width, height, colour=BT709) as encoder:
        for _ in range(5):
            y, u, v = planes(frame, height, width)
            encoder.write(y[:10], y[10:], u, v)  # in bands, as dubbing writes a frame with a changed box
    assert probe(path)["colour"] == ("bt709", "bt709", "bt709")
    decoded = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path, "-f", "rawvideo",
                              "-pix_fmt", "yuv420p", "-"], capture_output=True, check=True).stdout
    luma = np.frombuffer(decoded, np.uint8).reshape(5, -1)[:, :height * width]
    assert np.abs(luma.astype(int) - 92).max() == 0
    settings = open(path, "rb").read()  # x264 writes its options into the stream
    assert b"subme=1" in settings and b"me=dia" in settings  # the default: veryfast + FAST_MOTION_SEARCH
    with VideoEncoder(str(tmp_path / "medium.mp4"), width, height, preset="medium") as encoder:
        encoder.write(np.zeros((height, width, 3), np.uint8))
    assert b"subme=7" in open(tmp_path / "medium.mp4", "rb").read()  # another preset: its own settings
    with pytest.raises(ValueError, match="grey2.mp4"), VideoEncoder(str(tmp_path / "grey2.mp4"), width, height,
                                                                    colour=BT709) as encoder:
        encoder.write(frame[:-1])
    assert not (tmp_path / "grey2.mp4").exists()
