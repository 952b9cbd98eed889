"""The two baselines that a self-reconstruction's scores are read against, written by dubbing's encoder with its
settings and the source's audio, as a dubbed video is:

    real (re-encoded)  the source's own frames, re-encoded: what a perfect generator scores, up to the encoder's
                       loss and the landmark detector's noise
    reference copy     every frame's mouth region (where dubbing pastes) taken from one reference frame, aligned
                       to the frame by the rigid face (eyes and nose): a face that does not speak
"""
import itertools

import cv2
import numpy as np

from common.errors import UserError
from common.geometry import CropGeometry, crop_box, paste_mask
from dubbing.blend import FaceBlender
from dubbing.pipeline import crop_radii, encoder_threads
from media.decoder import DecodedVideo
from media.encoder import VideoEncoder

from .identity import similarity_transform
from .lip_shape import RIGID


def _encode(video, source_path, output_path, device, change=None):
    """Write the decoded (4:2:0) `video` as dub() writes frames, with the source's audio; each frame passed through
    change(t, [Y, U, V] copies) when given."""
    height, width = video.stored
    with VideoEncoder(output_path, width, height, audio_path=source_path, colour=video.colour,
                      threads=encoder_threads(device)) as encoder:
        for t in itertools.count():
            try:
                planes = video.frame(t)
            except IndexError:  # decoding ended
                break
            if change is not None:
                planes = [np.array(plane) for plane in planes]
                change(t, planes)
            encoder.write(*planes)


def reencode(source_path, output_path, device):
    """The source's frames through dubbing's encoder alone (what dub() writes for a frame it passes through)."""
    video = DecodedVideo(source_path, background=True, pixel_format="yuv420p")
    try:
        _encode(video, source_path, output_path, device)
    finally:
        video.close()


def reference_copy(source_path, output_path, landmarks, mouth_size, device):
    """The source with the mouth region of each frame (DINet's mouth hole at `mouth_size`, pasted with dubbing's
    mask) taken from the first frame whose crop fits, warped onto the frame by the similarity that maps its rigid
    landmarks (T, 68, 2) onto the frame's: the mouth keeps the reference's shape while the head moves."""
    geometry = CropGeometry(mouth_size)
    video = DecodedVideo(source_path, pixel_format="yuv420p")
    try:
        radii = crop_radii(landmarks, video.size)
        reference = next((t for t, radius in enumerate(radii) if radius is not None), None)
        if reference is None:
            raise UserError(f"{source_path}: the face crop leaves the frame in every frame; use a video with the "
                            f"whole lower face inside the picture")
        reference_rgb = np.array(video.rgb(reference))
        reference_points = landmarks[reference, RIGID].astype(np.float64)
        blender = FaceBlender(paste_mask(geometry), video.colour)

        def paste(t, planes):
            if t >= len(landmarks) or radii[t] is None:
                return
            top, bottom, left, right = box = crop_box(landmarks[t], radii[t])
            to_frame = similarity_transform(reference_points, landmarks[t, RIGID].astype(np.float64))
            scale = np.diag([geometry.width / (right - left), geometry.height / (bottom - top)])
            to_crop = np.hstack([scale @ to_frame[:, :2], scale @ (to_frame[:, 2:] - [[left], [top]])])
            face = cv2.warpAffine(reference_rgb, to_crop, (geometry.width, geometry.height), flags=cv2.INTER_LINEAR)
            chroma = slice(top // 2, (bottom + 1) // 2)
            y, u, v = planes
            blender.paste((y[top:bottom], u[chroma], v[chroma]), face.astype(np.float32), box)

        _encode(video, source_path, output_path, device, paste)
    finally:
        video.close()
