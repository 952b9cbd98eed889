"""Inference-only speed (models/fast/): each fast convolution is the convolution it replaces, and the network
optimize_for_inference makes is the trained network, every lab, whole or from a row on."""
import pytest
import torch
import torch.nn.functional as F
from test_models import forward_and_gradients
from torch import nn

from common.geometry import CropGeometry, paste_mask
from config.labs import LAB_PRESETS
from dubbing.pipeline import first_pasted_row
from engine.compare import lab_config
from models import DINet
from models.blocks import SameBlock
from models.fast import (
    FourierConv2d,
    NarrowConv2d,
    WinogradConv2d,
    optimize_for_inference,
)
from models.fast.split import SplitSameBlock


@pytest.mark.parametrize("kernel,padding", [(7, 3), ((5, 3), (2, 1)), (3, 0)])
def test_narrow_convolution_is_the_convolution(kernel, padding):
    torch.manual_seed(0)
    conv = NarrowConv2d(8, 3, kernel_size=kernel, padding=padding).double()
    published = lambda x: F.conv2d(x, conv.weight, conv.bias, padding=padding)
    got, expected = forward_and_gradients(conv, torch.randn(2, 8, 11, 9, dtype=torch.float64), published)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_narrow_convolution_under_bf16_autocast_gives_bf16_near_fp32():
    torch.manual_seed(0)
    conv = NarrowConv2d(128, 3, kernel_size=7, padding=3)
    x = torch.randn(2, 128, 24, 20)
    with torch.no_grad():
        reference = F.conv2d(x, conv.weight, conv.bias, padding=3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = conv(x.contiguous(memory_format=torch.channels_last))
    assert output.dtype == torch.bfloat16
    assert (output.float() - reference).abs().max() < 0.02 * reference.abs().max()


@pytest.mark.parametrize("height, width, kernel", [
    (26, 20, 11),   # mouth 64: one tile each way, both paddings in the FFT's zero tail
    (104, 80, 11),  # mouth 256: overlap-save tiles each way
    (9, 70, 11),    # one tile down, tiles across
    (13, 10, 7), (1, 1, 11)])
def test_fourier_convolution_is_the_convolution(height, width, kernel):
    torch.manual_seed(0)
    conv = FourierConv2d(3, 4, kernel_size=kernel, padding=kernel // 2).double()
    x = torch.randn(2, 3, height, width, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        output = conv(x)
        expected = F.conv2d(x, conv.weight, conv.bias, padding=kernel // 2)
    assert output.shape == expected.shape and output.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(output, expected, rtol=1e-10, atol=1e-12)


def test_fourier_convolution_follows_its_weights_and_leaves_training_to_the_convolution():
    torch.manual_seed(0)
    conv = FourierConv2d(4, 4, kernel_size=11, padding=5, bias=False).double()
    x = torch.randn(1, 4, 16, 12, dtype=torch.float64)
    with torch.no_grad():
        first = conv(x)
        conv.weight.mul_(-2)  # in place, as an optimiser step or load_state_dict changes it
        assert torch.allclose(conv(x), -2 * first, rtol=1e-10, atol=1e-12)
    spectrum = conv._spectrum_of
    output = conv(x)  # gradients on: the direct convolution, differentiable, no spectrum computed
    output.sum().backward()
    assert conv.weight.grad is not None and conv._spectrum_of is spectrum
    assert torch.allclose(output, -2 * first, rtol=1e-10, atol=1e-12)


def test_fourier_convolution_under_bf16_autocast_is_closer_than_a_bf16_convolution():
    torch.manual_seed(0)
    # DINet's 11x11 and 128-channel 7x7 layers are swapped for it; not the encoders' first (3 channels in)
    assert FourierConv2d.suits(SameBlock(128, 128, kernel_size=11, padding=5).conv)
    assert FourierConv2d.suits(SameBlock(128, 128, kernel_size=7, padding=3).conv)
    assert not FourierConv2d.suits(SameBlock(3, 64, kernel_size=7, padding=3).conv)
    conv = FourierConv2d.of(SameBlock(128, 128, kernel_size=11, padding=5).conv)
    x = torch.randn(4, 128, 26, 20).relu()
    with torch.no_grad():
        reference = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = conv(x)
            direct = F.conv2d(x, conv.weight, conv.bias, padding=5)
    assert output.dtype == torch.bfloat16
    error = lambda y: ((y.double() - reference).abs().max() / reference.abs().max()).item()
    assert error(output) < max(error(direct), 5e-3)
    seven = FourierConv2d(128, 128, kernel_size=7, padding=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(seven(x), F.conv2d(x, seven.weight, seven.bias, padding=3))  # bf16 7x7: direct
    assert getattr(seven, "_spectrum_of", None) is None


@pytest.mark.parametrize("height, width, channels_last, bias", [
    (26, 20, True, True),    # mouth 64's appearance blocks: 7 x 5 output tiles, the last row of tiles cut
    (104, 80, True, True),   # mouth 256's: 26 x 20 tiles
    (9, 13, False, False),   # NCHW in, NCHW out; tiles cut both ways
    (1, 1, True, True), (4, 4, False, True)])
def test_winograd_convolution_is_the_convolution(height, width, channels_last, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 260, 3, padding=1, bias=bias).double()
    winograd = WinogradConv2d.of(conv)
    x = torch.randn(2, 256, height, width, dtype=torch.float64)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=layout)
    with torch.no_grad():
        output, expected = winograd(x), conv(x)
        assert winograd._transformed is not None  # computed by Winograd's algorithm, not the fallback
        output32 = WinogradConv2d.of(conv.float())(x.float())
    assert output.shape == expected.shape and output.is_contiguous(memory_format=layout)
    assert torch.allclose(output, expected, rtol=1e-10, atol=1e-11)
    assert (output32.double() - expected).abs().max() < 2e-5 * expected.abs().max()


def test_winograd_tile_transforms_are_the_matrices():
    """models/fast/winograd_tiles.py writes B^T d B and A^T S A out term by term: they are winograd_matrices()'s."""
    from models.fast import winograd_tiles
    from models.fast.winograd import winograd_matrices
    bt, _, at = winograd_matrices()
    torch.manual_seed(0)
    x = torch.randn(1, 6, 6, 3, dtype=torch.float64)  # one tile's window is rows/columns -1..4: pad by one
    transformed = torch.empty(36, 4, 3, dtype=torch.float64)  # 2 x 2 tiles of a 6 x 6 input
    winograd_tiles.tiles_in(x.numpy(), transformed.numpy(), 2, 2, 0, 4)
    window = F.pad(x[0].permute(2, 0, 1), (1, 1, 1, 1))[:, :6, :6]  # tile (0, 0), (3, 6, 6)
    expected = bt @ window @ bt.T                                   # [ch, i, j]
    assert torch.allclose(transformed[:, 0].view(6, 6, 3).permute(2, 1, 0), expected, atol=1e-12)
    sums = torch.randn(36, 4, 3, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    out = torch.empty(1, 6, 6, 3, dtype=torch.float64)  # the tiles of the last row and column are cut to 2
    winograd_tiles.tiles_out(sums.numpy(), bias.numpy(), out.numpy(), 2, 2, 0, 4)
    for tile, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        tile_sums = sums[:, tile].view(6, 6, 3).permute(2, 1, 0)   # [ch, i, j]
        expected = (at @ tile_sums @ at.T).permute(1, 2, 0) + bias  # [a, e, ch]
        rows, cols = min(4, 6 - 4 * r), min(4, 6 - 4 * c)
        assert torch.allclose(out[0, 4 * r:4 * r + rows, 4 * c:4 * c + cols], expected[:rows, :cols], atol=1e-12)


def test_winograd_tiles_split_between_threads_are_the_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 128, 3, padding=1).double()
    x = torch.randn(6, 256, 26, 19, dtype=torch.float64)  # 210 tiles: 3 parts on 3 threads
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with torch.no_grad():
            output, expected = WinogradConv2d.of(conv)(x), conv(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(output, expected, rtol=1e-10, atol=1e-11)


def test_winograd_convolution_follows_its_weights_and_leaves_training_and_bf16_to_the_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).double()
    assert WinogradConv2d.suits(conv) and WinogradConv2d.suits(torch.nn.Conv2d(512, 128, 3, padding=1))
    assert not WinogradConv2d.suits(torch.nn.Conv2d(128, 128, 3, padding=1))
    assert not WinogradConv2d.suits(torch.nn.Conv2d(256, 256, 3, padding=1, stride=2))
    winograd = WinogradConv2d.of(conv)
    assert winograd.weight is conv.weight and winograd.bias is conv.bias  # shared, so checkpoints are unchanged
    x = torch.randn(1, 256, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        first = winograd(x)
        conv.weight.mul_(-2)  # in place, as an optimiser step or load_state_dict changes it
        conv.bias.mul_(-2)
        assert torch.allclose(winograd(x), -2 * first, rtol=1e-10, atol=1e-11)
    transformed = winograd._transformed
    output = winograd(x)  # gradients on: the direct convolution, differentiable, no transform computed
    output.sum().backward()
    assert conv.weight.grad is not None and winograd._transformed is transformed
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert winograd.float()(x.float()).dtype == torch.bfloat16  # autocast's bf16 convolution


def test_optimize_for_inference_runs_the_wide_3x3_convolutions_with_winograd_and_leaves_the_network():
    network = DINet()
    before = {name: type(m) for name, m in network.named_modules()}
    fast = optimize_for_inference(network, "cpu").network
    swapped = {name for name, m in fast.named_modules() if isinstance(m, WinogradConv2d)}
    # the two appearance blocks (4 residual blocks of 2 convolutions each), and the 512 -> 128 ones that read
    # source and reference features (the alignment encoder's, split: its 256 -> 128 source half) and source and
    # warped features (decoder)
    assert len(swapped) == 18 and {"trans_conv.0.source", "out_conv.0.conv"} <= swapped
    assert isinstance(fast.trans_conv[0], SplitSameBlock) and type(fast.trans_conv[0].reference) is nn.Conv2d
    assert isinstance(fast.out_conv[4], NarrowConv2d) and isinstance(fast.trans_conv[1].conv, FourierConv2d)
    assert {name: type(m) for name, m in network.named_modules()} == before  # the caller's network is unchanged
    assert network.training


@pytest.mark.parametrize("lab", list(LAB_PRESETS))
def test_optimized_generator_is_the_network_for_every_lab(lab):
    """Dubbing runs the copy optimize_for_inference makes, its references encoded once per video: every lab's
    output stays the network's own, in either memory layout, whole or from dubbing's first pasted row on."""
    torch.manual_seed(0)
    network = DINet.from_config(lab_config(lab, 80, "mel")).eval()
    geometry = CropGeometry(64)
    masked = torch.rand(3, 3, geometry.height, geometry.width)
    reference = torch.rand(1, 15, geometry.height, geometry.width)
    audio = torch.randn(3, 80, 5)
    with torch.no_grad():
        expected = network(masked, reference.expand(3, -1, -1, -1), audio)
    first_row = first_pasted_row(paste_mask(geometry))  # dubbing's: the decoder runs on the rows pasted
    for channels_last in (False, True):
        fast = optimize_for_inference(network, "cpu", channels_last=channels_last)
        state = fast.encode_reference(reference)
        assert (fast.generate(masked, audio, state) - expected).abs().max() < 1e-5
        rows = fast.generate(masked, audio, state, first_row)
        assert rows.shape == expected.shape and rows.dtype == torch.float32 and not rows[:, :, :first_row].any()
        assert (rows[:, :, first_row:] - expected[:, :, first_row:]).abs().max() < 1e-5
    # DINet's alignment: the reference half of the alignment encoder's first convolution is computed once
    assert (state.alignment is not None) == (network.config.alignment == "concat" and hasattr(network, "trans_conv"))
