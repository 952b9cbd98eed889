"""SyncNets: does a 5-frame mouth clip match a 9-frame audio window?

    mouths (B, 15, m, m): 5 mouth crops of consecutive frames, stacked on channels (DINet's clip order)
    audio  (B, A, 9):     the per-frame audio vectors of the 9 frames around them (2 more on each side)

Two architectures share the same two encoders:
- `SyncNet` is DINet's (the published `syncnet_256mouth.pth` loads into it with strict=True): the audio
  code is tiled over the face feature map and a small conv head scores every cell, (B, 1, m/32, m/32).
  Trained here by regressing every cell to 1 (in sync) or 0 (off sync), the target DINet's clip stage
  pulls generated clips towards (MSE to 1).
- `EmbeddingSyncNet` is Wav2Lip's and LatentSync's: one embedding per modality, their cosine similarity
  (both are ReLU outputs, so it lies in [0, 1]) read as the probability of sync, trained with BCE.

Both expose `score(mouths, audio)` -> (B,) (above 0.5 means "in sync") and `loss(mouths, audio, target)`,
which is also the generator's sync loss with target 1. `forward(..., all_pairs=True)` scores every
mouths/audio pairing of a batch for the price of one encoder pass per sample (training uses the pairs
across windows as further off-sync examples). `input_size` lets a SyncNet read m x m mouths at
a smaller size (resized inside, antialiased, differentiably), so a SyncNet for mouth 256 data can be
trained on a CPU; the published one reads 256 x 256 as is.

`centre_window` subtracts each window's mean mouth crop from its 5 crops and its mean audio vector from
its 9 vectors before the encoders. The evidence of sync is how mouth and sound change along the window;
the mean is mostly who is speaking (skin, lips, teeth, lighting, voice). Without it, a SyncNet trained on
a few videos learns those identities and stays at chance on a new face (on the 3- and 8-video demo sets,
neither architecture left 50% held-out accuracy in 2000 steps); with it, it learns the motion. Published
weights were trained without it, so a checkpoint that does not record it reads raw inputs.
"""
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from common.geometry import MOUTH_FRAMES

ARCHITECTURES = ("dinet", "embedding")
FACE_STRIDE = 32    # the face encoder halves the resolution five times
LARGEST_INPUT = 1024  # mouths are resized to input_size: a bound on what a checkpoint can ask of memory
DEFAULT_INPUT_SIZE = 64  # train_syncnet.py reads larger mouths at this size: lip motion shows, a CPU keeps up


def default_input_size(mouth_region_size):
    """train_syncnet.py's input size for m x m mouths: DEFAULT_INPUT_SIZE, or the largest multiple of 32 below a
    smaller m (at least 32)."""
    return min(DEFAULT_INPUT_SIZE, max(FACE_STRIDE, mouth_region_size // FACE_STRIDE * FACE_STRIDE))


@dataclass(frozen=True)
class SyncNetConfig:
    """What a SyncNet is and what data it was trained on; saved in its checkpoint."""
    arch: str = "dinet"                # "dinet" (score map, published layout) or "embedding" (cosine + BCE)
    audio_channel: int = 29            # width of one audio vector (29: DINet's DeepSpeech)
    audio_feature: str = "deepspeech"  # name of that audio feature
    mouth_region_size: Optional[int] = 256  # m of the m x m mouth crops it reads; None: not recorded
    input_size: Optional[int] = 256         # the crops are resized to this first; None: read as given
    embedding_dim: int = 128           # width of the face and audio codes (DINet: 128)
    centre_window: bool = False        # subtract each window's mean frame and mean audio vector first

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"--syncnet_arch {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if self.input_size is not None and (type(self.input_size) is not int or not FACE_STRIDE <= self.input_size
                                            <= LARGEST_INPUT or self.input_size % FACE_STRIDE):
            raise ValueError(f"--syncnet_input_size {str(self.input_size)[:20]}: must be a multiple of {FACE_STRIDE} "
                             f"(the face encoder halves it five times) up to {LARGEST_INPUT}")
        if self.mouth_region_size is not None and (type(self.mouth_region_size) is not int
                                                   or not 0 < self.mouth_region_size <= LARGEST_INPUT):
            raise ValueError(f"mouth_region_size {str(self.mouth_region_size)[:20]}: not a mouth size")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def describe(self):
        size = "" if self.input_size in (None, self.mouth_region_size) else f" read at {self.input_size}"
        return (f"{self.arch} SyncNet, mouth {self.mouth_region_size or 'of any size'}{size}, "
                f"{self.audio_feature} audio ({self.audio_channel}-d)")


# ---------------------------------------------------------------- blocks (DINet's SyncNet has no BatchNorm)

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}


_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def _norm(features, dims, normalise):
    return _NORM[dims](features) if normalise else nn.Identity()


