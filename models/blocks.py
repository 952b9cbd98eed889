"""Convolution blocks of the DINet generator, one class per kind for 1-D and 2-D alike.

Attribute names (`conv`, `norm`, `conv1`, `norm1`, `channel_conv`, ...) are the published DINet's,
so its checkpoints load with strict=True. BatchNorm is plain `nn.BatchNorm{1,2}d`; the engine turns
it into `nn.SyncBatchNorm` under torchrun. Faster kernels for inference are swapped in by
`models.fast.optimize_for_inference`, never built here.
"""
import torch
import torch.nn.functional as F
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def fresh_relu(x):
    """ReLU of a tensor nothing else holds (a layer's fresh output): in place when no gradient is recorded, which
    saves allocating a new tensor per activation at inference."""
    return F.relu(x, inplace=not torch.is_grad_enabled())


class SameBlock(nn.Module):
    """conv -> BN -> ReLU at the same resolution (stride 2 makes it DINet's DownBlock)."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, stride=1, dims=2):
        super().__init__()
        self.conv = _CONV[dims](in_features, out_features, kernel_size=kernel_size, padding=padding, stride=stride)
        self.norm = _NORM[dims](out_features)

    def forward(self, x):
        return fresh_relu(self.norm(self.conv(x)))


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

    `transposed` (the default, for 3x3 kernels with padding 1): the upsampling and the convolution run as one
    stride-2 transposed convolution with a 4x4 kernel made from the 3x3 weights (`upsampled_taps`), the same
    function with 16 multiply-adds per input pixel and channel pair instead of 36 and no 4x larger upsampled
    tensor; it pays in training and at inference alike. The weights stay DINet's 3x3 `conv`, so checkpoints and
    BatchNorm folding are unchanged. transposed=False is DINet's interpolate-then-convolve, the plain fallback
    (models/formulations.py)."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, transposed=True):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features)
        self.transposed = transposed

    def forward(self, x):
        conv = self.conv
        if self.transposed and conv.kernel_size == (3, 3) and conv.padding == (1, 1):
            kernel = upsampled_taps(upsampled_taps(conv.weight, 2), 3).transpose(0, 1)  # (in, out, 4, 4)
            out = F.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)
        else:
            out = conv(F.interpolate(x, scale_factor=2))
        return fresh_relu(self.norm(out))


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
        out = self.norm1(x)
        out = self.conv1(F.relu(out) if out is x else fresh_relu(out))  # x is the shortcut: never in place
        out = self.conv2(fresh_relu(self.norm2(out)))
        shortcut = x if self.channel_conv is None else self.channel_conv(x)
        return out + shortcut


def _input_rows(layer, first):
    """For a decoder layer whose output is wanted from row `first` down: (the row its input is needed from, the
    row its output then starts at), or None for a layer it does not know (the decoder then runs whole). A
    convolution's top zero padding is wrong inside a cut, but only in the rows above those wanted."""
    if isinstance(layer, (nn.Sigmoid, nn.ReLU, nn.Identity)):
        return first, first
    if isinstance(layer, UpBlock2d) and layer.conv.kernel_size == (3, 3) and layer.conv.padding == (1, 1):
        start = max(0, first // 2 - 1)  # output row 2i reads input rows i - 1 and i, row 2i + 1 rows i and i + 1
        return start, 2 * start
    convolutions = ([layer.conv1, layer.conv2] if isinstance(layer, ResBlock)
                    else [layer.conv] if isinstance(layer, SameBlock) else [layer])
    if all(isinstance(conv, nn.Conv2d) and conv.stride == (1, 1) and conv.padding_mode == "zeros"
           and not isinstance(conv.padding, str) and conv.kernel_size[0] == 2 * conv.padding[0] + 1
           for conv in convolutions):
        start = max(0, first - sum(conv.padding[0] for conv in convolutions))
        return start, start
    return None


def decode_rows(decoder, features, first_row):
    """decoder(features)[:, :, first_row:] for a Sequential of same-size convolution blocks and x2 upsampling
    blocks (DINet's `out_conv`), each layer run on the rows that the rows wanted from it depend on."""
    layers, plan, first = list(decoder), [], first_row
    for layer in reversed(layers):  # from the output back: (output start, wanted output row) per layer
        rows = _input_rows(layer, first)
        if rows is None:
            return decoder(features)[:, :, first_row:]
        plan.insert(0, (rows[1], first))
        first = rows[0]
    x = features[:, :, first:]
    for layer, (start, wanted) in zip(layers, plan):
        x = layer(x)[:, :, wanted - start:]
    return x
