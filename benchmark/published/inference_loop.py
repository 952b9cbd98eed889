"""DINet's published inference loop, step for step, on this repository's modules: bench.py's dubbing baseline.

The speed-ups bench.py reports for dubbing are over this loop run on the same machine and video, so they hold on
whatever CPU or GPU runs the bench. What the published inference.py does, and this does too:
  1. every source frame read with OpenCV and written to a JPEG;
  2. per output frame: the crop radius of its 5-frame landmark window, the frame read back from its JPEG (BGR
     flipped to RGB), cropped, resized (bilinear), scaled to [0, 1], the mouth zeroed, and the generator run at
     batch 1 in fp32 on NCHW tensors, the 5 references' branch recomputed for every frame; the face written to
     an XVID face video, resized back to the crop and pasted over its top 3r rows, the frame written to an XVID
     video (both by OpenCV);
  3. ffmpeg muxing the driving audio in (video copied, AAC).
The audio features (DeepSpeech in the published code) are given, not timed, as in the published figure. The
network is the caller's, set up the published way (`published_way`).
"""
import os
import subprocess
import time

import cv2
import imageio_ffmpeg
import numpy as np
import torch

from common.errors import UserError
from common.geometry import AUDIO_WINDOW, NUM_REFERENCES, CropGeometry, compute_crop_radius, crop_box
from data.openface_csv import read_openface_csv

PUBLISHED_SCALE = 1.05  # DINet's inference.py: a fixed crop scale


def published_inference(video_path, audio_path, landmark_csv, features, network, mouth_size, frames, work_dir,
                        device=torch.device("cpu"), seed=0):
    """Dub the first `frames` frames of `video_path` as DINet's inference.py does (it makes one frame fewer than
    it has audio for: frames - 1); returns (seconds from frame extraction to the muxed file, frames made).
    features: (>= frames, C) audio features, 25 per second."""
    started = time.perf_counter()
    geometry = CropGeometry(mouth_size)
    size = (geometry.width, geometry.height)
    frame_dir = os.path.join(work_dir, "frames")
    os.makedirs(frame_dir, exist_ok=True)
    capture = cv2.VideoCapture(video_path)
    video_size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    paths = []
    for i in range(frames):
        ok, frame = capture.read()
        if not ok:
            raise UserError(f"{video_path}: {i} frames, the published loop was asked for {frames}; pass a longer video")
        paths.append(os.path.join(frame_dir, f"{i:06d}.jpg"))
        cv2.imwrite(paths[-1], frame)
    capture.release()

    landmarks = read_openface_csv(landmark_csv)[:frames].astype(int)
    padded_landmarks = np.pad(landmarks, ((2, 2), (0, 0), (0, 0)), mode="edge")
    padded_paths = paths[:1] * 2 + paths + paths[-1:] * 2
    padded_features = np.pad(features[:frames], ((2, 2), (0, 0)), mode="edge")

    def crop(end, scale):
        """The frame at the centre of the window ending at `end` (padded numbering), its crop and placement."""
        radius = compute_crop_radius(video_size, padded_landmarks[end - AUDIO_WINDOW:end], random_scale=scale)
        if radius is None:
            raise UserError(f"{video_path}: the face size changes too much near frame {end - AUDIO_WINDOW}; "
                             f"the published loop stops there")
        image = cv2.imread(padded_paths[end - 3])[:, :, ::-1]
        top, bottom, left, right = crop_box(padded_landmarks[end - 3], radius)
        return image, image[top:bottom, left:right], (top, left, radius)

    rng = np.random.default_rng(seed)
    references = [cv2.resize(crop(end, rng.random() / 10 + 1.05)[1], size) / 255.0
                  for end in rng.choice(range(AUDIO_WINDOW, frames + 2), NUM_REFERENCES, replace=False)]
    reference = torch.from_numpy(np.concatenate(references, 2)).permute(2, 0, 1).unsqueeze(0).float().to(device)

    video_out = os.path.join(work_dir, "published.avi")
    face_out = os.path.join(work_dir, "published_face.avi")
    writer = cv2.VideoWriter(video_out, cv2.VideoWriter_fourcc(*"XVID"), 25, video_size)
    face_writer = cv2.VideoWriter(face_out, cv2.VideoWriter_fourcc(*"XVID"), 25, size)
    for end in range(AUDIO_WINDOW, frames + 4):
        image, face, (top, left, radius) = crop(end, PUBLISHED_SCALE)
        crop_height, crop_width = face.shape[:2]
        masked = cv2.resize(face, size) / 255.0
        masked[geometry.mouth_rows, geometry.mouth_cols] = 0
        source = torch.from_numpy(masked).float().to(device).permute(2, 0, 1).unsqueeze(0)
        audio = torch.from_numpy(padded_features[end - AUDIO_WINDOW:end]).permute(1, 0).unsqueeze(0).float().to(device)
        with torch.no_grad():
            generated = network(source, reference, audio).squeeze(0).permute(1, 2, 0).cpu().numpy() * 255
        face_writer.write(generated[:, :, ::-1].copy().astype(np.uint8))
        pasted = cv2.resize(generated, (crop_width, crop_height))
        image[top:top + radius * 3, left:left + crop_width] = pasted[:radius * 3]
        writer.write(image[:, :, ::-1])  # the BGR array read
    writer.release()
    face_writer.release()
    muxed = os.path.join(work_dir, "published.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", video_out, "-i", audio_path,
                    "-c:v", "copy", "-c:a", "aac", "-map", "0:v:0", "-map", "1:a:0", "-shortest", muxed], check=True)
    return time.perf_counter() - started, frames - 1
