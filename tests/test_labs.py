"""The twelve labs: presets as the lab notes list them, every ingredient as a module of its own,
flags that compose, checkpoints that know their lab, and compare_labs.py."""
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from common.errors import UserError
from config.config import training_parser
from config.labs import LAB_PRESETS, generator_config
from conftest import ROOT
from data.procedural_faces import make_demo_data
from data.training_json import load_training_json
from engine.compare import (cost_table, generator_gflops, lab_config, parameter_count, run_comparison,
                            write_comparison)
from engine.trainer import FrameStage, requested_generator_config, train
from models import DINet, GeneratorConfig
from models.adain import AdaIN
from models.attention import CrossAttentionAlignment, sinusoid_positions_2d
from models.audio_encoders import AltConv1dAudioEncoder, AudioAttentionEncoder
from models.checkpoint import atomic_save, check_generator_config, generator_config_of, load_checkpoint, load_network
from models.dinet import CHOICES
from models.fusion import HybridTokenFusion, PoseToken, ReferenceFrameTokens, TokenFusionTransformer

FAST = ["--vgg19_weights", "random", "--device", "cpu", "--num_workers", "0", "--batch_size", "2"]
FACE_64 = (104, 80)  # face crop (H, W) at mouth 64
# on the 2-video demo data: 2 epochs of 3 iterations
SHORT_RUN = ["--augment_num", "3", "--non_decay", "2", "--decay", "0", "--image_every", "100"]

# The lab notes: what each lab changes from DINet.
LAB_NOTES = {
    "lab1": "DINet",
    "lab2": "extra_same_block=True",
    "lab3": "alignment=mha",
    "lab4": "extra_same_block=True, param_fusion=fusion_transformer",
    "lab5": "param_fusion=fusion_transformer",
    "lab6": "param_fusion=fusion_transformer, audio_encoder=conv1d_alt",
    "lab7": "param_fusion=fusion_transformer",  # plus mel features: see test_lab7_needs_mel_features...
    "lab8": "param_fusion=fusion_transformer, audio_encoder=audio_attention",
    "lab9": "extra_same_block=True, param_fusion=fusion_transformer, audio_encoder=audio_attention",
    "lab10": "extra_same_block=True, param_fusion=hybrid_transformer, audio_encoder=audio_attention",
    "lab11": "extra_same_block=True, param_fusion=hybrid_transformer, warp=adain",
    "lab12": "extra_same_block=True, param_fusion=hybrid_and_concat",
}


def inputs(batch, audio_channel, height=104, width=80, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, height, width, generator=generator),
            torch.rand(batch, 15, height, width, generator=generator),
            torch.randn(batch, audio_channel, 5, generator=generator))


def run_frame(json_path, result_path, *args):
    opt = training_parser("test", result_path).parse_args(
        ["--train_data", json_path, "--result_path", str(result_path), *FAST, *args])
    train(opt, FrameStage)
    return opt


def perception_losses(result_path):
    with open(os.path.join(result_path, "metrics.jsonl")) as f:
        return [json.loads(line)["Loss_perception"] for line in f]


# ---- presets and flags ---------------------------------------------------------------------------------------

def test_presets_are_the_labs_of_the_lab_notes():
    assert list(LAB_PRESETS) == list(LAB_NOTES), "config/labs.py and LAB_NOTES above list other labs: each lab " \
        "needs its line in both"
    assert {lab: lab_config(lab).describe() for lab in LAB_PRESETS} == LAB_NOTES


def test_a_flag_overrides_the_preset():
    opt = training_parser("test", "unused").parse_args(["--lab", "lab12", "--warp", "adain",
                                                        "--extra_same_block", "off"])
    config = requested_generator_config(opt, 29)
    assert config.describe() == "param_fusion=hybrid_and_concat, warp=adain"


