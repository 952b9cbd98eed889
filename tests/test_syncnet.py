"""SyncNets: DINet's published layout, the embedding variant, the windows they learn from, and train_syncnet.py."""
import json
import os
import re

import pytest
import torch

from common.errors import UserError
from config.config import syncnet_parser
from conftest import SHARED, write_dinet_json
from data.sync_dataset import SyncDataset, pair_labels, split_videos, video_timelines
from data.training_json import load_training_json
from engine.syncnet_stage import SyncNetStage
from engine.trainer import train
from models.checkpoint import atomic_save, check_syncnet_fits, load_syncnet
from models.syncnet import EmbeddingSyncNet, SyncNet, SyncNetConfig, build_syncnet

SHAPES = os.path.join(SHARED, "fixtures", "dinet_state_dict_shapes.json")
FAST = ["--device", "cpu", "--num_workers", "0", "--mouth_region_size", "64", "--syncnet_input_size", "32",
        "--batch_size", "4", "--non_decay", "1", "--decay", "1", "--checkpoint", "1", "--iterations_per_epoch", "2"]


@pytest.mark.needs_shared("fixtures/dinet_state_dict_shapes.json")
def test_dinet_syncnet_has_the_published_names_and_shapes():
    with open(SHAPES) as f:
        published = json.load(f)["syncnet SyncNet(15,29,128)"]
    assert {key: list(value.shape) for key, value in SyncNet(15, 29, 128).state_dict().items()} == published
    assert sum(p.numel() for p in SyncNet(15, 29, 128).parameters()) == 3_277_121  # 3.28 M, DINet's count


def test_published_syncnet_layout_loads_with_its_audio_width_and_module_prefix(tmp_path):
    torch.manual_seed(0)
    network = SyncNet(15, 29, 128)
    path = str(tmp_path / "syncnet_256mouth.pth")
    # as DINet's DataParallel training saved it: only {"state_dict": {"net": ...}}
    torch.save({"state_dict": {"net": {"module." + k: v for k, v in network.state_dict().items()}}}, path)
    loaded, config = load_syncnet(path)
    assert (config.arch, config.audio_channel, config.audio_feature) == ("dinet", 29, "deepspeech")
    assert config.mouth_region_size is None and config.input_size is None  # not recorded: reads any size as is
    mouths, audio = torch.rand(2, 15, 64, 64), torch.randn(2, 29, 9)
    with torch.no_grad():
        assert torch.equal(loaded(mouths, audio), network.eval()(mouths, audio))
    assert loaded(mouths, audio).shape == (2, 1, 2, 2)  # DINet's score map, mouth / 32
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("arch", ["dinet", "embedding"])
def test_both_architectures_score_in_sync_above_off_sync_after_training_on_one_batch(arch):
    """Can fail: a SyncNet whose loss did not reach the scores would leave them on the wrong side of 0.5."""
    torch.manual_seed(0)
    network = build_syncnet(SyncNetConfig(arch=arch, audio_channel=8, mouth_region_size=64, input_size=32))
    mouths, audio = torch.rand(4, 15, 64, 64), torch.randn(4, 8, 9)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    for _ in range(40):
        optimizer.zero_grad()
        network.loss(mouths, audio, target).backward()
        optimizer.step()
    network.eval()
    with torch.no_grad():
        scores = network.score(mouths, audio)
    assert ((scores > 0.5).float() == target).all(), scores
    if arch == "embedding":
        assert isinstance(network, EmbeddingSyncNet) and ((0 <= scores) & (scores <= 1)).all()


def numbered_audio_set(folder, videos=3):
    """A DINet JSON whose audio vector at frame f of video v is [v, f]: what a window holds is readable."""
    training_set = load_training_json(write_dinet_json(folder, videos=videos, clips=6, width=2))
    for v, name in enumerate(sorted(training_set.videos)):
        for c, clip in enumerate(training_set.videos[name]):
            clip.audio_features = [[float(v), float(c * 9 + f)] for f in range(9)]
    return training_set


