"""Convolution blocks of the DINet generator, one class per kind for 1-D and 2-D alike.

Attribute names (`conv`, `norm`, `conv1`, `norm1`, `channel_conv`, ...) are the published DINet's,
so its checkpoints load with strict=True. BatchNorm is plain `nn.BatchNorm{1,2}d`; the engine turns
it into `nn.SyncBatchNorm` under torchrun.
"""
from contextlib import contextmanager

import torch
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


def upsampled_taps(weight, dim):
    """The 3 taps of a 3-wide kernel along `dim`, as the 4 taps of a stride-2 transposed convolution that
    computes (nearest x2 upsampling -> the 3-wide convolution, padding 1) of its input. Output pixel 2i reads
    upsampled pixels 2i-1, 2i, 2i+1, that is input pixels i-1, i, i (taps w0 | w1 + w2); output pixel 2i+1
    reads input pixels i, i, i+1 (taps w0 + w1 | w2). In a transposed convolution (stride 2, padding 1) input
    pixel m reaches output 2m + k - 1 through tap k, so k = 0..3 carry w2, w1 + w2, w0 + w1, w0."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


class UpBlock2d(nn.Module):
    """Nearest-neighbour x2 upsampling -> conv -> BN -> ReLU.

    The upsampling and the 3x3 convolution run as one stride-2 transposed convolution with a 4x4 kernel made
    from the 3x3 weights (`upsampled_taps`): the same function, 16 multiply-adds per input pixel and channel
    pair instead of 36, and no 4x larger upsampled tensor (2.2x faster on CPU in fp32 and bf16). The weights
    stay DINet's 3x3 `conv`, so checkpoints and BatchNorm folding are unchanged. `published = True` runs
    DINet's interpolate-then-convolve instead (bench.py's baseline)."""

    published = False

    def __init__(self, in_features, out_features, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features)

    def forward(self, x):
        conv = self.conv
        if conv.kernel_size == (3, 3) and conv.padding == (1, 1) and not self.published:
            kernel = upsampled_taps(upsampled_taps(conv.weight, 2), 3).transpose(0, 1)  # (in, out, 4, 4)
            out = F.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)
        else:
            out = conv(F.interpolate(x, scale_factor=2))
        return F.relu(self.norm(out))


class NarrowConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same function) for a few output channels and a wide kernel, such as
    DINet's last layer (128 -> 3 channels, 7x7). oneDNN's CPU kernels pad the output channels to their vector
    width: a 3-channel convolution takes as long as a 16-channel one (measured). Here a (k x 1) column
    convolution makes k * out channels, one group per kernel column, and the groups are summed at their
    column offsets: 2.7-3x faster on CPU at mouth 64 and 256. Other settings, and `published = True`
    (bench.py's baseline), run nn.Conv2d's convolution."""

    published = False

    def forward(self, x):
        kh, kw = self.kernel_size
        plain = (self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1 and kw > 1
                 and self.padding_mode == "zeros" and not isinstance(self.padding, str))
        if self.published or not plain:
            return super().forward(x)
        ph, pw = self.padding
        out_channels = self.out_channels
        # (out, in, kh, kw) -> (kw * out, in, kh, 1): channel j * out + c holds column j of output channel c
        columns = self.weight.permute(3, 0, 1, 2).reshape(kw * out_channels, self.in_channels, kh, 1)
        z = F.conv2d(x, columns, padding=(ph, 0)).contiguous()  # (B, kw * out, H', W)
        dtype = z.dtype
        z = F.pad(z.to(torch.promote_types(dtype, torch.float32)), (pw, pw))  # sums in >= float32, as in a conv
        width = z.shape[3] - kw + 1
        out = z[:, :out_channels, :, :width]
        for j in range(1, kw):
            out = out + z[:, j * out_channels:(j + 1) * out_channels, :, j:j + width]
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.to(dtype)


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


def reformulated_layers(*networks):
    """The networks' layers that compute DINet's function another way and can switch back (`published`)."""
    return [module for network in networks for module in network.modules()
            if isinstance(module, (UpBlock2d, NarrowConv2d))]


@contextmanager
def published_layers(*networks):
    """Within it, the networks' UpBlock2d and NarrowConv2d layers compute as DINet does (interpolate, then the
    3x3 convolution; one 3-channel convolution). FLOP counts run in it, so a network's cost is DINet's count of
    it however its layers run, and FLOP/s rise with speed."""
    layers = reformulated_layers(*networks)
    before = [layer.published for layer in layers]
    for layer in layers:
        layer.published = True
    try:
        yield
    finally:
        for layer, published in zip(layers, before):
            layer.published = published
