"""The generator is the published DINet: layout, numerics, and what the lab flags change."""
import json
import os

import pytest
import torch

from conftest import ROOT, SHARED
import torch.nn.functional as F

from models import AdaAT, DINet, Discriminator, GeneratorConfig
from models.blocks import FourierConv2d, NarrowConv2d, ResBlock, SameBlock, UpBlock2d, WinogradConv2d, fresh_relu
from models.checkpoint import generator_config_of, load_network

FIXTURES = os.path.join(SHARED, "fixtures")
needs_fixtures = pytest.mark.needs_shared("fixtures")


def shapes(module):
    return {key: list(value.shape) for key, value in module.state_dict().items()}


@needs_fixtures
def test_lab1_has_the_published_parameter_names_and_shapes():
    with open(os.path.join(FIXTURES, "dinet_state_dict_shapes.json")) as f:
        published = json.load(f)
    assert shapes(DINet(3, 15, 29)) == published["net_g DINet(3,15,29)"]
    assert shapes(Discriminator(3, 64, 4, 256)) == published["net_dI Discriminator(3,64,4,256)"]
    assert shapes(Discriminator(15, 64, 4, 256)) == published["net_dV Discriminator(15,64,4,256)"]


def test_lab1_parameter_count_is_dinets():
    assert sum(p.numel() for p in DINet(3, 15, 29).parameters()) == 19_190_275  # 19.19 M, DINet's count


@needs_fixtures
def test_adaat_reproduces_the_published_output():
    reference = torch.load(os.path.join(FIXTURES, "adaat_reference.pt"), weights_only=False)
    adaat = AdaAT(256, 256)
    adaat.load_state_dict(reference["state_dict"], strict=True)
    with torch.no_grad():
        output = adaat(reference["feature_map"], reference["para_code"])
    assert (output - reference["output"]).abs().max() < 1e-5


@needs_fixtures
def test_lab1_generator_reproduces_the_published_output_and_loads_with_module_prefix():
    reference = torch.load(os.path.join(FIXTURES, "dinet_lab1_reference.pt"), weights_only=False)
    weights = {"module." + key: value.float() for key, value in reference["state_dict_fp16"].items()}
    checkpoint = {"epoch": 1, "state_dict": {"net_g": weights}}  # as DINet's DataParallel run saves it
    assert generator_config_of(checkpoint) == GeneratorConfig(3, 15, 29)
    generator = DINet(3, 15, 29)
    load_network(generator, checkpoint, "net_g", "published.pth", "--coarse_model_path")
    generator.eval()
    with torch.no_grad():
        output = generator(reference["source_image_masked"], reference["reference_images"], reference["audio_feature"])
    assert (output - reference["output"]).abs().max() < 1e-5


def test_adaat_keeps_the_published_channel_blending():
    """With an identity transform (all-zero code layers: scale 1, angle 0, shift 0), the published AdaAT
    still mixes neighbouring channels, because its grid uses the align-corners convention while
    grid_sample runs without it. A port that 'fixed' this would not match the published weights."""
    adaat = AdaAT(8, 4)
    for parameter in adaat.parameters():
        torch.nn.init.zeros_(parameter)
    features = torch.randn(1, 4, 6, 5)
    output = adaat(features, torch.randn(1, 8))
    assert not torch.allclose(output, features, atol=1e-3)
    nudged = features.clone()
    nudged[:, 0] += 1.0
    assert (adaat(nudged, torch.randn(1, 8))[:, 1] - output[:, 1]).abs().max() > 1e-3  # channel 0 leaks into 1


def test_lab2_adds_one_same_block_to_both_image_encoders():
    lab1, lab2 = shapes(DINet(3, 15, 29)), shapes(DINet(3, 15, 29, extra_same_block=True))
    added = set(lab2) - set(lab1)
    assert set(lab1) <= set(lab2)
    assert {key.split(".")[0] + "." + key.split(".")[1] for key in added} == {"source_in_conv.3", "ref_in_conv.3"}
    assert lab2["source_in_conv.3.conv.weight"] == [256, 256, 3, 3]


def test_extra_same_block_is_read_back_from_weights_alone():
    weights = DINet(3, 15, 80, extra_same_block=True).state_dict()
    config = generator_config_of({"state_dict": {"net_g": weights}})
    assert config.extra_same_block and config.audio_channel == 80


@pytest.mark.parametrize("mouth_size,height,width", [(64, 104, 80), (128, 208, 160), (256, 416, 320)])
def test_generator_output_has_the_face_crop_shape_and_each_sample_is_its_own(mouth_size, height, width):
    """Each face of a batch comes from its own inputs alone: a reshape that mixes samples (in the warp, the
    audio encoder or a layout change) makes a batched face differ from the same face made alone."""
    torch.manual_seed(0)
    generator = DINet(3, 15, 29).eval()
    inputs = torch.rand(2, 3, height, width), torch.rand(2, 15, height, width), torch.randn(2, 29, 5)
    with torch.no_grad():
        out = generator(*inputs)
        alone = generator(*(tensor[1:] for tensor in inputs))
    assert out.shape == (2, 3, height, width)
    assert (out[1] - alone[0]).abs().max() < 1e-5 < (out[0] - out[1]).abs().max()