def test_every_flag_combination_builds_or_is_rejected_with_a_one_line_reason():
    built, rejected = 0, 0
    for choices in itertools.product(*CHOICES.values()):  # extra_same_block only lengthens the encoders: left out
        try:
            config = GeneratorConfig(**dict(zip(CHOICES, choices)))
        except ValueError as error:
            assert "\n" not in str(error) and "cannot be used with" in str(error)
            rejected += 1
            continue
        with torch.device("meta"):  # shapes only, no arithmetic
            output = DINet.from_config(config)(*[t.to("meta") for t in inputs(1, 29)])
        assert output.shape == (1, 3, *FACE_64)
        built += 1
    assert built == 42 and rejected == 6  # hybrid_transformer has no alignment encoder for mha to feed


def test_a_combination_that_cannot_work_stops_training_with_one_line(tiny_json, tmp_path):
    with pytest.raises(UserError, match=r"^--lab lab10: --alignment mha cannot be used with --param_fusion "
                                         r"hybrid_transformer: [^\n]*$"):
        run_frame(tiny_json, tmp_path, "--lab", "lab10", "--alignment", "mha")


def test_lab7_needs_mel_features_and_says_how_to_make_them(tiny_json, tmp_path):
    with pytest.raises(UserError, match=r"^--lab lab7 trains on mel audio features \(80-d\) but the training data has "
                                         r"deepspeech features; make them with `python data_processing.py [^\n]*$"):
        run_frame(tiny_json, tmp_path, "--lab", "lab7")
    with pytest.raises(UserError, match="data has 52-d features"):  # a caller that knows only the width
        generator_config("lab7", 52)
    assert generator_config("lab7", 80, audio_feature="mel") == generator_config("lab5", 80)


