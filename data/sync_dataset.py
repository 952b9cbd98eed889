"""SyncNet training windows, from the same training JSON as the generator.

A window is 5 consecutive mouth crops of one clip (frames c-2..c+2, stacked on channels: (15, m, m),
the mouth cut from DINet's face crop exactly where the generator paints it) and 9 audio vectors (A, 9).
In sync, the audio is that of frames c-4..c+4, as DINet's clip stage feeds its SyncNet. Off sync, the
same mouths get the audio of another centre: of the same video at least `min_shift` frames away (half
of the off-sync items when the split has another video) or of another video of the same split.

Clips are joined into one timeline per video where their frame files are named by consecutive frame
numbers (as DINet's and our data_processing.py write them), so an audio window may reach into the next
clip; otherwise each clip stands alone and only its middle frame has a whole audio window.

Items also say where their mouths and audio come from, so a training batch can pair every window's
mouths with every other window's audio (`pair_labels`): B^2 - B more off-sync examples per batch.

Videos, not windows, are split into training and held-out (`split_videos`), so held-out accuracy is
measured on faces and voices the SyncNet has never seen; the held-out set is fixed (one in-sync and one
off-sync item per window, drawn once from a seed), so epochs are compared on the same items.
"""
import os
import random
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from common.errors import UserError
from common.geometry import AUDIO_FRAMES, CLIP_LENGTH, MOUTH_FRAMES, CropGeometry
from models.syncnet import resize_mouths

from .dataset import FrameCache, to_tensor

ISLAND = 10 ** 7   # position offset of clips whose frame names give no frame numbers: never adjacent
# fewer did not learn lip sync from the demo data (held-out accuracy under 0.7 after 30 epochs; README, SyncNet)
MIN_TRAINING_VIDEOS, MIN_TRAINING_WINDOWS = 2, 100


