"""Validation while training: held-out videos scored the dubbing way, the best checkpoint kept, training unchanged."""
import json
import math
import re
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest
import torch

from common.errors import UserError
from conftest import ROOT, write_dinet_json
from data.procedural_faces import make_demo_data
from data.training_json import load_training_json, write_json_split
from engine.distributed import Runtime
from engine.validation import Validator, held_out_sets, split_training_set, subset
from models.checkpoint import load_checkpoint
from test_clip_training import clip_assets  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three training videos and, made apart with another seed, one held-out video (8 clips each)."""
    folder = tmp_path_factory.mktemp("validation")
    train = make_demo_data(str(folder / "train"), num_videos=3, seconds=3.0, seed=0)
    held = make_demo_data(str(folder / "held"), num_videos=1, seconds=3.0, seed=7)
    return train, held


def train(tmp_path, name, train_json, *flags):
    result = tmp_path / name
    done = subprocess.run(
        [sys.executable, "train_DINet_frame.py", "--train_data", train_json, "--mouth_region_size", "64",
         "--batch_size", "2", "--augment_num", "1", "--non_decay", "2", "--decay", "0", "--checkpoint", "1",
         "--vgg19_weights", "random", "--val_lpips_weights", "random", "--device", "cpu", "--num_workers", "0",
         "--amp", "off", "--result_path", str(result), *flags], cwd=ROOT, capture_output=True, text=True)
    return result, done


def losses(result):
    with open(result / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [{key: value for key, value in row.items() if key.startswith("Loss")} for row in rows
            if any(key.startswith("Loss") for key in row)]


def test_validation_scores_held_out_videos_keeps_the_best_and_leaves_training_unchanged(data, tmp_path):
    train_json, held_json = data
    plain, done = train(tmp_path, "plain", train_json)
    assert done.returncode == 0, done.stderr[-2000:]
    validated, done = train(tmp_path, "validated", train_json, "--val_data", held_json, "--val_metric", "l1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert losses(validated) == losses(plain) and len(losses(plain)) >= 2  # same seed, same losses, RNG untouched
    lines = [line for line in done.stdout.splitlines() if line.startswith("validation at epoch")]
    assert len(lines) == 2 and all("psnr=" in line and "lpips=" in line and "lmd_mouth=" in line for line in lines)
    with open(validated / "metrics.jsonl") as f:
        scored = [json.loads(line) for line in f if '"val/psnr"' in line]
    assert [row["epoch"] for row in scored] == [1, 2] and all(0 < row["val/l1"] < 1 for row in scored)
    assert (validated / "samples" / "validation_epoch_0002.png").is_file()
    best = load_checkpoint(str(validated / "netG_best.pth"), "best")
    assert best["validation_split"]["videos"] == ["demo_000"] and best["validation_best"]["metric"] == "l1"
    chosen = min(scored, key=lambda row: row["val/l1"])
    assert best["validation_best"]["value"] == pytest.approx(chosen["val/l1"]) and best["epoch"] == chosen["epoch"] + 1
    last = load_checkpoint(str(validated / "netG_model_epoch_2.pth"), "last")
    assert last["validation_best"] == best["validation_best"]  # a resumed run starts from the best so far
    with open(validated / "validation_split.json") as f:
        assert json.load(f)["val_data"] == held_json
    assert not (plain / "netG_best.pth").exists()


def test_a_fraction_holds_out_whole_videos_the_same_way_for_a_seed(data):
    training_set = load_training_json(data[0])
    kept, held = split_training_set(training_set, 0.34, seed=3)
    assert len(held.videos) == 1 and set(kept.videos) | set(held.videos) == set(training_set.videos)
    assert not set(kept.videos) & set(held.videos)
    assert split_training_set(training_set, 0.34, seed=3)[1].videos.keys() == held.videos.keys()
    picks = {tuple(split_training_set(training_set, 0.34, seed)[1].videos) for seed in range(20)}
    assert len(picks) > 1  # the seed draws which


def options(**given):
    values = dict(val_data=None, val_fraction=None, seed=0, mouth_region_size=64, val_clips=8,
                  val_lpips_weights="random", val_metric="lmd_mouth")
    return Namespace(**{**values, **given})


@pytest.mark.parametrize("fraction, fix", [(0.1, "no validation video"), (0.9, "no training video")])
def test_a_fraction_that_empties_a_side_is_refused(data, fraction, fix):
    with pytest.raises(UserError, match=f"--val_fraction {fraction}: .*leaves {fix}; pass a fraction"):
        held_out_sets(options(val_fraction=fraction), load_training_json(data[0]), None)


def test_held_out_data_must_match_the_training_data(data, tmp_path):
    train_json, held_json = data
    with pytest.raises(UserError, match="video demo_000 is also in --train_data"):
        held_out_sets(options(val_data=train_json), load_training_json(train_json), None)
    other = make_demo_data(str(tmp_path / "mfcc"), num_videos=1, seconds=2.5, seed=9, audio_feature="mfcc")
    with pytest.raises(UserError, match="52-d mfcc audio features, the training data has 80-d mel"):
        held_out_sets(options(val_data=other), load_training_json(train_json), None)
    with pytest.raises(UserError, match="--val_data and --val_fraction both given"):
        held_out_sets(options(val_data=held_json, val_fraction=0.3), load_training_json(train_json), None)


def test_a_resumed_run_keeps_its_split(data):
    training_set = load_training_json(data[0])
    recorded = {"fraction": 0.34, "seed": 0, "videos": ["demo_002"]}
    kept, held, split = held_out_sets(options(val_fraction=0.34, seed=123), training_set, {"validation_split": recorded})
    assert list(held.videos) == ["demo_002"] and "demo_002" not in kept.videos and split == recorded


def test_lip_shape_scores_tell_the_real_mouth_from_a_copied_one(data):
    """Scored against themselves the real frames give LMD 0 and correlation 1; a mouth copied from one frame onto
    every frame (it does not move) scores worse on both."""
    held = load_training_json(data[1])
    validator = Validator(options(), held, {}, Runtime(torch.device("cpu")))
    real = [video["real"] for video in validator.videos]
    scores = validator.score(real)
    # 0 and 1 up to the rounding of the blend that pastes the mouth into the real crop
    assert scores["lmd_mouth"] == pytest.approx(0, abs=1e-3) and scores["mouth_open_corr"] == pytest.approx(1, abs=1e-3)
    assert scores["faces_missed"] == 0 and scores["psnr"] > 60
    geometry = validator.geometry
    frozen = [frames.clone() for frames in real]
    for frames in frozen:
        frames[..., geometry.mouth_rows, geometry.mouth_cols] = frames[:1, :, geometry.mouth_rows, geometry.mouth_cols]
    copied = validator.score(frozen)
    assert copied["lmd_mouth"] > 0.01 and copied["mouth_open_corr"] < 0.5 and copied["psnr"] < scores["psnr"]


def test_the_clip_stage_validates_with_its_syncnet(clip_assets, tmp_path):
    """Random crops (no face to find): the pixel and SyncNet scores are still logged, for generated and real clips."""
    from engine.clip_stage import ClipStage
    from engine.trainer import train as train_stage
    from test_clip_training import clip_options
    opt = clip_options(clip_assets, tmp_path, "--val_fraction", "0.5", "--val_lpips_weights", "random")
    train_stage(opt, ClipStage)
    line = next(line for line in (tmp_path / "log.txt").read_text().splitlines() if line.startswith("validation at"))
    assert "sync=" in line and "sync_real=" in line and "frames without a detected face" in line
    with open(tmp_path / "metrics.jsonl") as f:
        scored = [json.loads(line) for line in f if '"val/sync"' in line]
    assert len(scored) == 1 and math.isfinite(scored[0]["val/sync"]) and math.isfinite(scored[0]["val/sync_real"])
    assert (tmp_path / "netG_best.pth").is_file()  # nothing measurable yet: the latest epoch stands in


def test_a_syncnet_for_other_data_and_sync_without_a_syncnet_are_refused_before_training(data, clip_assets, tmp_path):
    from config.config import training_parser
    from engine.trainer import train as train_stage
    syncnet_path = clip_assets[3]  # 29-d DeepSpeech, mouth 64; the demo data is 80-d mel
    base = ["--train_data", data[0], "--val_data", data[1], "--mouth_region_size", "64", "--vgg19_weights", "random",
            "--val_lpips_weights", "random", "--device", "cpu", "--result_path", str(tmp_path)]
    opt = training_parser("test", str(tmp_path)).parse_args([*base, "--val_syncnet_path", syncnet_path])
    with pytest.raises(UserError, match=f"--val_syncnet_path {syncnet_path}: this SyncNet reads 29-d"):
        train_stage(opt)
    opt = training_parser("test", str(tmp_path)).parse_args([*base, "--val_metric", "sync"])
    with pytest.raises(UserError, match="--val_metric sync needs a SyncNet"):
        train_stage(opt)
    assert not list(tmp_path.glob("*.pth"))


def test_patience_stops_a_run_once_its_held_out_score_stopped_improving(data, tmp_path):
    """--val_patience 1: the run ends at the first validation that does not beat the best so far, with a checkpoint
    of that epoch (to resume from) and the best epoch's netG_best.pth. The generator does not learn (--lr_g 0; only
    BatchNorm's running statistics move), so its score soon stops improving."""
    train_json, held_json = data
    result, done = train(tmp_path, "patient", train_json, "--val_data", held_json, "--non_decay", "5", "--lr_g", "0",
                         "--val_patience", "1", "--checkpoint", "9", "--val_metric", "l1")
    assert done.returncode == 0, done.stderr[-2000:]
    scores = [float(value) for value in re.findall(r"validation at epoch \d+: .*? l1=([\d.]+)", done.stdout)]
    stall = next((epoch for epoch in range(2, 6) if scores[epoch - 1] >= min(scores[:epoch - 1])), None)
    if stall is None or stall == 5:  # improved at every validation, or stalled at the last epoch anyway
        assert len(scores) == 5 and "stopped after" not in done.stdout
        pytest.skip("the held-out score improved at every epoch: nothing to stop")
    assert len(scores) == stall and f"stopped after epoch {stall} of 5" in done.stdout
    assert "has not improved for 1 validations" in done.stdout
    assert (result / f"netG_model_epoch_{stall}.pth").is_file()
    assert not (result / f"netG_model_epoch_{stall + 1}.pth").exists()
    best = int(np.argmin(scores[:stall])) + 1
    assert load_checkpoint(str(result / "netG_best.pth"), "best")["validation_best"]["epoch"] == best