class ConvReLU(nn.Module):
    """conv [-> BN] -> ReLU; `stride` (DINet's DownBlock1d) or `pool` (its DownBlock2d: 2x2 average pooling
    after) halves the resolution. The attribute `conv` is the published name."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, stride=1, pool=False, dims=2, norm=False):
        super().__init__()
        self.conv = _CONV[dims](in_features, out_features, kernel_size=kernel_size, padding=padding, stride=stride)
        self.norm = _norm(out_features, dims, norm)
        self.pool = pool

    def forward(self, x):
        out = F.relu(self.norm(self.conv(x)))
        return F.avg_pool2d(out, 2) if self.pool else out


class PlainResBlock(nn.Module):
    """ReLU -> conv [-> BN] -> ReLU -> conv [-> BN], plus the input (DINet's SyncNet ResBlock1d/2d has no BN)."""

    def __init__(self, features, kernel_size=3, padding=1, dims=2, norm=False):
        super().__init__()
        self.conv1 = _CONV[dims](features, features, kernel_size=kernel_size, padding=padding)
        self.norm1 = _norm(features, dims, norm)
        self.conv2 = _CONV[dims](features, features, kernel_size=kernel_size, padding=padding)
        self.norm2 = _norm(features, dims, norm)

    def forward(self, x):
        return self.norm2(self.conv2(F.relu(self.norm1(self.conv1(F.relu(x)))))) + x


class FaceEncoder(nn.Module):
    """(B, 15, s, s) -> (B, out_dim, s/32, s/32), non-negative."""

    def __init__(self, in_channel, out_dim, norm=False):
        super().__init__()
        layers = [ConvReLU(in_channel, 64, kernel_size=7, padding=3, norm=norm)]
        widths = (64, 128, 128, 128, 128)
        for index, width in enumerate(widths):  # five times: residual block, conv + pool, widen
            layers += [PlainResBlock(width, norm=norm), ConvReLU(width, width, pool=True, norm=norm)]
            if index + 1 < len(widths):
                layers.append(ConvReLU(width, widths[index + 1], norm=norm))
        layers.append(ConvReLU(128, out_dim, kernel_size=1, padding=0))
        self.face_conv = nn.Sequential(*layers)

    def forward(self, mouths):
        return self.face_conv(mouths)


class AudioEncoder(nn.Module):
    """(B, A, 9) -> (B, out_dim), non-negative: time goes 9 -> 5 -> 3 -> 2, then its mean."""

    def __init__(self, in_channel, out_dim, norm=False):
        super().__init__()
        self.audio_conv = nn.Sequential(
            ConvReLU(in_channel, 128, kernel_size=7, padding=3, dims=1, norm=norm),
            PlainResBlock(128, dims=1, norm=norm),
            ConvReLU(128, 128, stride=2, dims=1, norm=norm),
            PlainResBlock(128, dims=1, norm=norm),
            ConvReLU(128, 128, stride=2, dims=1, norm=norm),
            PlainResBlock(128, dims=1, norm=norm),
            ConvReLU(128, 128, stride=2, dims=1, norm=norm),
            ConvReLU(128, out_dim, dims=1),
        )

    def forward(self, audio):
        return self.audio_conv(audio).mean(dim=2)


def resize_mouths(mouths, size):
    """(B, C, m, m) -> (B, C, size, size), antialiased bilinear (differentiable); unchanged when m == size or
    size is None."""
    if size is None or (mouths.shape[-1] == size and mouths.shape[-2] == size):
        return mouths
    # antialiased resizing has no bf16 kernel on CPU: resize in fp32 (the encoder casts back under autocast)
    return F.interpolate(mouths.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class _SyncNetBase(nn.Module):
    normalised = False  # BatchNorm in the encoders' blocks
    chance_loss = None  # the loss of a constant score of 0.5 on balanced in-sync / off-sync examples

    def __init__(self, in_channel_image=15, in_channel_audio=29, out_dim=128, input_size=None, centre_window=False):
        super().__init__()
        self.input_size = input_size
        self.centre_window = centre_window
        self.face_encoder = FaceEncoder(in_channel_image, out_dim, self.normalised)
        self.audio_encoder = AudioEncoder(in_channel_audio, out_dim, self.normalised)

    def initialise(self):
        """He initialisation for every conv. PyTorch's default shrinks the signal about threefold per layer:
        through the 16 unnormalised layers of DINet's face encoder the codes of different inputs then differ
        by 1e-7 of their size, and training sits at chance for thousands of steps."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        return self

    def prepare(self, mouths, audio):
        """Resize the mouths to input_size and, with centre_window, remove each window's mean."""
        mouths = resize_mouths(mouths, self.input_size)                          # (B, 15, s, s)
        if self.centre_window:
            frames = mouths.unflatten(1, (MOUTH_FRAMES, -1))                           # (B, 5, 3, s, s)
            mouths = (frames - frames.mean(dim=1, keepdim=True)).flatten(1, 2)
            audio = audio - audio.mean(dim=2, keepdim=True)                      # (B, A, 9)
        return mouths, audio

    def forward(self, mouths, audio, all_pairs=False):
        """The output for each sample (B, ...), or with all_pairs for every (mouths i, audio j) pair of the
        batch (B, B, ...), each encoder still run once per sample."""
        mouths, audio = self.prepare(mouths, audio)
        face_code = self.face_encoder(mouths)   # (B, D, h, w), >= 0
        audio_code = self.audio_encoder(audio)  # (B, D), >= 0
        if not all_pairs:
            return self.compare(face_code, audio_code)
        batch = face_code.shape[0]
        face_code = face_code.repeat_interleave(batch, dim=0)  # pair (i, j) at i * B + j
        audio_code = audio_code.repeat(batch, 1)
        output = self.compare(face_code, audio_code)
        return output.view(batch, batch, *output.shape[1:])

    # Scores and losses are read from forward()'s output, so training can run forward through
    # DistributedDataParallel and still share this code.
    def score(self, mouths, audio):
        """(B,): above 0.5 means in sync."""
        return self.score_of(self(mouths, audio))

    def loss(self, mouths, audio, target):
        """target (B,): 1 in sync, 0 off sync; with target 1 this is the generator's sync loss."""
        return self.loss_of(self(mouths, audio), target)


class SyncNet(_SyncNetBase):
    """DINet's SyncNet: a score map, 1 where the mouths follow the audio."""

    chance_loss = 0.25  # (0.5 - 0)^2 and (0.5 - 1)^2

    def __init__(self, in_channel_image=15, in_channel_audio=29, out_dim=128, input_size=None, centre_window=False):
        super().__init__(in_channel_image, in_channel_audio, out_dim, input_size, centre_window)
        self.merge_encoder = nn.Sequential(
            nn.Conv2d(out_dim * 2, out_dim, kernel_size=3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_dim, 1, kernel_size=3, padding=1),
        )

    def compare(self, face_code, audio_code):
        """(N, D, h, w) and (N, D) -> score map (N, 1, h, w): the audio code tiled over the face map."""
        audio_code = audio_code[:, :, None, None].expand(-1, -1, *face_code.shape[2:])  # (N, D, h, w)
        return self.merge_encoder(torch.cat([face_code, audio_code], 1))

    @staticmethod
    def score_of(score_maps):
        """(..., 1, h, w) -> (...): the map's mean."""
        return score_maps.mean(dim=(-3, -2, -1))

    @staticmethod
    def loss_of(score_maps, target, weight=None):
        """Squared distance of every cell to its sample's target (1 in sync, 0 off), averaged per sample,
        then over samples (weighted when `weight`, shaped like `target`, is given)."""
        per_sample = (score_maps - target.to(score_maps.dtype)[..., None, None, None]).pow(2).mean(dim=(-3, -2, -1))
        return _weighted_mean(per_sample, weight)


class EmbeddingSyncNet(_SyncNetBase):
    """Wav2Lip / LatentSync style: cosine similarity of a face embedding and an audio embedding. The
    encoders are DINet's with BatchNorm in every block but the last, as Wav2Lip's conv blocks have."""

    normalised = True
    chance_loss = math.log(2)  # BCE of 0.5

    def compare(self, face_code, audio_code):
        """(N, D, h, w) and (N, D) -> (N,): cosine of the mean face code and the audio code, in [0, 1]."""
        return F.cosine_similarity(face_code.mean(dim=(2, 3)), audio_code, dim=1, eps=1e-6)

    @staticmethod
    def score_of(similarity):
        return similarity

    @staticmethod
    def loss_of(similarity, target, weight=None):
        # BCE on the similarity read as a probability; clamped because ReLU codes can make it exactly 0 or 1.
        # In fp32 even under autocast (which refuses binary_cross_entropy in reduced precision)
        with torch.autocast(similarity.device.type, enabled=False):
            per_sample = F.binary_cross_entropy(similarity.float().clamp(1e-6, 1 - 1e-6), target.float(),
                                                reduction="none")
        return _weighted_mean(per_sample, weight)


def _weighted_mean(values, weight):
    return values.mean() if weight is None else (values * weight).sum() / weight.sum()


def build_syncnet(config: SyncNetConfig):
    network = SyncNet if config.arch == "dinet" else EmbeddingSyncNet
    return network(3 * MOUTH_FRAMES, config.audio_channel, config.embedding_dim, config.input_size,
                   config.centre_window).initialise()