# ---- every preset ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lab", list(LAB_PRESETS))
def test_every_lab_trains_at_mouth_64_and_its_audio_reaches_the_output(lab):
    torch.manual_seed(0)
    config = lab_config(lab)
    generator = DINet.from_config(config)
    source, reference, audio = inputs(2, config.audio_channel)
    output = generator(source[:1], reference[:1], audio[:1])
    assert output.shape == (1, 3, *FACE_64)
    output.mean().backward()
    # every parameter learns (DistributedDataParallel also needs that): no module is built and left unused
    idle = [name for name, p in generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not idle, idle
    generator.eval()
    with torch.no_grad():  # one image, two audio windows; then one audio window, two source images
        by_audio = generator(source[:1].expand(2, -1, -1, -1), reference[:1].expand(2, -1, -1, -1), audio)
        by_source = generator(source, reference[:1].expand(2, -1, -1, -1), audio[:1].expand(2, -1, -1))
    # untrained, another audio window moves every lab's face by 4% or more of what another source picture does;
    # an audio path that is cut, or reaches the output only through a vanishing term, stays far below 1%
    change = lambda output: (output[0] - output[1]).abs().mean()
    assert change(by_audio) > 0.01 * change(by_source)


@pytest.mark.parametrize("lab", ["lab3", "lab12"])
def test_one_set_of_weights_runs_at_mouth_64_128_and_256(lab):
    """What coarse-to-fine relies on: no weight depends on the image size (attention positions are computed,
    the pose token pools to a fixed grid)."""
    torch.manual_seed(0)
    generator = DINet.from_config(lab_config(lab)).eval()
    for height, width in (FACE_64, (208, 160), (416, 320)):
        with torch.no_grad():
            output = generator(*inputs(1, 29, height, width))
        assert output.shape == (1, 3, height, width) and torch.isfinite(output).all()


@pytest.mark.parametrize("lab", list(LAB_PRESETS))
def test_every_lab_config_round_trips_through_a_checkpoint(lab, tmp_path):
    config = lab_config(lab)
    torch.manual_seed(0)
    weights = DINet.from_config(config).state_dict()
    path = tmp_path / "netG_model_epoch_2.pth"
    atomic_save({"epoch": 3, "state_dict": {"net_g": weights}, "generator_config": config.to_dict(), "lab": lab}, path)
    checkpoint = load_checkpoint(str(path))
    assert generator_config_of(checkpoint) == config
    assert GeneratorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # survives JSON too
    rebuilt = DINet.from_config(generator_config_of(checkpoint))  # from the checkpoint alone, as inference does
    load_network(rebuilt, checkpoint, "net_g", str(path), "--coarse_model_path")
    assert all(torch.equal(rebuilt.state_dict()[key], value) for key, value in weights.items())


def test_a_checkpoint_of_one_lab_names_both_architectures_when_loaded_as_another():
    lab10 = {"state_dict": {"net_g": {}}, "generator_config": lab_config("lab10").to_dict()}
    with pytest.raises(UserError, match=r"lab10.pth: trained as \[extra_same_block=True, "
                                         r"param_fusion=hybrid_transformer, audio_encoder=audio_attention, .* "
                                         r"builds \[extra_same_block=True, param_fusion=hybrid_and_concat, "
                                         r"audio_channel=29\]"):
        check_generator_config(lab10, lab_config("lab12"), "lab10.pth", "--coarse_model_path")


def test_added_modules_have_names_of_their_own():
    """DINet's published names stay DINet's: a lab that swaps a module in uses a new name, so its
    checkpoint cannot half-load into another lab."""
    names = {lab: {key.split(".")[0] for key in DINet.from_config(lab_config(lab)).state_dict()} for lab in LAB_PRESETS}
    dinet = names["lab1"]
    assert dinet == {"source_in_conv", "ref_in_conv", "trans_conv", "audio_encoder", "appearance_conv_list",
                     "adaAT", "out_conv"}
    assert names["lab3"] - dinet == {"alignment_attention"}
    assert names["lab6"] - dinet == {"param_fusion_transformer", "audio_encoder_alt"}
    assert names["lab11"] ^ dinet == {"hybrid_transformer", "adaIN", "adaAT", "trans_conv"}
    assert names["lab12"] - dinet == {"hybrid_transformer"}


def test_lab1_cost_is_dinets_and_the_other_labs_are_counted_the_same_way():
    assert parameter_count(lab_config("lab1")) == 19_190_275
    assert [round(generator_gflops(lab_config("lab1"), m), 1) for m in (64, 128, 256)] == [22.4, 89.7, 358.7]
    # lab3's attention is quadratic in positions: 4x the pixels cost more than 4x the FLOPs
    lab3 = [generator_gflops(lab_config("lab3"), m) for m in (128, 256)]
    assert lab3[1] > 4.2 * lab3[0]


# ---- the ingredients, one by one ------------------------------------------------------------------------------

def test_cross_attention_lets_source_positions_read_the_references():
    torch.manual_seed(0)
    attention = CrossAttentionAlignment(32, heads=4)
    source, reference = torch.randn(2, 32, 6, 5), torch.randn(2, 32, 6, 5)
    output = attention(source, reference)
    assert output.shape == source.shape
    other = attention(source, reference.flip(-1))  # same reference content, other places
    assert (output - other).abs().max() > 1e-4      # positions matter (2-D sinusoids on queries and keys)
    assert attention(source, reference[:, :, :3]).shape == source.shape  # any reference size, no size-bound weights
    positions = sinusoid_positions_2d(32, 6, 5, torch.float32, "cpu")
    assert torch.cdist(positions, positions).add(torch.eye(30) * 9).min() > 0.1  # every position distinct


def test_token_fusion_reads_every_modality_and_token_order():
    torch.manual_seed(0)
    fusion = TokenFusionTransformer({"image": (1, 8), "audio": (3, 4)}, code_dim=16, model_dim=32, heads=4)
    image, audio = torch.randn(2, 1, 8), torch.randn(2, 3, 4)
    code = fusion(image, audio)
    assert code.shape == (2, 16)
    assert (fusion(image, audio + 1) - code).abs().max() > 1e-4
    assert (fusion(image + 1, audio) - code).abs().max() > 1e-4
    assert (fusion(image, audio[:, [1, 0, 2]]) - code).abs().max() > 1e-4  # positional embeddings: order counts


def test_reference_tokens_are_one_per_frame():
    torch.manual_seed(0)
    tokens = ReferenceFrameTokens(num_frames=5).eval()
    references = torch.rand(1, 15, 64, 48)
    changed = references.clone()
    changed[:, 6:9] = torch.rand(1, 3, 64, 48)  # frame 2 only
    difference = (tokens(references) - tokens(changed)).abs().amax(dim=2)[0]  # (5,) per token
    assert difference[2] > 1e-4 and difference[[0, 1, 3, 4]].max() < 1e-6


def test_pose_token_has_the_same_width_at_every_mouth_size():
    pose = PoseToken(256)
    assert pose(torch.rand(1, 256, 26, 20)).shape == pose(torch.rand(1, 256, 104, 80)).shape == (1, 1, pose.width)


def test_hybrid_transformer_reads_references_audio_steps_and_pose():
    torch.manual_seed(0)
    hybrid = HybridTokenFusion(num_reference_frames=5, audio_window=5).eval()
    references, source_feature = torch.rand(2, 15, 104, 80), torch.rand(2, 256, 26, 20)
    audio_steps = torch.rand(2, 128, 5)
    code = hybrid(references, source_feature, audio_steps)
    assert code.shape == (2, 256)
    for changed in ((references.flip(0), source_feature, audio_steps),
                    (references, source_feature.flip(0), audio_steps),
                    (references, source_feature, audio_steps.flip(0))):
        assert (hybrid(*changed) - code).abs().max() > 1e-5
    # DINet's conv1d encoder leaves 2 steps of the 5-frame window; they are read back at each frame
    assert hybrid(references, source_feature, audio_steps[:, :, :2]).shape == (2, 256)


def test_alternative_audio_encoder_keeps_one_step_per_audio_frame():
    encoder = AltConv1dAudioEncoder(29)
    assert encoder(torch.randn(2, 29, 5)).shape == (2, 128, 5)


def test_audio_attention_code_is_a_softmax_weighted_sum_of_frame_codes():
    torch.manual_seed(0)
    encoder = AudioAttentionEncoder(29, window=5).eval()
    audio = torch.randn(2, 29, 5)
    steps = encoder(audio)                                          # (B, 128, 5)
    frames = encoder.frame_encoder(audio)
    weights = torch.softmax(encoder.score_mixer(encoder.frame_scorer(frames).squeeze(1)), dim=1)
    assert torch.allclose(steps.mean(dim=2), (frames * weights.unsqueeze(1)).sum(dim=2), atol=1e-6)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="5-frame audio window, got 7"):
        encoder(torch.randn(2, 29, 7))


