"""The clip stage: DINet's clip sampling, discriminators and log line, the loss presets, and the lab's fourth command."""
import re
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from common.geometry import AUDIO_FRAMES, CLIP_LENGTH, MOUTH_FRAMES, CropGeometry
from config.config import LOSS_PRESETS, clip_training_parser, training_parser
from config.labs import generator_config
from conftest import ROOT, write_dinet_json
from data.clip_dataset import CLIP_FRAMES, ClipDataset
from data.training_json import load_training_json
from engine import distributed
from engine.clip_stage import ClipStage
from engine.run_log import format_log_line
from engine.trainer import train
from models import DINet, Discriminator
from models.checkpoint import atomic_save
from models.syncnet import SyncNetConfig, build_syncnet

FOURTH_COMMAND = ("--augment_num=3 --mouth_region_size=256 --batch_size=3 "
                  "--pretrained_syncnet_path=./asserts/syncnet_256mouth.pth "
                  "--pretrained_frame_DINet_path=./asserts/training_model_weight/frame_training_256/netG_model_epoch_2.pth "
                  "--result_path=./asserts/training_model_weight/clip_training_256").split()
CLIP_LINE = re.compile(r"^===> Epoch\[(\d+)\]\((\d+)/(\d+)\):  Loss_DI: \d+\.\d{4} Loss_GI: \d+\.\d{4} "
                       r"Loss_DV: \d+\.\d{4} Loss_GV: \d+\.\d{4} Loss_perception: \d+\.\d{4} Loss_sync: \d+\.\d{4} "
                       r"lr_g = \d\.\d{7} $")
OFFLINE = ["--vgg19_weights", "random", "--lpips_weights", "random", "--trepa_weights", "random", "--device", "cpu",
           "--num_workers", "0"]


@pytest.fixture(scope="module")
def clip_assets(tmp_path_factory):
    """Tiny data (29-d, 2 videos), a lab2 frame checkpoint and a SyncNet for mouth 64, both random."""
    folder = tmp_path_factory.mktemp("clip_assets")
    json_path = write_dinet_json(str(folder), videos=2, clips=7, width=29, seed=3)
    torch.manual_seed(0)
    lab2 = generator_config("lab2", 29)
    frame_path = str(folder / "netG_model_epoch_2.pth")
    atomic_save({"epoch": 3, "state_dict": {"net_g": DINet.from_config(lab2).state_dict(),
                                            "net_dI": Discriminator(3, 64, 4, 256).state_dict()},
                 "generator_config": lab2.to_dict(), "lab": "lab2", "mouth_region_size": 64,
                 "audio_feature": "deepspeech"}, frame_path)
    syncnet_config = SyncNetConfig(audio_channel=29, audio_feature="deepspeech", mouth_region_size=64, input_size=32)
    syncnet_path = str(folder / "syncnet_64mouth.pth")
    atomic_save({"state_dict": {"net": build_syncnet(syncnet_config).state_dict()},
                 "syncnet_config": syncnet_config.to_dict()}, syncnet_path)
    return folder, json_path, frame_path, syncnet_path


def clip_options(clip_assets, result_path, *args):
    _, json_path, frame_path, syncnet_path = clip_assets
    return clip_training_parser("test", str(result_path)).parse_args(
        ["--train_data", json_path, "--mouth_region_size", "64", "--batch_size", "1", "--augment_num", "1",
         "--pretrained_frame_DINet_path", frame_path, "--pretrained_syncnet_path", syncnet_path,
         "--result_path", str(result_path), "--non_decay", "1", "--decay", "0", "--checkpoint", "1", *OFFLINE, *args])


def test_fourth_lab_command_parses_as_written_with_dinets_weights():
    opt = clip_training_parser("test", "unused").parse_args(FOURTH_COMMAND)
    assert (opt.augment_num, opt.mouth_region_size, opt.batch_size) == (3, 256, 3)
    assert opt.pretrained_syncnet_path == "./asserts/syncnet_256mouth.pth"
    assert opt.pretrained_frame_DINet_path.endswith("frame_training_256/netG_model_epoch_2.pth")
    assert (opt.lamb_perception, opt.lamb_syncnet_perception, opt.lamb_l1, opt.lamb_lpips, opt.lamb_trepa) == (
        10, 0.1, 0, 0, 0)


def test_latentsync_preset_sets_its_weights_and_an_explicit_weight_wins():
    opt = clip_training_parser("test", "unused").parse_args(["--loss_preset", "latentsync", "--lamb_trepa", "2"])
    assert (opt.lamb_l1, opt.lamb_syncnet_perception, opt.lamb_lpips, opt.lamb_trepa, opt.lamb_perception) == (
        1, 0.05, 0.1, 2, 0)


def test_every_loss_preset_sets_every_loss_weight_of_both_stages():
    """A weight flag (--lamb_*) that a preset leaves out stays None after parsing: its loss is silently off."""
    parsers = (training_parser("frame", "unused"), clip_training_parser("clip", "unused"))
    weights = {action.dest for parser in parsers for action in parser._actions if action.dest.startswith("lamb_")}
    assert {name: set(preset) for name, preset in LOSS_PRESETS.items()} == dict.fromkeys(LOSS_PRESETS, weights)


