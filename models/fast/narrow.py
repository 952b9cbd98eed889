"""NarrowConv2d: convolutions to a few output channels with a wide kernel, as column convolutions."""
import torch
import torch.nn.functional as F
from torch import nn

from .convolution import FastConv2d, plain_settings


class NarrowConv2d(FastConv2d):
    """nn.Conv2d (same parameters, same function) for a few output channels and a wide kernel, such as DINet's
    last layer (128 -> 3 channels, 7x7): oneDNN's CPU kernels pad the output channels to their vector width, so a
    3-channel convolution takes as long as a 16-channel one. Here a (k x 1) column convolution makes k * out
    channels, one group per kernel column, and the groups are summed at their column offsets. Other settings run
    nn.Conv2d's convolution."""

    MAX_OUT = 4

    @classmethod
    def suits(cls, conv):
        return (type(conv) is nn.Conv2d and plain_settings(conv) and conv.out_channels <= cls.MAX_OUT
                and conv.kernel_size[1] > 1)

    def forward(self, x):
        kh, kw = self.kernel_size
        if not plain_settings(self) or kw == 1:
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