def test_unavailable_architecture_choice_is_a_clear_error():
    with pytest.raises(ValueError, match="--warp 'nothing' is not available"):
        GeneratorConfig(warp="nothing")


def adaat_pair(para_ch, feature_ch, dtype=torch.float32, seed=0):
    """The published AdaAT and the default (channel-pair) one with the same weights."""
    torch.manual_seed(seed)
    published = AdaAT(para_ch, feature_ch, implementation="published").to(dtype)
    fast = AdaAT(para_ch, feature_ch).to(dtype)
    fast.load_state_dict(published.state_dict())
    return published, fast


def test_default_adaat_is_the_channel_pair_formulation():
    assert AdaAT(8, 4).implementation == "channel_pair"
    with pytest.raises(ValueError, match="choose one of"):
        AdaAT(8, 4, implementation="nothing")


@needs_fixtures
def test_channel_pair_adaat_computes_the_published_function_on_the_reference_fixture():
    """Same weights and inputs, same machine: within 1e-5 of the published 3-D grid_sample formulation, and
    no further from the stored published output than the published code itself is on this machine (AdaAT's
    output moves by ~3e-5 when its code moves by one float32 ulp, so BLAS summation order alone separates
    machines by that much)."""
    reference = torch.load(os.path.join(FIXTURES, "adaat_reference.pt"), weights_only=False)
    outputs = {}
    for implementation in ("published", "channel_pair"):
        adaat = AdaAT(256, 256, implementation=implementation)
        adaat.load_state_dict(reference["state_dict"], strict=True)
        with torch.no_grad():
            outputs[implementation] = adaat(reference["feature_map"], reference["para_code"])
    assert (outputs["channel_pair"] - outputs["published"]).abs().max() < 1e-5
    published_error = (outputs["published"] - reference["output"]).abs().max()
    assert (outputs["channel_pair"] - reference["output"]).abs().max() <= published_error + 1e-5


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_pair_adaat_matches_the_published_forward_and_gradients(channels_last):
    """float64, so any difference is a different function, not rounding: output, input and code gradients
    and every parameter's gradient agree; channels_last input gives the same numbers in the same layout."""
    published, fast = adaat_pair(16, 32, torch.float64)
    features = torch.randn(3, 32, 9, 7, dtype=torch.float64)
    code = torch.randn(3, 16, dtype=torch.float64)
    weights = torch.randn(3, 32, 9, 7, dtype=torch.float64)
    results = []
    for adaat, fmt in ((published, torch.contiguous_format),
                       (fast, torch.channels_last if channels_last else torch.contiguous_format)):
        x = features.clone(memory_format=fmt).requires_grad_()
        c = code.clone().requires_grad_()
        output = adaat(x, c)
        assert output.is_contiguous(memory_format=fmt)
        (output * weights).sum().backward()
        results.append([output, x.grad, c.grad] + [p.grad for p in adaat.parameters()])
    for expected, got in zip(*results):
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-11)


def test_channel_pair_adaat_matches_the_published_one_in_float32():
    published, fast = adaat_pair(256, 256)
    features, code = torch.randn(2, 256, 26, 20), torch.randn(2, 256)
    with torch.no_grad():
        assert (fast(features, code) - published(features, code)).abs().max() < 1e-5


def test_channel_pair_adaat_under_bf16_autocast_stays_near_fp32():
    """Under autocast it samples in fp32 (grid_sample is an fp32 op there): only the bf16 linear layers differ."""
    _, fast = adaat_pair(64, 64)
    features, code = torch.randn(2, 64, 13, 10), torch.randn(2, 64)
    with torch.no_grad():
        reference = fast(features, code)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = fast(features.bfloat16(), code)
    assert output.dtype == torch.float32
    assert (output - reference).abs().mean() < 0.05 * reference.abs().mean()


def forward_and_gradients(module, inputs, function, memory_format=torch.contiguous_format):
    """(output, input gradient, parameter gradients) of module(x) and of function(x), in float64."""
    weights = None
    results = []
    for run in (module, function):
        module.zero_grad()
        x = inputs.clone(memory_format=memory_format).requires_grad_()
        output = run(x)
        weights = torch.randn_like(output) if weights is None else weights
        (output * weights).sum().backward()
        results.append([output, x.grad] + [p.grad.clone() for p in module.parameters()])
    return results