def test_adain_modulates_each_channel_by_the_code():
    torch.manual_seed(0)
    adain = AdaIN(16, 4)
    features = torch.randn(2, 4, 6, 5)
    code = torch.randn(2, 16)
    output = adain(features, code)
    assert (adain(features, code + 1) - output).abs().max() > 1e-4  # the code (and the audio in it) gets through
    hidden = adain.code_mlp(code)
    scale, shift = 1 + adain.scale(hidden), adain.shift(hidden)     # (B, C) each: one pair per channel
    expected = torch.nn.functional.instance_norm(features) * scale[:, :, None, None] + shift[:, :, None, None]
    assert torch.allclose(output, expected, atol=1e-5)


# ---- training end to end, and compare_labs.py ------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_json(tmp_path_factory):
    """Two short procedural talking-head videos prepared as real data is, with MFCC features (so not lab7's mel)."""
    return make_demo_data(str(tmp_path_factory.mktemp("demo")), num_videos=2, seconds=2.5, seed=0,
                          audio_feature="mfcc")


@pytest.fixture(scope="module")
def lab12_run(demo_json, tmp_path_factory):
    """lab12 at mouth 64: 2 epochs of 3 iterations, a checkpoint after each."""
    result_path = tmp_path_factory.mktemp("lab12_run")
    run_frame(demo_json, result_path, *SHORT_RUN, "--lab", "lab12", "--checkpoint", "1")
    return result_path


