"""FourierConv2d: large-kernel convolutions through FFTs, on CPU at inference."""
import torch
import torch.nn.functional as F
from torch import nn

from .convolution import FastConv2d, kept_per_weight, plain_settings


def _fast_length(n):
    """The smallest even length >= n made of the factors 2, 3, 5 and 7, which FFTs handle fastest."""
    while True:
        m = n
        for factor in (2, 3, 5, 7):
            while m % factor == 0:
                m //= factor
        if m == 1 and n % 2 == 0:
            return n
        n += 1


def _tiling(size, kernel, padding, limit):
    """How FourierConv2d covers one dimension: (tiles, tile, FFT length, offset). One tile when the input and
    one side's padding fit in `limit`: both sides' zero padding is then the FFT's zero tail, read circularly.
    Else overlap-save: tiles of `tile` outputs, each read from `tile + kernel - 1` inputs, whose outputs start
    at `offset` = padding in the circular result."""
    if size + padding <= limit:
        return 1, size, _fast_length(size + padding), 0
    tiles = -(-size // (limit - kernel + 1))
    tile = -(-size // tiles)
    return tiles, tile, _fast_length(tile + kernel - 1), padding


class FourierConv2d(FastConv2d):
    """nn.Conv2d (same parameters, same function) for large kernels, computed with FFTs at inference on CPU.

    A k x k convolution costs k^2 multiply-adds per pixel and channel pair; in the Fourier domain it is one
    complex product per frequency (DINet's 11x11 and 7x7 convolutions of the alignment encoder). The input is
    transformed (rfft2) in tiles of at most `LIMIT` x `LIMIT` (overlap-save), multiplied by the kernel's spectrum,
    summed over input channels as one batched complex matrix product per frequency (under bf16 autocast a real
    one in bf16, [Re X, Im X] @ [[Re K, Im K], [-Im K, Re K]]), and transformed back. The kernel's spectrum is
    computed once per weight version and kept. The errors are those of the precision used: 1e-7 of the output's
    range in float32; in bf16 smaller than a bf16 convolution's. Gradients, other devices, other settings and
    7x7 kernels in bf16 (where the FFTs do not pay) run nn.Conv2d's convolution."""

    MIN_KERNEL, MIN_IN = 7, 32  # from 3 input channels (the encoders' first 7x7 layers) the FFTs cost more
    MIN_BF16_KERNEL = 11
    LIMIT = 40                  # the tile side that ran fastest at mouth 128 and 256

    @classmethod
    def suits(cls, conv):
        (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
        return (type(conv) is nn.Conv2d and plain_settings(conv) and (kh, kw) == (2 * ph + 1, 2 * pw + 1)
                and min(kh, kw) >= cls.MIN_KERNEL and conv.in_channels >= cls.MIN_IN)

    def forward(self, x):
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        plain = plain_settings(self) and (kh, kw) == (2 * ph + 1, 2 * pw + 1)
        if not plain or torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() != 4:
            return super().forward(x)
        batch, _, height, width = x.shape
        bf16 = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                             and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        if bf16 and min(kh, kw) < self.MIN_BF16_KERNEL:
            return super().forward(x)
        precision = torch.float64 if x.dtype == torch.float64 else torch.float32  # of the FFTs
        (n1, t1, f1, o1), (n2, t2, f2, o2) = (_tiling(height, kh, ph, self.LIMIT), _tiling(width, kw, pw, self.LIMIT))
        spectrum = self._spectrum(f1, f2, precision, bf16)                # (bins, in, out), or (bins, 2 in, 2 out)
        padded = F.pad(x.to(precision), (o2, (n2 - 1) * t2 + f2 - width - o2, o1, (n1 - 1) * t1 + f1 - height - o1))
        tiles = torch.fft.rfft2(padded.unfold(2, f1, t1).unfold(3, f2, t2))     # (B, in, n1, n2, f1, f2 // 2 + 1)
        tiles = tiles.permute(4, 5, 0, 2, 3, 1).reshape(spectrum.shape[0], batch * n1 * n2, self.in_channels)
        if bf16:
            out = torch.bmm(torch.cat([tiles.real, tiles.imag], 2).to(torch.bfloat16), spectrum).to(precision)
            out = torch.complex(out[..., :self.out_channels], out[..., self.out_channels:])
        else:
            out = torch.bmm(tiles, spectrum)
        out = out.reshape(f1, f2 // 2 + 1, batch, n1, n2, self.out_channels).permute(2, 5, 3, 4, 0, 1)
        out = torch.fft.irfft2(out, s=(f1, f2))[..., o1:o1 + t1, o2:o2 + t2]    # (B, out, n1, n2, t1, t2)
        out = out.permute(0, 1, 2, 4, 3, 5).reshape(batch, self.out_channels, n1 * t1, n2 * t2)[:, :, :height, :width]
        if self.bias is not None:
            out = out + self.bias.to(precision).view(1, -1, 1, 1)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return out.to(torch.bfloat16 if bf16 else x.dtype).contiguous(memory_format=layout)

    def _spectrum(self, f1, f2, precision, bf16):
        """The kernel's spectrum per frequency for circular correlation (the kernel's centre tap moved to (0, 0)):
        complex (f1 * (f2 // 2 + 1), in, out), or for bf16 as the real block matrix (..., 2 in, 2 out)."""
        def compute():
            (kh, kw), (ph, pw) = self.kernel_size, self.padding
            kernel = torch.roll(F.pad(self.weight.detach().to(precision), (0, f2 - kw, 0, f1 - kh)), (-ph, -pw), (2, 3))
            spectrum = torch.fft.rfft2(kernel).conj().permute(2, 3, 1, 0).reshape(-1, self.in_channels, self.out_channels)
            if not bf16:
                return spectrum.contiguous()
            re, im = spectrum.real, spectrum.imag
            return torch.cat([torch.cat([re, im], 2), torch.cat([-im, re], 2)], 1).to(torch.bfloat16)
        return kept_per_weight(self, "_spectrum_of", (f1, f2, precision, bf16), compute)
