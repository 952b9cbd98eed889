"""WinogradConv2d: 3x3 convolutions of many channels by Winograd's F(4x4, 3x3), on CPU at inference."""
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from .convolution import FastConv2d, kept_per_weight, plain_settings


def winograd_matrices(dtype=torch.float64):
    """Winograd's minimal filtering F(4, 3) (Lavin and Gray, 2016), interpolation points 0, +-1, +-2 and
    infinity: (B^T (6, 6), G (6, 3), A^T (4, 6)). 4 outputs of a 3-tap correlation over 6 inputs d are
    A^T [(G g) * (B^T d)]; in 2-D, A^T [(G g G^T) * (B^T d B)] A gives a 4x4 output tile from a 6x6 input tile
    with 36 multiplications instead of 144."""
    bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
          [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
    at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    return tuple(torch.tensor(m, dtype=dtype) for m in (bt, g, at))


class WinogradConv2d(FastConv2d):
    """nn.Conv2d (same parameters, same function) for 3x3 convolutions of many channels, computed with
    Winograd's F(4x4, 3x3) at inference on CPU: a quarter of the multiplications.

    The input is cut into overlapping 6x6 tiles (channels last, zero outside) and each goes through B^T . B
    (`winograd_tiles.tiles_in`, compiled by numba: one read and one write per value); the channel sums are one
    matrix product per tile position ((tiles, in) @ (in, out), 36 in all, against the kernel transformed once
    per weight version, G . G^T, kept: 36 * in * out numbers); A^T . A takes each position's sums back to a 4x4
    output tile, with the bias (`tiles_out`). The error is a few 1e-6 of the output's range in float32 (the
    transforms' coefficients reach 8 and 1/24), ~1e-13 in float64. bf16 (too coarse for these transforms),
    gradients, other devices and other settings run nn.Conv2d's convolution."""

    # from narrower inputs the tile transforms weigh too much against the channel sums
    MIN_IN, MIN_OUT = 256, 128

    @classmethod
    def suits(cls, conv):
        return (type(conv) is nn.Conv2d and plain_settings(conv) and conv.kernel_size == (3, 3)
                and conv.padding == (1, 1) and conv.in_channels >= cls.MIN_IN and conv.out_channels >= cls.MIN_OUT)

    def forward(self, x):
        if (x.dtype not in (torch.float32, torch.float64) or x.device.type != "cpu"
                or x.dim() != 4 or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        from . import winograd_tiles  # numba: imported (and its kernels compiled or loaded) on first use only
        batch, channels, height, width = x.shape
        rows, cols = -(-height // 4), -(-width // 4)                 # output tiles
        tiles = batch * rows * cols
        kernel = self._transformed_kernel(x.dtype)                    # (36, in, out)
        transformed = x.new_empty(36, tiles, channels)
        _split(winograd_tiles.tiles_in, tiles, x.permute(0, 2, 3, 1).contiguous().numpy(), transformed.numpy(),
               rows, cols)
        sums = torch.bmm(transformed, kernel)                         # (36, tiles, out)
        bias = self.bias if self.bias is not None else x.new_zeros(self.out_channels)
        out = x.new_empty(batch, height, width, self.out_channels)
        _split(winograd_tiles.tiles_out, tiles, sums.numpy(), bias.detach().to(x.dtype).numpy(), out.numpy(), rows,
               cols)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return out.permute(0, 3, 1, 2).contiguous(memory_format=layout)

    def _transformed_kernel(self, dtype):
        """The kernel transformed, G . G^T: (36 = 6 columns x 6 rows, in, out) in `dtype`, kept per weight
        version."""
        def transform():
            _, g, _ = winograd_matrices()
            kernel = torch.einsum("ri,ocij,sj->srco", g, self.weight.detach().double(), g)
            return kernel.reshape(36, self.in_channels, self.out_channels).to(dtype).contiguous()
        return kept_per_weight(self, "_transformed", (dtype,), transform)


def load_winograd_kernels():
    """Import WinogradConv2d's compiled tile transforms and run each once in float32: numba loads them from its
    cache or compiles them, so that a generator's first call need not wait for it."""
    from . import winograd_tiles
    transformed = torch.zeros(36, 1, 1)
    winograd_tiles.tiles_in(torch.zeros(1, 4, 4, 1).numpy(), transformed.numpy(), 1, 1, 0, 1)
    winograd_tiles.tiles_out(transformed.numpy(), torch.zeros(1).numpy(), torch.zeros(1, 4, 4, 1).numpy(), 1, 1, 0, 1)


_POOL = None


def _split(function, tiles, *args):
    """function(*args, first, last) over tiles 0..tiles-1, split between torch's intra-op threads (the numba
    kernels release the GIL): one call when the caller runs on one thread, as dubbing's generator streams do."""
    global _POOL
    parts = max(1, min(torch.get_num_threads(), tiles // 64))
    if parts == 1:
        return function(*args, 0, tiles)
    if _POOL is None:
        _POOL = ThreadPoolExecutor(os.cpu_count() or 1, "winograd-tiles")
    bounds = [tiles * part // parts for part in range(parts + 1)]
    for done in [_POOL.submit(function, *args, first, last) for first, last in zip(bounds, bounds[1:])]:
        done.result()