@pytest.fixture(scope="module")
def comparison(demo_json, tmp_path_factory):
    """compare_labs.py's work for lab1 and lab7 on the demo data: lab1 trains as lab12 does, lab7 cannot."""
    out_dir = tmp_path_factory.mktemp("comparison")
    runs = run_comparison(["lab1", "lab7"], ["--train_data", demo_json, *FAST, *SHORT_RUN[:2]], epochs=2,
                          out_dir=str(out_dir))
    return out_dir, runs


def falls(losses):
    """The mean of the last three iterations is clearly below the mean of the first three."""
    return sum(losses[-3:]) < 0.95 * sum(losses[:3])


def test_lab12_perception_loss_falls_over_a_short_run_on_demo_data(lab12_run):
    losses = perception_losses(lab12_run)
    assert len(losses) == 6 and falls(losses), losses


def test_lab1_perception_loss_falls_over_a_short_run_on_demo_data(comparison):
    out_dir, _ = comparison
    losses = perception_losses(out_dir / "lab1")
    assert len(losses) == 6 and falls(losses), losses


def test_lab12_resumes_on_its_own_loss_trajectory(demo_json, lab12_run, tmp_path):
    run_frame(demo_json, tmp_path, *SHORT_RUN, "--resume", str(lab12_run / "netG_model_epoch_1.pth"))
    assert perception_losses(tmp_path) == pytest.approx(perception_losses(lab12_run)[3:], rel=1e-5)
    resumed = torch.load(tmp_path / "netG_model_epoch_2.pth", weights_only=False)  # rebuilt from the checkpoint alone
    assert GeneratorConfig.from_dict(resumed["generator_config"]) == lab_config("lab12", 52)


def test_lab12_coarse_checkpoint_initialises_mouth_128(demo_json, lab12_run, tmp_path):
    # lr 0: the 128 checkpoint holds exactly what coarse-to-fine loaded
    run_frame(demo_json, tmp_path, "--lab", "lab12", "--mouth_region_size", "128", "--batch_size", "1",
              "--iterations_per_epoch", "1", "--lr_g", "0", "--non_decay", "1", "--decay", "0", "--checkpoint", "1",
              "--coarse2fine", "--coarse_model_path", str(lab12_run / "netG_model_epoch_2.pth"))
    coarse = torch.load(lab12_run / "netG_model_epoch_2.pth", weights_only=False)["state_dict"]["net_g"]
    fine = torch.load(tmp_path / "netG_model_epoch_1.pth", weights_only=False)["state_dict"]["net_g"]
    for key in ("hybrid_transformer.transformer.position_embedding", "hybrid_transformer.transformer.to_code.weight",
                "adaAT.scale.0.weight", "out_conv.4.weight"):
        assert torch.equal(coarse[key], fine[key]), key


