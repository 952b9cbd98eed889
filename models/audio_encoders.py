"""Audio encoders: a window of per-frame audio features (B, A, T) -> audio steps (B, 128, T').

Every encoder returns a short sequence of 128-d steps; the audio code DINet feeds to AdaAT is their mean,
and the hybrid transformer reads them as per-frame tokens. The three choices (`--audio_encoder`):
- conv1d: DINet's strided 1-D conv encoder, T = 5 -> T' = 2 (kept exactly: lab1 loads published weights).
- conv1d_alt: residual 1-D convs that keep the frame rate (T' = T), so every audio frame has its own step.
- audio_attention: AD-NeRF's AudioAttNet idea. Each frame is encoded on its own, a small temporal conv net
  scores the frames and a softmax over the window weighs them; the steps come back weighted (times T), so
  their mean is AD-NeRF's attention-weighted sum and each step still stands for one audio frame.
"""
import torch
from torch import nn

from common.geometry import AUDIO_WINDOW

from .blocks import DownBlock, ResBlock, SameBlock

AUDIO_CODE = 128  # width of one audio step and of the pooled audio code (DINet's)


def conv1d_audio_encoder(audio_channel):
    """DINet's encoder: (B, A, T) -> (B, 128, T/4)."""
    return nn.Sequential(
        SameBlock(audio_channel, 128, kernel_size=5, padding=2, dims=1),
        ResBlock(128, 128, 3, 1, dims=1),
        DownBlock(128, 128, 3, 1, dims=1),
        ResBlock(128, 128, 3, 1, dims=1),
        DownBlock(128, 128, 3, 1, dims=1),
        SameBlock(128, 128, kernel_size=3, padding=1, dims=1),
    )


class AltConv1dAudioEncoder(nn.Module):
    """(B, A, T) -> (B, 128, T): a per-frame projection, then residual temporal convs without striding.

    Three kernel-3 residual blocks give every step a receptive field of 7 frames, the whole window."""

    def __init__(self, audio_channel, width=AUDIO_CODE, num_blocks=3):
        super().__init__()
        self.frame_projection = SameBlock(audio_channel, width, kernel_size=1, padding=0, dims=1)
        self.temporal = nn.Sequential(*[ResBlock(width, width, 3, 1, dims=1) for _ in range(num_blocks)])
        # ReLU'd output like DINet's last SameBlock, so the pooled code lives in the same range.
        self.output = SameBlock(width, width, kernel_size=1, padding=0, dims=1)

    def forward(self, audio):
        return self.output(self.temporal(self.frame_projection(audio)))  # (B, 128, T)


class AudioAttentionEncoder(nn.Module):
    """(B, A, T) -> (B, 128, T), attention-weighted; T must be the window it was built for."""

    def __init__(self, audio_channel, window=AUDIO_WINDOW, width=AUDIO_CODE):
        super().__init__()
        self.window = window
        # 1x1 convs: an MLP applied to each frame alone (AD-NeRF's per-frame AudioNet)
        self.frame_encoder = nn.Sequential(SameBlock(audio_channel, width, kernel_size=1, padding=0, dims=1),
                                           SameBlock(width, width, kernel_size=1, padding=0, dims=1))
        # AD-NeRF's attentionConvNet: kernel-3 convs narrowing 128 -> 16 -> 8 -> 4 -> 2 -> 1 score per frame
        scorer, channels = [], width
        for narrower in (16, 8, 4, 2, 1):
            scorer += [nn.Conv1d(channels, narrower, kernel_size=3, padding=1), nn.LeakyReLU(0.02)]
            channels = narrower
        self.frame_scorer = nn.Sequential(*scorer)
        # AD-NeRF's attentionNet: a linear map over the window's scores before the softmax, so where a
        # frame sits in the window can matter, not only what it sounds like
        self.score_mixer = nn.Linear(window, window)

    def forward(self, audio):
        if audio.shape[2] != self.window:
            raise ValueError(f"audio_attention was built for a {self.window}-frame audio window, got {audio.shape[2]}")
        frames = self.frame_encoder(audio)                          # (B, 128, T)
        scores = self.frame_scorer(frames).squeeze(1)               # (B, T)
        weights = torch.softmax(self.score_mixer(scores), dim=1)    # (B, T), sums to 1 over the window
        return frames * weights.unsqueeze(1) * self.window          # (B, 128, T); mean over T = weighted sum