def test_a_loss_weight_flag_no_preset_sets_stops_parsing_naming_where_to_add_it():
    """A new --lamb_* flag left out of LOSS_PRESETS would stay None, its loss silently off, in every run."""
    parser = training_parser("frame", "unused")
    parser.add_argument("--lamb_new", type=float, default=None)
    with pytest.raises(ValueError, match=r"^--lamb_new: no loss preset sets it; give it a weight in every preset of "
                                         r"LOSS_PRESETS \(config/config.py\)"):
        parser.parse_args(["--lamb_new", "1"])  # given or not: the next run without it would lose the loss


def test_help_gives_each_loss_weight_of_each_preset_not_none(capsys):
    with pytest.raises(SystemExit):
        clip_training_parser("clip", "unused").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--lamb_trepa LAMB_TREPA weight of TREPA, the distance of frozen video-model features (default by " \
           "--loss_preset: dinet 0, latentsync 10)" in text
    assert "--lamb_perception LAMB_PERCEPTION weight of VGG19 perception loss (default by --loss_preset: dinet 10, " \
           "latentsync 0)" in text and "(default: None)" not in text


def test_clip_line_is_dinets_format():
    losses = dict(Loss_DI=0.25, Loss_GI=0.3, Loss_DV=0.24, Loss_GV=0.31, Loss_perception=5.1, Loss_sync=0.07)
    line = format_log_line(3, 1, 9, losses, 1e-4)
    assert line == ("===> Epoch[3](1/9):  Loss_DI: 0.2500 Loss_GI: 0.3000 Loss_DV: 0.2400 Loss_GV: 0.3100 "
                    "Loss_perception: 5.1000 Loss_sync: 0.0700 lr_g = 0.0001000 ")
    assert CLIP_LINE.match(line)


def test_the_frames_a_clip_generates_are_the_window_its_syncnet_judges():
    """The clip stage generates the frames of a clip whose audio window lies inside it and hands all of them, with all
    the clip's audio vectors, to a SyncNet trained on MOUTH_FRAMES mouths and AUDIO_FRAMES vectors: a window constant
    of common/geometry.py changed alone (AUDIO_WINDOW, say) fails here, not as a channel mismatch in the SyncNet."""
    assert len(CLIP_FRAMES) == MOUTH_FRAMES and CLIP_LENGTH == AUDIO_FRAMES


def test_clip_items_are_five_consecutive_frames_with_their_audio_and_references_from_other_clips(clip_assets):
    _, json_path, _, _ = clip_assets
    training_set = load_training_json(json_path)
    dataset = ClipDataset(training_set, augment_num=1, mouth_size=64)
    item = dataset[(0, 11)]
    geometry = CropGeometry(64)
    assert item["source"].shape == (5, 3, geometry.height, geometry.width)
    assert item["reference"].shape == (5, 15, geometry.height, geometry.width)
    assert item["audio"].shape == (5, 29, 5) and item["audio_clip"].shape == (29, 9)
    for t in range(5):  # frame 2 + t hears audio frames t..t+4 of the clip: DINet's windows
        assert torch.equal(item["audio"][t], item["audio_clip"][:, t:t + 5])
    assert item["source_masked"][..., geometry.mouth_rows, geometry.mouth_cols].abs().sum() == 0
    source_frames = {tuple(item["source"][t].flatten()[:50].tolist()) for t in range(5)}
    references = item["reference"].view(25, 3, geometry.height, geometry.width)
    assert not any(tuple(frame.flatten()[:50].tolist()) in source_frames for frame in references)


def test_clip_stage_rebuilds_the_frame_checkpoints_generator_and_trains_with_dinets_losses(clip_assets, tmp_path):
    opt = clip_options(clip_assets, tmp_path, "--iterations_per_epoch", "1", "--image_every", "1")
    _, _, frame_path, _ = clip_assets
    stage = train(opt, ClipStage)
    assert stage.generator_cfg.extra_same_block  # lab2, from the frame checkpoint, without --lab
    assert stage.lpips is None and stage.trepa is None  # weight 0: never built
    lines = [line for line in (tmp_path / "log.txt").read_text().splitlines() if line.startswith("===>")]
    assert len(lines) == 1 and CLIP_LINE.match(lines[0] + " "), lines
    checkpoint = torch.load(tmp_path / "netG_model_epoch_1.pth", weights_only=False)
    assert set(checkpoint["state_dict"]) == set(checkpoint["optimizer"]) == {"net_g", "net_dI", "net_dV"}
    assert checkpoint["state_dict"]["net_dV"]["down_blocks.0.conv.weight"].shape[1] == 15
    assert checkpoint["generator_config"]["extra_same_block"] and checkpoint["lab"] == "lab2"
    frame = torch.load(frame_path, weights_only=False)["state_dict"]["net_g"]
    moved = [k for k, v in checkpoint["state_dict"]["net_g"].items() if v.is_floating_point() and not torch.equal(v, frame[k])]
    assert moved  # started from the frame weights and trained