def test_max_minutes_stops_after_the_epoch_past_which_another_would_not_fit(data, tmp_path):
    train_json, held_json = data
    flags = ("--val_data", held_json, "--val_every", "5", "--non_decay", "6", "--max_minutes", "0.001", "--checkpoint",
             "5")
    result, done = train(tmp_path, "timed", train_json, *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped after epoch 1 of 6" in done.stdout and "--max_minutes 0.001 would be over" in done.stdout
    # validated although epoch 1 is not a --val_every epoch: the run ends there
    assert [line[:22] for line in done.stdout.splitlines() if line.startswith("validation at")] == \
        ["validation at epoch 1:"]
    assert (result / "netG_model_epoch_1.pth").is_file() and (result / "netG_best.pth").is_file()
    _, resumed = train(tmp_path, "timed", train_json, *flags, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "stopped after epoch 2 of 6" in resumed.stdout
    with open(result / "metrics.jsonl") as f:  # epoch 1's validation, logged before the checkpoint resumed, stays
        assert [row["epoch"] for row in map(json.loads, f) if "val/l1" in row] == [1, 2]


def test_a_json_split_holds_the_named_videos_and_the_rest_and_loads_beside_the_original(tmp_path):
    """The demo's split as training JSONs: relative frame paths still resolve, an unknown video is named."""
    path = write_dinet_json(str(tmp_path), videos=3, clips=6, seed=1)
    names = sorted(load_training_json(path).videos)
    trained, held_out = str(tmp_path / "trained.json"), str(tmp_path / "held_out.json")
    write_json_split(path, names[:1], trained, held_out)
    assert sorted(load_training_json(trained).videos) == names[1:]
    assert sorted(load_training_json(held_out).videos) == names[:1]
    with pytest.raises(UserError, match=r"no video nobody"):
        write_json_split(path, ["nobody"], str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(ValueError, match="beside it"):
        write_json_split(path, names[:1], trained, str(other / "x.json"))


def test_while_no_score_can_be_measured_the_latest_model_is_kept_and_patience_waits():
    """Validations whose metric is NaN (no face detected in any generated frame): netG_best.pth follows the latest
    epoch, no early stop counts from them, and the first measured score takes over from there."""
    from engine.trainer import stalled
    from engine.validation import format_scores
    opt = Namespace(val_metric="mouth_open_corr", val_patience=2, val_every=1)
    validator = Validator.__new__(Validator)
    validator.opt, validator.best = opt, None
    kept = [validator.improved({"mouth_open_corr": math.nan}, epoch) for epoch in (1, 2, 3)]
    assert kept == [True, True, True] and validator.best["epoch"] == 3
    assert stalled(opt, validator, 3) is None
    assert "not measured yet, so netG_best.pth is the latest epoch's" in format_scores(3, {}, validator.best, 1.0, 0)
    assert validator.improved({"mouth_open_corr": 0.2}, 4) and not validator.improved({"mouth_open_corr": math.nan}, 5)
    assert not validator.improved({"mouth_open_corr": 0.1}, 6) and validator.best["epoch"] == 4
    assert "has not improved for 2 validations" in stalled(opt, validator, 6)
