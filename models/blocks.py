"""Convolution blocks of the DINet generator, one class per kind for 1-D and 2-D alike.

Attribute names (`conv`, `norm`, `conv1`, `norm1`, `channel_conv`, ...) are the published DINet's,
so its checkpoints load with strict=True. BatchNorm is plain `nn.BatchNorm{1,2}d`; the engine turns
it into `nn.SyncBatchNorm` under torchrun.
"""
import torch.nn.functional as F
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


class SameBlock(nn.Module):
    """conv -> BN -> ReLU at the same resolution (stride 2 makes it DINet's DownBlock)."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, stride=1, dims=2):
        super().__init__()
        self.conv = _CONV[dims](in_features, out_features, kernel_size=kernel_size, padding=padding, stride=stride)
        self.norm = _NORM[dims](out_features)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


def DownBlock(in_features, out_features, kernel_size=3, padding=1, dims=2):
    """Halves the resolution: DINet's DownBlock1d/2d (same layers as SameBlock, stride 2)."""
    return SameBlock(in_features, out_features, kernel_size, padding, stride=2, dims=dims)


class UpBlock2d(nn.Module):
    """Nearest-neighbour x2 upsampling -> conv -> BN -> ReLU."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features)

    def forward(self, x):
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=2))))


class ResBlock(nn.Module):
    """Pre-activation residual block: BN -> ReLU -> conv -> BN -> ReLU -> conv, plus the input."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, dims=2):
        super().__init__()
        conv, norm = _CONV[dims], _NORM[dims]
        self.conv1 = conv(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = conv(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = norm(in_features)
        self.norm2 = norm(in_features)
        # A 1x1 projection only where the shortcut changes width, as in DINet.
        self.channel_conv = conv(in_features, out_features, 1) if in_features != out_features else None

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        shortcut = x if self.channel_conv is None else self.channel_conv(x)
        return out + shortcut