def test_windows_are_aligned_in_sync_and_shifted_or_from_another_video_off_sync(tmp_path):
    training_set = numbered_audio_set(str(tmp_path))
    timelines = video_timelines(training_set, sorted(training_set.videos))
    dataset = SyncDataset(timelines, 64, augment_num=4, min_shift=5)
    kinds = set()
    for index in range(len(dataset)):
        video, centre = dataset.items[index]
        item = dataset[(index, index)]
        assert item["mouths"].shape == (15, 64, 64) and item["audio"].shape == (2, 9)
        audio_video, frames = item["audio"][0], item["audio"][1]
        assert torch.equal(frames, frames[4] + torch.arange(-4.0, 5.0))  # 9 consecutive frames
        # mouths are frames centre-2..centre+2 of one clip (clips are joined by their frame numbers)
        assert (centre - 2) // 9 == (centre + 2) // 9
        if item["in_sync"] == 1:
            assert audio_video[0] == video and frames[4] == centre
            kinds.add("in sync")
        elif audio_video[0] == video:
            assert abs(frames[4] - centre) >= 5
            kinds.add("shifted")
        else:
            kinds.add("other video")
    assert kinds == {"in sync", "shifted", "other video"}


def test_batch_pairs_are_in_sync_only_with_their_own_audio_and_near_shifts_are_left_out():
    # windows: video 0 at frames 10, 12 and 30; video 1 at frame 10; each heard with its own audio
    origins = torch.tensor([[0, 10], [0, 12], [0, 30], [1, 10]])
    batch = {"video": origins[:, 0], "centre": origins[:, 1], "audio_video": origins[:, 0], "audio_centre": origins[:, 1]}
    target, weight = pair_labels(batch, min_shift=5)
    assert torch.equal(target, torch.eye(4))
    assert weight[0, 1] == weight[1, 0] == 0  # 2 frames apart: neither in nor clearly out of sync
    assert weight[0, 2] > 0 and weight[0, 3] > 0
    # in sync: half the weight; the same video 5+ frames away (4 pairs): a quarter; other videos: a quarter
    assert weight[target == 1].sum() == pytest.approx(0.5) and weight[0, 2] * 4 == pytest.approx(0.25)
    assert weight.sum() == pytest.approx(1.0)


def test_held_out_split_is_by_video_and_its_set_is_balanced_and_fixed(tmp_path):
    training_set = numbered_audio_set(str(tmp_path), videos=4)
    training, held_out = split_videos(training_set, 0.25, seed=1)
    assert len(held_out) == 1 and not set(training) & set(held_out) and len(training) == 3
    first = SyncDataset(video_timelines(training_set, held_out), 64, fixed_seed=7)
    second = SyncDataset(video_timelines(training_set, held_out), 64, fixed_seed=7)
    labels = [first[i]["in_sync"].item() for i in range(len(first))]
    assert labels.count(1.0) == labels.count(0.0) == len(first) // 2
    assert all(torch.equal(first[i]["audio"], second[i]["audio"]) for i in range(len(first)))
    with pytest.raises(UserError, match="holds out whole videos.*has 1; prepare at least 2 videos"):
        split_videos(numbered_audio_set(str(tmp_path / "one"), videos=1), 0.1, seed=1)


def test_syncnet_that_does_not_fit_the_generators_data_is_a_one_line_error():
    mel_256 = SyncNetConfig(arch="dinet", audio_channel=80, audio_feature="mel", mouth_region_size=256, input_size=64)
    check_syncnet_fits(mel_256, "s.pth", 256, "mel", 80)  # fits
    with pytest.raises(UserError, match=r"s.pth: this SyncNet reads 80-d mel audio, the training data has 29-d "
                                         r"deepspeech features; train one on this data: python train_syncnet.py"):
        check_syncnet_fits(mel_256, "s.pth", 256, "deepspeech", 29)
    with pytest.raises(UserError, match=r"trained on mouth 256 crops, this run uses --mouth_region_size 128"):
        check_syncnet_fits(mel_256, "s.pth", 128, "mel", 80)
    with pytest.raises(UserError, match=r"trained on mel audio, the training data has mfcc80 features"):
        check_syncnet_fits(mel_256, "s.pth", 256, "mfcc80", 80)


