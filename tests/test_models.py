"""The generator is the published DINet: layout, numerics, and what the lab flags change."""
import json
import os

import pytest
import torch

from conftest import ROOT, SHARED
import torch.nn.functional as F

from config.labs import LAB_PRESETS
from engine.compare import lab_config
from models import AdaAT, DINet, Discriminator, GeneratorConfig
from models.blocks import ResBlock, SameBlock, UpBlock2d, decode_rows, fresh_relu
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
    assert sum(p.numel() for p in DINet(3, 15, 29).parameters()) == 19_190_275  # 19.19 M, the published count


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


@pytest.mark.parametrize("lab", list(LAB_PRESETS))
def test_a_fresh_generator_of_every_lab_is_built_of_plain_layers(lab):
    """What trains is DINet's module tree: plain convolutions, nothing of models/fast/ (optimize_for_inference
    swaps those into a copy), so that print(DINet()) shows only DINet's layers."""
    network = DINet.from_config(lab_config(lab))
    convolutions = [m for m in network.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    assert convolutions and all(type(m) in (torch.nn.Conv1d, torch.nn.Conv2d) for m in convolutions)
    assert not any(name in repr(network) for name in ("Fourier", "Winograd", "Narrow", "Split"))


@pytest.mark.parametrize("lab", list(LAB_PRESETS))
def test_forward_is_generate_of_the_encoded_references_for_every_lab(lab):
    """forward is encode_reference then generate, one path: the same numbers, and the same gradients in training;
    one encoded reference serves a whole batch (dubbing's) as that reference repeated per sample does."""
    torch.manual_seed(0)
    network = DINet.from_config(lab_config(lab, 80, "mel"))
    source, reference, audio = torch.rand(3, 3, 64, 64), torch.rand(3, 15, 64, 64), torch.randn(3, 80, 5)
    outputs, gradients = [], []
    for run in (lambda: network(source, reference, audio),
                lambda: network.generate(source, audio, network.encode_reference(reference))):
        torch.manual_seed(1)
        network.zero_grad()
        outputs.append(run())
        outputs[-1].square().mean().backward()
        gradients.append([p.grad.clone() for p in network.parameters()])
    assert torch.equal(*outputs)
    assert all(torch.equal(a, b) for a, b in zip(*gradients))
    network.eval()
    with torch.no_grad():
        shared = network.generate(source, audio, network.encode_reference(reference[:1]))
        repeated = network(source, reference[:1].expand(3, -1, -1, -1), audio)
    assert (shared - repeated).abs().max() < 1e-5


def test_generate_from_a_row_on_computes_those_rows_and_leaves_zeros_above():
    torch.manual_seed(0)
    network = DINet(3, 15, 29).eval()
    source, reference, audio = torch.rand(2, 3, 104, 80), torch.rand(2, 15, 104, 80), torch.randn(2, 29, 5)
    with torch.no_grad():
        state = network.encode_reference(reference)
        whole, rows = network.generate(source, audio, state), network.generate(source, audio, state, 22)
    assert rows.shape == whole.shape and not rows[:, :, :22].any()
    assert (rows[:, :, 22:] - whole[:, :, 22:]).abs().max() < 1e-6


def test_decoder_on_rows_is_the_decoder_from_any_row():
    """Each layer of DINet's decoder runs on the rows the wanted ones depend on; every row from the first wanted
    is the whole decoder's, in float64 to rounding, at mouth 64 and 128, and from rows the convolutions' top
    padding and the upsampling's parity reach."""
    torch.manual_seed(0)
    decoder = DINet().out_conv.double().eval()
    for (height, width), firsts in (((26, 20), (0, 1, 2, 3, 7, 22)), ((52, 40), (3, 22))):  # mouth 64; 128, 4x the cost
        features = torch.randn(1, 512, height, width, dtype=torch.float64)
        with torch.no_grad():
            whole = decoder(features)
            for first in (*firsts, 4 * height - 1):
                rows = decode_rows(decoder, features, first)
                assert rows.shape[2] == 4 * height - first
                assert torch.allclose(rows, whole[:, :, first:], rtol=1e-12, atol=1e-12), first
    unknown = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1, stride=2))  # a layer it cannot cut: whole
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    assert torch.equal(decode_rows(unknown.double(), x, 2), unknown.double()(x)[:, :, 2:])


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
