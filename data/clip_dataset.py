"""The clip-stage dataset (DINet's clip sampling): 5 consecutive frames of one clip with their references and audio.

Each item picks one video and one of its 9-frame clips; frames 2..6 are the sources (so each has its
5-frame audio window inside the clip, and all 9 audio vectors are the SyncNet's window for the five).
Every source frame gets its own 5 references, one random frame from each of 5 other clips, as in
DINet; unlike DINet, the source clip itself is never a reference, so the target cannot leak into them
(the frame dataset does the same).
"""
import random

import torch

from common.geometry import AUDIO_WINDOW, CLIP_LENGTH, NUM_REFERENCES, mask_mouth

from .dataset import FrameDataset, image_tensor

# the generated frames of a clip: those whose audio window lies inside it (2..6 of 9)
CLIP_FRAMES = range(AUDIO_WINDOW // 2, CLIP_LENGTH - AUDIO_WINDOW // 2)


class ClipDataset(FrameDataset):
    """Items: source and source_masked (5, 3, H, W), reference (5, 15, H, W) (uint8, as the frame dataset's), audio
    (5, A, 5), audio_clip (A, 9)."""

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = random.Random(seed) if seed is not None else random
        clips = self.videos[self.items[index]]
        source_index = rng.randrange(len(clips))
        source_clip = clips[source_index]
        others = [i for i in range(len(clips)) if i != source_index]
        sources, references, windows = [], [], []
        for frame in CLIP_FRAMES:
            sources.append(self.load(source_clip.frame_paths[frame]))
            picked = [clips[i].frame_paths[rng.randrange(CLIP_LENGTH)] for i in rng.sample(others, NUM_REFERENCES)]
            references.append([self.load(path) for path in picked])
            windows.append(source_clip.audio_features[frame - AUDIO_WINDOW // 2: frame + AUDIO_WINDOW // 2 + 1])
        return {
            "source": torch.stack([image_tensor(image) for image in sources]),                         # (5, 3, H, W)
            "source_masked": torch.stack([image_tensor(mask_mouth(image, self.geometry)) for image in sources]),
            "reference": torch.stack([image_tensor(*images) for images in references]),                # (5, 15, H, W)
            "audio": torch.tensor(windows, dtype=torch.float32).transpose(1, 2),                       # (5, A, 5)
            "audio_clip": torch.tensor(source_clip.audio_features, dtype=torch.float32).t(),           # (A, 9)
        }