def test_not_a_syncnet_file_is_a_one_line_error(tmp_path):
    atomic_save({"epoch": 3, "state_dict": {"net_g": {}}}, str(tmp_path / "netG_model_epoch_2.pth"))
    with pytest.raises(UserError, match=r"netG_model_epoch_2.pth: not a SyncNet checkpoint"):
        load_syncnet(str(tmp_path / "netG_model_epoch_2.pth"))


@pytest.fixture(scope="module")
def syncnet_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("syncnet_run")
    json_path = write_dinet_json(str(folder), videos=3, clips=12, width=29)  # 2 training videos, 112 windows
    opt = syncnet_parser("test", str(folder / "run")).parse_args(
        ["--train_data", json_path, "--result_path", str(folder / "run"), "--syncnet_path", str(folder / "s.pth"),
         "--syncnet_arch", "embedding", *FAST])
    train(opt, SyncNetStage)
    return folder, json_path


def test_train_syncnet_logs_held_out_accuracy_per_epoch_and_saves_dinets_layout(syncnet_run):
    folder, _ = syncnet_run
    log = (folder / "run" / "log.txt").read_text().splitlines()
    held_out = [float(match.group(1)) for match in (re.match(r"===> Epoch\[\d\] held-out \(\d+ windows, 1 videos\): "
                                                            r"accuracy (\d\.\d{4}) loss \d+\.\d{4}$", line)
                                                   for line in log) if match]
    with open(folder / "run" / "metrics.jsonl") as f:
        epochs = [row for row in map(json.loads, f) if "held_out_accuracy" in row]
    assert [row["epoch"] for row in epochs] == [1, 2] and len(held_out) == 2
    # the run ends with the last epoch's held-out accuracy, the one the saved SyncNet records too
    final = torch.load(folder / "s.pth", weights_only=False)
    last = epochs[-1]["held_out_accuracy"]
    assert log[-1] == f"held-out accuracy: {last:.4f}" and held_out[-1] == round(last, 4)
    assert final["held_out_accuracy"] == last
    assert set(final["state_dict"]) == {"net"}
    assert final["syncnet_config"]["arch"] == "embedding" and final["syncnet_config"]["input_size"] == 32
    assert (final["mouth_region_size"], final["audio_feature"]) == (64, "deepspeech")
    epoch_2 = torch.load(folder / "run" / "syncnet_model_epoch_2.pth", weights_only=False)
    assert set(epoch_2["optimizer"]) == {"net"} and epoch_2["epoch"] == 3
    network, config = load_syncnet(str(folder / "s.pth"))
    assert isinstance(network, EmbeddingSyncNet) and config.mouth_region_size == 64


def test_resumed_syncnet_run_continues_the_uninterrupted_one(syncnet_run, tmp_path):
    folder, json_path = syncnet_run
    opt = syncnet_parser("test", str(tmp_path)).parse_args(
        ["--train_data", json_path, "--result_path", str(tmp_path), "--syncnet_path", str(tmp_path / "s.pth"),
         "--resume", str(folder / "run" / "syncnet_model_epoch_1.pth"), *FAST])  # the arch comes from the file
    train(opt, SyncNetStage)
    with open(folder / "run" / "metrics.jsonl") as f:
        full = [row for row in map(json.loads, f) if row["epoch"] == 2 and "Loss_sync" in row]
    with open(tmp_path / "metrics.jsonl") as f:
        resumed = [row for row in map(json.loads, f) if "Loss_sync" in row]
    assert [row["step"] for row in resumed] == [row["step"] for row in full] == [2, 3]
    for a, b in zip(full, resumed):
        assert a["Loss_sync"] == pytest.approx(b["Loss_sync"], rel=1e-5, abs=1e-6)
