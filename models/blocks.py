"""Convolution blocks of the DINet generator, one class per kind for 1-D and 2-D alike.

Attribute names (`conv`, `norm`, `conv1`, `norm1`, `channel_conv`, ...) are the published DINet's,
so its checkpoints load with strict=True. BatchNorm is plain `nn.BatchNorm{1,2}d`; the engine turns
it into `nn.SyncBatchNorm` under torchrun.
"""
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def fresh_relu(x, published=False):
    """ReLU of a tensor nothing else holds (a layer's fresh output): in place when no gradient is recorded. At
    inference that saves a new tensor per activation (at mouth 64, batch 12, the largest are 51 MB, each a fresh
    mmap the kernel zero-fills): the generator ran 4% faster on 2 cores (87.6 -> 84.1 ms/frame) with no page
    faults left in a call (16901 before). `published`: into a new tensor, as DINet does (bench.py's baseline)."""
    return F.relu(x, inplace=not (published or torch.is_grad_enabled()))


class SameBlock(nn.Module):
    """conv -> BN -> ReLU at the same resolution (stride 2 makes it DINet's DownBlock). Its 2-D convolutions
    with large kernels between many channels (DINet's 11x11 and 7x7 ones in the alignment encoder) are
    FourierConv2d."""

    published = False  # see fresh_relu

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, stride=1, dims=2):
        super().__init__()
        conv = FourierConv2d if dims == 2 and FourierConv2d.suits(in_features, kernel_size) else _CONV[dims]
        self.conv = conv(in_features, out_features, kernel_size=kernel_size, padding=padding, stride=stride)
        self.norm = _NORM[dims](out_features)

    def forward(self, x):
        return fresh_relu(self.norm(self.conv(x)), self.published)


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
        return fresh_relu(self.norm(out), self.published)


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


def _kept_per_weight(conv, name, key, compute):
    """compute(), kept on `conv` as attribute `name` while its weight is the same tensor at the same version
    (an optimiser step or load_state_dict changes it in place) and `key` is the same."""
    key = (conv.weight.data_ptr(), conv.weight._version, *key)
    cached = getattr(conv, name, None)
    if cached is None or cached[0]() is not conv.weight or cached[1] != key:
        cached = (weakref.ref(conv.weight), key, compute())
        setattr(conv, name, cached)
    return cached[2]


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


class FourierConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same function) for large kernels, computed with FFTs at inference on CPU.

    A k x k convolution costs k^2 multiply-adds per pixel and channel pair; in the Fourier domain it is one
    complex product per frequency. DINet's two 11x11 convolutions (128 -> 128 channels at a quarter of the crop's
    resolution) were a fifth of the generator's time at mouth 64. Here the input is transformed (rfft2) in tiles
    of at most `LIMIT` x `LIMIT` (overlap-save), multiplied by the kernel's spectrum, summed over input channels
    as one batched complex matrix product per frequency (under bf16 autocast a real one in bf16, [Re X, Im X] @
    [[Re K, Im K], [-Im K, Re K]]), and transformed back. The kernel's spectrum is computed once per weight
    version and kept (30-100 MB per layer). The errors are those of the precision used: 1e-7 of the output's
    range in float32; in bf16 smaller than a bf16 convolution's (measured 1-2e-3 against 4-5e-3). It is used
    where gradients are off and the tensor is on the CPU: training, and GPUs (cuDNN picks its own algorithms),
    run nn.Conv2d's convolution, as do other settings and `published = True` (bench.py's baseline).

    Measured on one AVX2 core, ms per call against oneDNN's direct convolution (128 -> 128 channels): 11x11 at
    26x20, batch 12: 47-49 / 431-498; 7x7 at 13x10, batch 12 (mouth 64): 17-18 / 38-44; 7x7 at 26x20, batch 3:
    25-26 / 45-46; 7x7 at 52x40, batch 1 (mouth 256): 23-25 / 48-51. The complex product ran 20-35% faster than
    the real block one (no real/imaginary split and join). From 3 channels (the encoders' first 7x7 layers) the
    FFTs cost more than the products save (124-220 / 32 ms at 104x80): `suits`. In bf16 the 7x7 layers keep
    the direct convolution, as before these measurements (an earlier session found 7x7 layers through FFTs
    slower at mouth 256 with the real product; bf16 is emulated on these cores, so not measured again)."""

    published = False
    MIN_KERNEL, MIN_IN = 7, 32
    MIN_BF16_KERNEL = 11
    LIMIT = 40       # measured at mouth 128 and 256 against 24, 32, 48, 64

    @classmethod
    def suits(cls, in_channels, kernel_size):
        return kernel_size >= cls.MIN_KERNEL and in_channels >= cls.MIN_IN

    def forward(self, x):
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        plain = (self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
                 and not isinstance(self.padding, str) and (kh, kw) == (2 * ph + 1, 2 * pw + 1))
        if self.published or not plain or torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() != 4:
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
        return _kept_per_weight(self, "_spectrum_of", (f1, f2, precision, bf16), compute)


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


class WinogradConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same function) for 3x3 convolutions of many channels, computed with
    Winograd's F(4x4, 3x3) at inference on CPU: a quarter of the multiplications.

    The input is cut into overlapping 6x6 tiles (channels last, zero outside) and each goes through B^T . B
    (`winograd_tiles.tiles_in`, compiled by numba: one read and one write per value); the channel sums are one
    matrix product per tile position ((tiles, in) @ (in, out), 36 in all, against the kernel transformed once
    per weight version, G . G^T, kept: 36 * in * out numbers); A^T . A takes each position's sums back to a 4x4
    output tile, with the bias (`tiles_out`). DINet's 256-channel residual blocks (8 per frame in the second
    appearance block, the generator's largest cost at every mouth size) ran 1.4-1.7x faster than oneDNN's
    direct convolution on one AVX2 core with the transforms in PyTorch operations (62-70 against 104-116 ms at
    mouth 64, batch 12; 89-99 against 114-137 ms at mouth 256, batch 1), and the compiled transforms took
    another quarter off (61-73 -> 45-50 ms, measured side by side). The error is a few 1e-6 of the output's
    range in float32 (the transforms' coefficients reach 8 and 1/24), ~1e-13 in float64. bf16 (too coarse for
    these transforms), gradients, other devices and other settings run nn.Conv2d's convolution. `published =
    True` (bench.py's baseline) does too."""

    published = False
    # Measured on one AVX2 core, ms per call, Winograd against oneDNN: 256 -> 128 at 26x20, batch 12: 38-42 / 52-53;
    # 512 -> 128: 78-80 / 104-109 (at 104x80, batch 1: 78-80 / 121-124); 128 -> 128 at 52x40: 82-100 / 85-104, a
    # tie (a narrow input makes the tile transforms weigh more against the channel sums).
    MIN_IN, MIN_OUT = 256, 128

    @classmethod
    def suits(cls, conv):
        return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros" and conv.in_channels >= cls.MIN_IN
                and conv.out_channels >= cls.MIN_OUT)

    @classmethod
    def of(cls, conv):
        """A WinogradConv2d holding `conv`'s parameters (shared, not copied)."""
        winograd = cls(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None,
                       device="meta")
        winograd.weight, winograd.bias = conv.weight, conv.bias
        return winograd

    def forward(self, x):
        if (self.published or x.dtype not in (torch.float32, torch.float64) or x.device.type != "cpu"
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
        return _kept_per_weight(self, "_transformed", (dtype,), transform)


def load_winograd_kernels():
    """Import WinogradConv2d's compiled tile transforms and run each once in float32: numba loads them from its
    cache (~1 s, most of it the first call) or compiles them (~5 s). Dubbing does it in a thread while the
    decoder reaches the reference frames, so that the generator's first call does not wait for it."""
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


class ResBlock(nn.Module):
    """Pre-activation residual block: BN -> ReLU -> conv -> BN -> ReLU -> conv, plus the input."""

    published = False  # see fresh_relu

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
        out = self.conv1(fresh_relu(out, self.published or out is x))  # x is the shortcut: never in place
        out = self.conv2(fresh_relu(self.norm2(out), self.published))
        shortcut = x if self.channel_conv is None else self.channel_conv(x)
        return out + shortcut


def reformulated_layers(*networks):
    """The networks' layers that compute DINet's function another way and can switch back (`published`)."""
    return [module for network in networks for module in network.modules()
            if isinstance(module, (UpBlock2d, NarrowConv2d, FourierConv2d, WinogradConv2d, SameBlock, ResBlock))]


@contextmanager
def published_layers(*networks):
    """Within it, the networks' UpBlock2d, NarrowConv2d, FourierConv2d and WinogradConv2d layers compute as
    DINet does (interpolate, then the 3x3 convolution; one 3-channel convolution; direct convolutions; and
    blocks their ReLUs into new tensors). FLOP counts run in it, so a network's cost is DINet's count of
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