@dataclass
class VideoTimeline:
    """One video's frames and audio by position (the frame number in the video where it is known)."""
    name: str
    frame_paths: dict = field(default_factory=dict)   # position -> face-crop path
    audio: dict = field(default_factory=dict)         # position -> audio vector
    image_centres: list = field(default_factory=list)  # positions whose frames c-2..c+2 lie in one clip

    def windows(self):
        """The centres of this video's 5-frame windows that have their 9 audio vectors."""
        return [centre for centre in self.image_centres if self.has_audio_window(centre)]

    def has_audio_window(self, centre):
        return all(centre + offset in self.audio for offset in range(-(AUDIO_FRAMES // 2), AUDIO_FRAMES // 2 + 1))

    def audio_window(self, centre):
        """(A, 9) float tensor of the audio around `centre`."""
        half = AUDIO_FRAMES // 2
        return torch.tensor([self.audio[centre + offset] for offset in range(-half, half + 1)],
                            dtype=torch.float32).t()


def _clip_start(clip, clip_index, taken):
    """The frame number of a clip's first frame, read from its file names; an island position otherwise."""
    try:
        numbers = [int(os.path.splitext(os.path.basename(path))[0]) for path in clip.frame_paths]
    except ValueError:
        numbers = None
    consecutive = numbers is not None and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    if not consecutive or any(number in taken for number in numbers):
        return ISLAND * (clip_index + 1)
    return numbers[0]


def video_timelines(training_set, names):
    timelines = []
    for name in names:
        timeline = VideoTimeline(name)
        for clip_index, clip in enumerate(training_set.videos[name]):
            start = _clip_start(clip, clip_index, timeline.frame_paths)
            for offset, (path, vector) in enumerate(zip(clip.frame_paths, clip.audio_features)):
                timeline.frame_paths[start + offset] = path
                timeline.audio[start + offset] = vector
            half = MOUTH_FRAMES // 2
            timeline.image_centres += range(start + half, start + len(clip.frame_paths) - half)
        timelines.append(timeline)
    return timelines


def split_videos(training_set, held_out_fraction, seed):
    """(training names, held-out names): a seeded draw of at least one held-out video."""
    names = sorted(training_set.videos)
    if len(names) < 2:
        raise UserError(f"{training_set.path}: SyncNet training holds out whole videos to measure accuracy, "
                         f"and this JSON has {len(names)}; prepare at least 2 videos")
    return draw_held_out(names, held_out_fraction, seed)


def check_enough_data(path, training_timelines, held_out_videos,
                      fix="prepare more or longer videos (python data_processing.py)"):
    """Refuse, before any work, a training split too small to learn lip sync from."""
    windows = sum(len(timeline.windows()) for timeline in training_timelines)
    if len(training_timelines) < MIN_TRAINING_VIDEOS or windows < MIN_TRAINING_WINDOWS:
        raise UserError(f"{path}: too small to train a SyncNet on: {len(training_timelines)} training video(s) with "
                         f"{windows} windows (5 frames and their audio) once {held_out_videos} held out; it needs at "
                         f"least {MIN_TRAINING_VIDEOS} videos and {MIN_TRAINING_WINDOWS} windows (fewer did not learn "
                         f"lip sync from the demo data); {fix}")


def draw_held_out(names, held_out_fraction, seed):
    """split_videos' draw of two or more video names, also made before the videos are prepared."""
    names = sorted(names)
    held_out_count = min(len(names) - 1, max(1, round(held_out_fraction * len(names))))
    shuffled = names[:]
    random.Random(seed).shuffle(shuffled)
    return sorted(shuffled[held_out_count:]), sorted(shuffled[:held_out_count])


def windows_of(frames):
    """The windows a video of `frames` frames gives once prepared (an estimate made before): those of each whole
    clip of CLIP_LENGTH frames, less those at either end whose audio window reaches past the video."""
    clips = frames // CLIP_LENGTH
    if not clips:
        return 0
    mouth_half, audio_half = MOUTH_FRAMES // 2, AUDIO_FRAMES // 2
    return clips * (CLIP_LENGTH - 2 * mouth_half) - 2 * (audio_half - mouth_half)


class SyncDataset(Dataset):
    """Items: mouths (15, s, s) in [0, 1], audio (A, 9), in_sync () float, 1 or 0; and where they come from:
    video, centre (of the mouths), audio_video, audio_centre (int64 scalars; videos numbered in this set).
    The mouths are cut m x m and resized to the SyncNet's input size s here (as the SyncNet would resize
    them itself), so loader workers hand over small tensors.

    Training (fixed_seed None): every window `augment_num` times per epoch, in sync with probability
    `in_sync_fraction`, drawn from the seed the engine's sampler pairs with the index.
    Held-out (fixed_seed given): each window once in sync and once off sync, drawn once.
    """

    def __init__(self, timelines, mouth_size, augment_num=1, min_shift=5, frame_cache_mb=2048, fixed_seed=None,
                 input_size=None, in_sync_fraction=0.5):
        self.geometry = CropGeometry(mouth_size)
        self.input_size = input_size
        self.in_sync_fraction = in_sync_fraction
        self.timelines = timelines
        self.min_shift = min_shift
        self.audio_centres = [[c for c in sorted(t.audio) if t.has_audio_window(c)] for t in timelines]
        windows = [(v, c) for v, t in enumerate(timelines) for c in t.windows()]
        names = ", ".join(t.name for t in timelines)
        if not windows:
            raise UserError(f"videos {names}: no 5-frame window with its 9 audio vectors; check the training JSON")
        if len(timelines) == 1 and not any(self._shifted_centres(0, c) for _, c in windows):
            raise UserError(f"video {names}: no audio window {min_shift}+ frames away for off-sync examples and "
                             f"no other video in this split; lower --negative_min_shift or add videos")
        self.cache = FrameCache(frame_cache_mb)
        if fixed_seed is None:
            self.items = windows * augment_num
        else:
            rng = random.Random(fixed_seed)
            self.items = [item for v, c in windows for item in ((v, c, v, c), (v, c, *self.off_sync_audio(rng, v, c)))]

    def __len__(self):
        return len(self.items)

    def _shifted_centres(self, video, centre):
        return [c for c in self.audio_centres[video] if abs(c - centre) >= self.min_shift]

    def off_sync_audio(self, rng, video, centre):
        """(video index, centre) of audio that does not belong to these mouths."""
        shifted = self._shifted_centres(video, centre)
        if len(self.timelines) > 1 and (not shifted or rng.random() < 0.5):
            other = rng.choice([v for v in range(len(self.timelines)) if v != video])
            return other, rng.choice(self.audio_centres[other])
        return video, rng.choice(shifted)

    def mouths(self, video, centre):
        """(15, s, s): the mouth region of frames centre-2..centre+2, at the SyncNet's input size."""
        timeline, g = self.timelines[video], self.geometry
        crops = [self.cache.get(timeline.frame_paths[centre + offset], (g.width, g.height))[g.mouth_rows, g.mouth_cols]
                 for offset in range(-(MOUTH_FRAMES // 2), MOUTH_FRAMES // 2 + 1)]
        return resize_mouths(to_tensor(*crops)[None], self.input_size)[0]

    def __getitem__(self, key):
        """key: an index, or (index, seed) from the engine's EpochOrder."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        item = self.items[index]
        if len(item) == 2:  # training: in sync or not is drawn now
            rng = random.Random(seed) if seed is not None else random
            in_sync = rng.random() < self.in_sync_fraction
            item = (*item, *item) if in_sync else (*item, *self.off_sync_audio(rng, *item))
        video, centre, audio_video, audio_centre = item
        return {
            "mouths": self.mouths(video, centre),                             # (15, s, s)
            "audio": self.timelines[audio_video].audio_window(audio_centre),  # (A, 9)
            "in_sync": torch.tensor(float((audio_video, audio_centre) == (video, centre))),
            "video": torch.tensor(video), "centre": torch.tensor(centre),
            "audio_video": torch.tensor(audio_video), "audio_centre": torch.tensor(audio_centre),
        }


def pair_labels(batch, min_shift):
    """Targets and weights (N, N) for mouths i heard with audio j, from the windows' origins: 1 where the audio
    is the mouths' own; 0 where it is another video's or the same video's min_shift+ frames away; weight 0
    where it is the same video's but nearer (neither clearly in nor out of sync). In-sync and off-sync pairs
    weigh the same in total, and within off-sync the same video at another moment (the hard case, which
    held-out accuracy measures) weighs as much as all other videos together."""
    same_video = batch["video"][:, None] == batch["audio_video"][None, :]
    shift = (batch["centre"][:, None] - batch["audio_centre"][None, :]).abs()
    in_sync = same_video & (shift == 0)
    shifted = same_video & (shift >= min_shift)
    other_video = ~same_video
    # computed on the device (nothing read back): where one off-sync group is empty, the other takes its share
    off_sync_share = torch.where(shifted.any() & other_video.any(), 0.25, 0.5)
    weight = torch.zeros(shift.shape, device=shift.device)
    for members, share in ((in_sync, 0.5), (shifted, off_sync_share), (other_video, off_sync_share)):
        weight = torch.where(members, share / members.sum().clamp(min=1), weight)
    return in_sync.float(), weight