@pytest.mark.parametrize("channels_last", [False, True])
def test_up_block_is_nearest_upsampling_then_its_convolution(channels_last):
    """The transposed-convolution form computes DINet's interpolate -> conv -> BN -> ReLU: the same output,
    input and weight gradients in float64 (a wrong tap, or a tap on the wrong side, fails by O(1))."""
    torch.manual_seed(0)
    block = UpBlock2d(6, 5).double()
    block.norm.eval()
    block.norm.running_mean.normal_()
    published = lambda x: F.relu(block.norm(block.conv(F.interpolate(x, scale_factor=2))))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    got, expected = forward_and_gradients(block, torch.randn(2, 6, 7, 5, dtype=torch.float64), published, fmt)
    assert got[0].shape == (2, 5, 14, 10)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


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
    block = SameBlock(128, 128, kernel_size=11, padding=5)
    assert isinstance(block.conv, FourierConv2d)  # DINet's 11x11 layers are built as FourierConv2d
    assert isinstance(SameBlock(128, 128, kernel_size=7, padding=3).conv, FourierConv2d)  # and its 128-channel 7x7
    assert type(SameBlock(3, 64, kernel_size=7, padding=3).conv) is torch.nn.Conv2d  # not the encoders' first
    conv = block.conv
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
    """models/winograd_tiles.py writes B^T d B and A^T S A out term by term: they are winograd_matrices()'s."""
    from models import winograd_tiles
    from models.blocks import winograd_matrices
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


def test_inference_network_runs_the_wide_3x3_convolutions_with_winograd():
    from dubbing.generation import ReferencedGenerator, inference_network
    network = DINet()
    copy = inference_network(network)
    swapped = {name for name, m in copy.named_modules() if isinstance(m, WinogradConv2d)}
    # the two appearance blocks (4 residual blocks of 2 convolutions each), and the 512 -> 128 ones that read
    # source and reference features (alignment encoder) and source and warped features (decoder)
    assert len(swapped) == 18 and {"trans_conv.0.conv", "out_conv.0.conv"} <= swapped
    assert not any(isinstance(m, WinogradConv2d) for m in network.modules())  # the caller's network is unchanged
    generate = ReferencedGenerator(network.eval(), torch.rand(1, 15, 104, 80))
    assert generate.split and isinstance(generate.source_half, WinogradConv2d)  # its 256 -> 128 source half


def test_inference_relus_in_place_touch_no_block_input():
    """Without gradients the blocks apply ReLU in place to their own fresh outputs, never to what they were given
    (a residual block's input is its shortcut, also when its first BatchNorm is folded away)."""
    torch.manual_seed(0)
    folded = ResBlock(8, 8).eval()
    folded.norm1 = torch.nn.Identity()
    for block in (SameBlock(8, 8), UpBlock2d(8, 8), ResBlock(8, 8), ResBlock(8, 4), folded):
        block.eval()
        x = torch.randn(2, 8, 6, 5)
        given = x.clone()
        expected = block(x)  # gradients on: plain ReLU
        assert torch.equal(x, given)
        with torch.no_grad():
            assert torch.equal(block(x), expected.detach())
        assert torch.equal(x, given)
    layer = SameBlock(8, 8).eval()
    with torch.no_grad():
        conv_out = layer.norm(layer.conv(torch.randn(1, 8, 4, 4)))
        assert fresh_relu(conv_out) is conv_out and (conv_out >= 0).all()  # in place: no new tensor
        assert fresh_relu(conv_out, published=True) is not conv_out  # DINet's: a new tensor


def test_vgg19_trunk_and_image_grid_are_torchvisions_without_importing_it():
    """models/vgg19.py builds torchvision's VGG19 trunk itself (same layers and keys: its state dicts load) and
    engine/run_log.py lays out image grids as make_grid does, so scripts start without importing torchvision
    (2-3 s a process); only pretrained weights, LPIPS and TREPA import it, where they are used."""
    import subprocess
    import sys
    import torchvision
    from engine.run_log import image_grid
    from models.vgg19 import vgg19_trunk
    torch.manual_seed(0)
    theirs, ours = torchvision.models.vgg19().features.eval(), vgg19_trunk().eval()
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys and shapes
    image = torch.rand(1, 3, 64, 64)
    assert torch.equal(ours(image), theirs(image))
    rows = [[torch.rand(3, 10, 8) * 1.4 - 0.2 for _ in range(4)] for _ in range(3)]
    expected = torchvision.utils.make_grid([image.clamp(0, 1) for row in rows for image in row], nrow=4, padding=2)
    assert torch.equal(image_grid(rows), expected)
    check = ("import sys, train_DINet_frame, train_DINet_clip, train_syncnet, inference, data_processing, bench\n"
             "from engine.clip_stage import ClipStage\nassert 'torchvision' not in sys.modules, 'torchvision imported'")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