@pytest.mark.parametrize("stats", ["frozen", "batch"])
def test_clip_stage_keeps_the_frame_stages_batchnorm_statistics_and_averages_from_its_weights(clip_assets, tmp_path,
                                                                                                stats):
    """A clip batch holds a few faces: by default the generator normalises with the frame stage's BatchNorm
    statistics and they stay as they were; `batch` (DINet's) updates them. The weights' average starts at the frame
    stage's weights and stays near them while the trained weights take a fresh optimizer's first steps."""
    opt = clip_options(clip_assets, tmp_path, "--iterations_per_epoch", "3", "--batchnorm_stats", stats,
                       "--ema", "0.999")
    train(opt, ClipStage)
    frame = torch.load(clip_assets[2], weights_only=False)["state_dict"]["net_g"]
    state = torch.load(tmp_path / "netG_model_epoch_1.pth", weights_only=False)["state_dict"]
    averaged, trained = state["net_g"], state["net_g_training"]
    for weights in (averaged, trained):
        statistics = [key for key in weights if key.endswith(("running_mean", "running_var"))]
        assert statistics
        kept = [torch.equal(weights[key], frame[key]) for key in statistics]
        assert all(kept) if stats == "frozen" else not any(kept), stats
    parameters = [key for key, value in trained.items() if value.is_floating_point() and "running" not in key]
    moved = {name: sum(float((weights[key] - frame[key]).abs().sum()) for key in parameters)
             for name, weights in (("averaged", averaged), ("trained", trained))}
    assert 0 < moved["averaged"] < 0.01 * moved["trained"], moved


def test_latentsync_preset_step_logs_every_active_loss_finite(clip_assets, tmp_path):
    opt = clip_options(clip_assets, tmp_path, "--loss_preset", "latentsync")
    _, json_path, _, _ = clip_assets
    training_set = load_training_json(json_path)
    stage = ClipStage.create(opt, training_set, distributed.setup("cpu"), None)
    assert stage.perception is None  # LPIPS replaces VGG19 under this preset: no VGG19 built
    item = stage.dataset(training_set)[(0, 5)]
    batch = stage.precision.inputs({key: value.unsqueeze(0) for key, value in item.items()}, "cpu")
    losses, rows = stage.step(batch)
    assert list(losses) == ["Loss_DI", "Loss_GI", "Loss_DV", "Loss_GV", "Loss_sync", "Loss_l1", "Loss_lpips",
                            "Loss_trepa"]
    assert all(torch.isfinite(torch.tensor(value)) for value in losses.values()), losses
    assert len(rows) == 5 and len(rows[0]) == 8  # one row per frame: masked | 5 references | generated | real


def test_a_syncnet_for_other_audio_is_refused_before_training(clip_assets, tmp_path):
    folder, _, _, _ = clip_assets
    mel = SyncNetConfig(audio_channel=80, audio_feature="mel", mouth_region_size=64, input_size=32)
    path = str(folder / "mel_syncnet.pth")
    atomic_save({"state_dict": {"net": build_syncnet(mel).state_dict()}, "syncnet_config": mel.to_dict()}, path)
    with pytest.raises(UserError, match=r"mel_syncnet.pth: this SyncNet reads 80-d mel audio, the training data has "
                                         r"29-d deepspeech features"):
        train(clip_options(clip_assets, tmp_path, "--pretrained_syncnet_path", path), ClipStage)


def test_sync_weight_zero_needs_no_syncnet_and_missing_frame_checkpoint_is_named(clip_assets, tmp_path):
    _, json_path, _, _ = clip_assets
    opt = clip_options(clip_assets, tmp_path, "--lamb_syncnet_perception", "0", "--pretrained_syncnet_path", "")
    stage = ClipStage.create(opt, load_training_json(json_path), distributed.setup("cpu"), None)
    assert stage.syncnet is None
    opt = clip_options(clip_assets, tmp_path, "--pretrained_frame_DINet_path", "")
    with pytest.raises(UserError, match=r"--pretrained_frame_DINet_path is empty"):
        train(opt, ClipStage)


def test_clip_command_runs_from_the_shell(clip_assets, tmp_path):
    _, json_path, frame_path, syncnet_path = clip_assets
    result = subprocess.run([sys.executable, "train_DINet_clip.py", "--augment_num=1", "--mouth_region_size=64",
                             "--batch_size=1", f"--pretrained_syncnet_path={syncnet_path}",
                             f"--pretrained_frame_DINet_path={frame_path}", f"--result_path={tmp_path}",
                             f"--train_data={json_path}", "--vgg19_weights=random", "--non_decay=1", "--decay=0",
                             "--checkpoint=1", "--iterations_per_epoch=1", "--num_workers=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("===>")]
    assert len(lines) == 1 and CLIP_LINE.match(lines[0])
    assert (tmp_path / "netG_model_epoch_1.pth").exists()