def test_compare_labs_tables_plots_and_skips_a_lab_the_data_cannot_train(comparison, demo_json):
    out_dir, runs = comparison
    assert [run.lab for run in runs] == ["lab1", "lab7"]
    assert runs[1].skipped.startswith("--lab lab7 trains on mel audio features") and not runs[1].metrics
    assert len(runs[0].metrics) == 6 and runs[0].seconds_per_iteration() > 0
    table = (out_dir / "comparison.md").read_text()
    assert "| lab | description | parameters (M) | GFLOPs @64 | GFLOPs @128 | GFLOPs @256 | s/iteration | " \
           "perception epoch 1 | perception epoch 2 | note |" in table
    lab1_row = next(line for line in table.splitlines() if line.startswith("| lab1 |"))
    first_epoch = sum(m["Loss_perception"] for m in runs[0].metrics[:3]) / 3
    assert lab1_row.startswith("| lab1 | DINet | 19.20 | 22.4 | 89.7 | 358.7 |")  # 52-d MFCC input: 19.20 M
    assert f"| {first_epoch:.4f} |" in lab1_row
    assert "| lab7 | param_fusion=fusion_transformer; audio_feature=mel |" in table and "skipped: --lab lab7" in table
    assert (out_dir / "comparison.csv").read_text().startswith("lab,description,parameters (M),")
    assert (out_dir / "perception_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="already holds a run"):  # never appends to an earlier comparison
        run_comparison(["lab1"], ["--train_data", demo_json, *FAST], epochs=1, out_dir=str(out_dir))


def test_a_comparison_with_held_out_videos_tables_their_score_per_epoch(comparison, demo_json, tmp_path):
    """Under --val_fraction each lab's metrics.jsonl also holds a validation record per epoch, which has no training
    loss: the table gains the held-out score beside the perception loss, and the plot keeps to the losses."""
    _, (lab1, lab7) = comparison
    scores = [{"step": 3, "epoch": 1, "val/l1": 0.5, "val/lmd_mouth": 0.25},
              {"step": 6, "epoch": 2, "val/l1": 0.5, "val/lmd_mouth": 0.125}]
    validated = dataclasses.replace(lab1, metrics=[*lab1.metrics[:3], scores[0], *lab1.metrics[3:], scores[1]])
    base = training_parser("test", str(tmp_path)).parse_args(["--val_fraction", "0.5"])
    write_comparison([validated, dataclasses.replace(lab1, lab="lab2"), lab7], base, load_training_json(demo_json),
                     str(tmp_path))
    table = (tmp_path / "comparison.md").read_text()
    assert "Held out: 0.5 of the videos, scored by lmd_mouth (lower is better)." in table
    assert "| perception epoch 1 | perception epoch 2 | held-out lmd_mouth epoch 1 | held-out lmd_mouth epoch 2 | " \
           "note |" in table
    lab1_row = next(line for line in table.splitlines() if line.startswith("| lab1 |"))
    assert lab1_row.endswith(f"| {sum(m['Loss_perception'] for m in lab1.metrics[3:]) / 3:.4f} | 0.2500 | 0.1250 |  |")
    # the two labs' lines (and legend entries) in two hues, 20 degrees apart or more
    plot = cv2.cvtColor(cv2.imread(str(tmp_path / "perception_loss.png")), cv2.COLOR_BGR2HSV)
    hues = np.bincount(plot[..., 0][plot[..., 1] > 60] // 10)  # OpenCV's hue is degrees / 2
    assert (hues > 20).sum() == 2, hues


def test_compare_labs_table_only_prints_parameters_and_gflops_without_training():
    result = subprocess.run([sys.executable, "compare_labs.py", "--table_only", "--labs", "lab1,lab7"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| lab1 | DINet | deepspeech 29-d | 19.19 | 22.4 | 89.7 | 358.7 |" in result.stdout
    assert "| lab7 | param_fusion=fusion_transformer; audio_feature=mel | mel 80-d |" in result.stdout


def test_the_readmes_lab_table_lists_every_preset_with_its_cost():
    """README's lab table is where a lab is looked up: a preset added without its row, or a row whose parameters or
    GFLOPs the preset no longer has, turns this red (the row's figures: compare_labs.py --table_only)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        rows = re.findall(r"^\| (lab\d+) \| [^|]+ \| ([\d.]+) M \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", f.read(),
                          flags=re.MULTILINE)
    assert rows == [(row["lab"], row["parameters (M)"], row["GFLOPs @64"], row["GFLOPs @128"], row["GFLOPs @256"])
                    for row in cost_table(list(LAB_PRESETS))]


def test_compare_labs_rejects_flags_it_sets_per_lab(tiny_json, tmp_path):
    with pytest.raises(UserError, match="--lab: compare_labs.py sets it for each lab"):
        run_comparison(["lab1"], ["--train_data", tiny_json, "--lab", "lab2"], epochs=1, out_dir=str(tmp_path))
