"""The frame-stage dataset (DINet's sampling): one masked source frame, 5 reference frames, a 5-frame audio window.

Each item picks one video; a source frame from the middle of one clip (so a 5-frame audio window
centred on it exists within the clip) and one random frame from each of 5 other clips as references.
Decoded, resized face crops are kept in a per-process LRU cache, so epochs after the first do not
re-read and resize JPEGs (DINet did that every step).
"""
import random
from collections import OrderedDict

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import UserError
from common.geometry import AUDIO_WINDOW, CLIP_LENGTH, NUM_REFERENCES, CropGeometry, mask_mouth


class FrameCache:
    """Least-recently-used cache of face crops resized to the training geometry, bounded in bytes."""

    def __init__(self, budget_mb):
        self.budget = budget_mb * 2 ** 20
        self.used = 0
        self.frames = OrderedDict()

    def get(self, path, size):
        key = (path, size)
        if key in self.frames:
            self.frames.move_to_end(key)
            return self.frames[key]
        image = cv2.imread(path)
        if image is None:
            raise UserError(f"{path}: cannot read this face crop; rerun "
                                  f"`python data_processing.py --crop_face`")
        image = cv2.resize(image[:, :, ::-1], size)  # BGR -> RGB, (H, W, 3) uint8
        if self.budget:
            self.frames[key] = image
            self.used += image.nbytes
            while self.used > self.budget:
                _, evicted = self.frames.popitem(last=False)
                self.used -= evicted.nbytes
        return image


def to_tensor(image):
    """(H, W, C) uint8 -> (C, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


class FrameDataset(Dataset):
    def __init__(self, training_set, augment_num, mouth_size, frame_cache_mb=2048):
        self.geometry = CropGeometry(mouth_size)
        # DINet samples 6 distinct clips per item (1 source + 5 references).
        self.videos = {name: clips for name, clips in training_set.videos.items() if len(clips) > NUM_REFERENCES}
        skipped = sorted(set(training_set.videos) - set(self.videos))
        if skipped:
            print(f"skipping {len(skipped)} video(s) with fewer than {NUM_REFERENCES + 1} clips: {', '.join(skipped[:5])}")
        if not self.videos:
            raise UserError(f"{training_set.path}: no video has {NUM_REFERENCES + 1} or more {CLIP_LENGTH}-frame clips; "
                             f"use longer videos")
        names = sorted(self.videos)
        self.items = [name for _ in range(augment_num) for name in names]
        self.cache = FrameCache(frame_cache_mb)

    def __len__(self):
        return len(self.items)

    def load(self, path):
        return self.cache.get(path, (self.geometry.width, self.geometry.height))

    def __getitem__(self, key):
        """key: an index, or (index, seed) from the engine's EpochOrder to make the random picks reproducible."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = random.Random(seed) if seed is not None else random
        clips = self.videos[self.items[index]]
        source_clip, *reference_clips = (clips[i] for i in rng.sample(range(len(clips)), NUM_REFERENCES + 1))
        source_index = rng.randrange(AUDIO_WINDOW // 2, CLIP_LENGTH - AUDIO_WINDOW // 2)
        source = self.load(source_clip.frame_paths[source_index])
        references = [self.load(clip.frame_paths[rng.randrange(CLIP_LENGTH)]) for clip in reference_clips]
        window = source_clip.audio_features[source_index - AUDIO_WINDOW // 2: source_index + AUDIO_WINDOW // 2 + 1]
        return {
            "source": to_tensor(source),                                  # (3, H, W)
            "source_masked": to_tensor(mask_mouth(source, self.geometry)),  # (3, H, W), mouth zeroed
            "reference": to_tensor(np.concatenate(references, axis=2)),    # (15, H, W)
            "audio": torch.tensor(window, dtype=torch.float32).t(),        # (A, 5)
        }
