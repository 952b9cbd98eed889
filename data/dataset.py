"""The frame-stage dataset (DINet's sampling): one masked source frame, 5 reference frames, a 5-frame audio window.

Each item picks one video; a source frame from the middle of one clip (so a 5-frame audio window
centred on it exists within the clip) and one random frame from each of 5 other clips as references.
Decoded, resized face crops are kept in a per-process LRU cache, so epochs after the first do not
re-read and resize JPEGs (DINet did that every step). Items carry images as uint8 (`image_tensor`), a quarter of
float32's bytes through the workers' shared memory and the pinned copy; training makes them [0, 1] floats on its
device (`as_float`), the same values as converting here.
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
        # resized, then BGR -> RGB: the same pixels as the other order, without resizing a reversed-stride view
        image = cv2.cvtColor(cv2.resize(image, size), cv2.COLOR_BGR2RGB)  # (H, W, 3) uint8
        if self.budget:
            self.frames[key] = image
            self.used += image.nbytes
            while self.used > self.budget:
                _, evicted = self.frames.popitem(last=False)
                self.used -= evicted.nbytes
        return image


def image_tensor(*images):
    """(H, W, C) uint8 images -> (n * C, H, W) uint8, their channels stacked in order; contiguous planes (OpenCV's
    split is ~10x faster than a strided copy of interleaved channels), so a batch collates in one copy."""
    return torch.from_numpy(np.stack([plane for image in images for plane in cv2.split(image)]))


def as_float(tensor):
    """uint8 images -> float in [0, 1]; any other tensor as it is."""
    return tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor


def to_tensor(*images):
    """(H, W, C) uint8 images -> (n * C, H, W) float in [0, 1]."""
    return as_float(image_tensor(*images))


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
            "source": image_tensor(source),                                    # (3, H, W) uint8
            "source_masked": image_tensor(mask_mouth(source, self.geometry)),  # (3, H, W), mouth zeroed
            "reference": image_tensor(*references),                            # (15, H, W)
            "audio": torch.tensor(window, dtype=torch.float32).t(),            # (A, 5)
        }
