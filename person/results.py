"""What a person looks at after training a personal model: a side-by-side video (the held-out source | the same
frames dubbed, with the dubbed audio), a contact sheet of held-out mouths (real | generated) and report.md."""
import math
import os

import cv2
import numpy as np

from common.errors import UserError
from common.files import write_atomically
from data.openface_csv import read_openface_csv
from dubbing.pipeline import ping_pong
from media.decoder import DecodedVideo, read_video_frames
from media.encoder import VideoEncoder

PANEL_HEIGHT = 960       # each half of the side-by-side video (a talking head filmed whole still shows its mouth)
SHEET_FRAMES = 6         # mouth pairs per held-out video on the contact sheet
MOUTH_SIDE = 128         # pixels of each mouth there
MOUTH_BOX = 1.8          # the mouth's crop: this many mouth widths square, about the mouth's centre
LABEL_HEIGHT = 22
WHITE, GREY = (255, 255, 255), (40, 40, 40)


def _resized(frame, height):
    width = 2 * round(frame.shape[1] * height / frame.shape[0] / 2)
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def side_by_side(source_path, dubbed_path, output_path, height=PANEL_HEIGHT):
    """source | dubbed, each `height` pixels high (at most the source's), with the dubbed video's audio. The dubbed
    video has a frame per 40 ms of its audio: the source is shown as dubbing read it (forwards, backwards, ...)."""
    source = DecodedVideo(source_path)
    try:
        cycle = ping_pong(len(source), 2 * len(source))
        height = min(height, source.shape[0]) // 2 * 2
        width = _resized(source.rgb(0), height).shape[1]
        with VideoEncoder(output_path, 2 * width, height, audio_path=dubbed_path) as encoder:
            for index, frame in enumerate(read_video_frames(dubbed_path)):
                left = _resized(source.rgb(int(cycle[index % len(cycle)])), height)
                encoder.write(np.ascontiguousarray(np.hstack([left, cv2.resize(frame, (width, height))])))
    finally:
        source.close()


def mouth_boxes(landmarks):
    """(T, 4) integer boxes (top, bottom, left, right): a square of MOUTH_BOX median mouth widths about each
    frame's mouth centre (points 48-67), one size for the whole video so the pairs compare."""
    centres = landmarks[:, 48:68].mean(axis=1)
    side = MOUTH_BOX * np.median(np.linalg.norm(landmarks[:, 54] - landmarks[:, 48], axis=1))
    top_left = np.round(centres - side / 2).astype(int)
    side = int(math.ceil(side))
    return np.stack([top_left[:, 1], top_left[:, 1] + side, top_left[:, 0], top_left[:, 0] + side], axis=1)


def _crop(frame, box):
    top, bottom, left, right = box
    margin = bottom - top  # a box reaching past the frame's edge is filled with black there
    padded = cv2.copyMakeBorder(frame, margin, margin, margin, margin, cv2.BORDER_CONSTANT)
    crop = padded[top + margin:bottom + margin, left + margin:right + margin]
    return cv2.resize(crop, (MOUTH_SIDE, MOUTH_SIDE), interpolation=cv2.INTER_AREA)


def _frames_at(path, indices):
    """{index: frame} of the video's frames at `indices`, decoding it once and keeping only those."""
    wanted = set(indices)
    return {index: frame for index, frame in enumerate(read_video_frames(path)) if index in wanted}


def _label(image, text):
    band = np.full((LABEL_HEIGHT, image.shape[1], 3), GREY, np.uint8)
    cv2.putText(band, text, (6, LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, WHITE, 1, cv2.LINE_AA)
    return np.vstack([band, image])


def mouth_row(real_path, generated_path, landmark_csv, count=SHEET_FRAMES):
    """One row of the contact sheet: `count` frames spread over the video, each its real mouth | generated mouth,
    cut from the same box (the real frame's landmarks)."""
    landmarks = read_openface_csv(landmark_csv)
    indices = np.linspace(0, len(landmarks) - 1, count + 2).round().astype(int)[1:-1]
    real, generated = _frames_at(real_path, indices), _frames_at(generated_path, indices)
    indices = [index for index in indices if index in real and index in generated]
    if not indices:
        raise UserError(f"{generated_path}: no frames to compare; delete it and run the same command again")
    boxes = mouth_boxes(landmarks)
    gap = np.full((MOUTH_SIDE, 2, 3), WHITE, np.uint8)
    cells = []
    for index in indices:
        pair = np.hstack([_crop(real[index], boxes[index]), gap, _crop(generated[index], boxes[index])])
        cells.append(_label(pair, f"frame {index}"))
    spacer = np.full((cells[0].shape[0], 8, 3), GREY, np.uint8)
    row = np.hstack([part for cell in cells for part in (cell, spacer)][:-1])
    name = os.path.splitext(os.path.basename(real_path))[0]
    return _label(row, f"{name}: real | generated (dubbed with its own audio; held out, never trained on)")


def contact_sheet(rows, output_path):
    """The rows (mouth_row) one above the other, written as a PNG."""
    width = max(row.shape[1] for row in rows)
    sheet = np.vstack([np.pad(row, ((0, 6), (0, width - row.shape[1]), (0, 0))) for row in rows])
    encoded, data = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not encoded:
        raise UserError(f"{output_path}: OpenCV could not encode the {sheet.shape} contact sheet")
    write_atomically(output_path, lambda f: f.write(data.tobytes()))


def table_of(markdown_path):
    """The notes and table of a markdown file evaluate.py wrote, without its title."""
    with open(markdown_path) as f:
        lines = f.read().strip().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()
