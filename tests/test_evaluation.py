"""evaluate.py: lip-sync distance and confidence, reconstruction metrics, and clear errors."""
import csv
import os
import shutil
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from conftest import ROOT, refusal
from data.procedural_faces import make_demo_data
from evaluation.reconstruction import frechet_distance, psnr, ssim
from evaluation.sync import sync_score
from media.ffmpeg import probe
from models.checkpoint import atomic_save
from models.syncnet import SyncNetConfig, build_syncnet


def test_psnr_and_ssim_are_perfect_for_identical_frames_and_fall_with_noise():
    torch.manual_seed(0)
    real = torch.rand(2, 3, 32, 32)
    noisy = (real + 0.1 * torch.randn_like(real)).clamp(0, 1)
    assert psnr(real, real).min() >= 99 and torch.allclose(ssim(real, real), torch.ones(2))
    assert 15 < psnr(noisy, real).mean() < 25 and ssim(noisy, real).mean() < 0.95


def test_frechet_distance_is_zero_for_the_same_features_and_grows_with_a_shift():
    features = np.random.default_rng(0).normal(size=(200, 4))
    assert abs(frechet_distance(features, features)) < 1e-6
    assert frechet_distance(features, features + 1.0) == pytest.approx(4.0, rel=0.05)


class MeanColour(torch.nn.Module):
    """Face code: the mean colour of each of the 5 frames, (N, 15, 1, 1)."""

    def forward(self, mouths):
        return mouths.mean(dim=(2, 3), keepdim=True)


class MiddleFrames(torch.nn.Module):
    """Audio code: the 5 middle vectors of the 9-frame window, frame-major like the stacked mouths, (N, 15)."""

    def forward(self, audio):
        return audio[:, :, 2:7].transpose(1, 2).flatten(1)


def test_sync_score_finds_the_lag_between_mouths_and_audio():
    """An embedding SyncNet whose codes agree exactly when the audio under a mouth is its own: LSE-D is 0 at the
    lag the audio was given, and the confidence is large."""
    network = build_syncnet(SyncNetConfig(arch="embedding", audio_channel=3, mouth_region_size=8, input_size=None))
    network.face_encoder, network.audio_encoder = MeanColour(), MiddleFrames()
    colours = np.random.default_rng(1).random((80, 3)).astype(np.float32)
    mouths = np.repeat(np.repeat((colours[:, None, None, :] * 255).round().astype(np.uint8), 8, 1), 8, 2)
    heard = mouths.reshape(80, -1, 3)[:, 0].astype(np.float32) / 255  # exactly what the face code sees
    aligned = sync_score(network, mouths, heard)
    assert aligned.offset == 0 and aligned.lse_d < 1e-5 and aligned.lse_c > 0.1
    late = sync_score(network, mouths, np.roll(heard, 3, axis=0))  # the audio of frame t comes at t + 3
    assert late.offset == 3 and late.lse_d < 0.05


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_demo")
    make_demo_data(str(folder), num_videos=1, seconds=1.0, seed=5)  # 25 frames, enough for LSE
    syncnet = str(folder / "syncnet.pth")
    torch.manual_seed(0)
    config = SyncNetConfig(arch="embedding", audio_channel=80, audio_feature="mel", mouth_region_size=64,
                           input_size=32)
    atomic_save({"state_dict": {"net": build_syncnet(config).state_dict()}, "syncnet_config": config.to_dict()},
                syncnet)
    return folder, syncnet


def run_evaluate(*args):
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_evaluate_scores_each_video_by_its_own_audio_and_writes_the_table(demo, tmp_path):
    """The source's frames with a silent track: every audio window is the same, so no offset can stand out
    (LSE-C 0), while the source itself, scored by its own speech, has one that does; the frames, and so the mouths,
    are the same. The source given is the first 17 of its 25 frames, losslessly: a dub as long as its speech is
    longer or shorter than its source, and the two are compared over the frames both have."""
    folder, syncnet = demo
    source = str(folder / "split_video_25fps" / "demo_000.mp4")
    silent, cut, faceless = str(tmp_path / "silent.mp4"), str(tmp_path / "cut.mp4"), str(tmp_path / "faceless.mp4")
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", source]
    subprocess.run([*ffmpeg, "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "aac", "-shortest", silent], check=True)
    subprocess.run([*ffmpeg, "-frames:v", "17", "-c:v", "libx264", "-qp", "0", "-c:a", "copy", cut], check=True)
    # a dub whose face is gone (a failed tool's): grey frames, the speech kept
    subprocess.run([*ffmpeg, "-frames:v", "17", "-vf", "drawbox=c=gray:t=fill", "-c:a", "copy", faceless], check=True)
    result = run_evaluate("--videos", silent, faceless, "--sources", cut, cut, "--syncnet_path", syncnet,
                          "--lpips_weights", "random", "--csv", str(tmp_path / "scores.csv"), "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "scores.csv") as f:
        row, failed, mean = csv.DictReader(f)
    # counted in the mean as the protocol counts a dub without a face, not skipped: its lips cannot be read
    assert failed["video"] == "faceless.mp4" and float(failed["PSNR face"]) < float(row["PSNR face"]) / 2
    assert all(failed[column] == "nan" for column in ("LSE-D repo", "lmd_mouth", "mouth_open_corr"))
    assert mean["video"] == "mean of 2" and float(mean["PSNR face"]) < float(row["PSNR face"])
    # its lip scores are the other video's alone, and the table says so
    assert "lmd_mouth, mouth_open_corr over the 1 of 2 videos" in (tmp_path / "scores.md").read_text()
    assert int(row["frames"]) == 17 and row["source"] == "cut.mp4"  # compared, and with what
    assert f"{silent}: 25 frames, its source 17: compared over the first 17" in result.stdout
    for region in ("mouth", "face"):  # in the source's face crops, as the protocol scores
        assert float(row[f"PSNR {region}"]) > 90 and float(row[f"SSIM {region}"]) > 0.999
        assert float(row[f"LPIPS {region}"]) < 1e-3
    assert abs(float(row["LSE-C repo"])) < 1e-6 < float(row["source LSE-C repo"])
    # the same mouths; landmarks are smoothed over time, so near the cut's end the cut's differ a little
    assert float(row["lmd_mouth"]) < 0.005 and float(row["mouth_open_corr"]) > 0.99


@pytest.mark.parametrize("args,message", [
    (["--videos", "/nonexistent.mp4"], "/nonexistent.mp4: no such video"),
    (["--syncnet_path", "/nonexistent.pth"], "--syncnet_path /nonexistent.pth: no such checkpoint file"),
])
def test_bad_evaluation_input_is_one_line_and_nonzero_exit(demo, args, message):
    folder, syncnet = demo
    base = ["--videos", str(folder / "split_video_25fps" / "demo_000.mp4"), "--syncnet_path", syncnet]
    result = run_evaluate(*base, *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)


def test_a_face_crop_scored_against_its_whole_source_is_refused_without_telling_to_stretch_it(demo, tmp_path,
                                                                                            monkeypatch, capsys):
    """Some dubbing tools write the face crop alone: scaled to its source's size it would be stretched, and its face
    still elsewhere than the source's, so the fix offered is a source cropped alike, or no --sources."""
    folder, syncnet = demo
    source, crop = str(folder / "split_video_25fps" / "demo_000.mp4"), str(tmp_path / "crop.mp4")
    width, height = probe(source)["width"], probe(source)["height"]
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", source, "-vf",
                    f"crop={width // 2}:{height}", "-c:a", "copy", crop], check=True)
    message = refusal("evaluate.py", ["--videos", crop, "--sources", source, "--syncnet_path", syncnet, "--csv",
                                      str(tmp_path / "scores.csv"), "--device", "cpu"], monkeypatch, capsys)
    assert message.startswith(f"{crop}: {width // 2}x{height}, and its source {source} {width}x{height}")
    assert "scale=" not in message and "--sources" in message
    assert not (tmp_path / "scores.csv").exists()


def test_a_dub_without_audio_is_refused_with_the_command_that_adds_its_speech(demo, tmp_path, monkeypatch, capsys):
    """Other tools may write the frames alone: LSE needs the speech back in, which ffmpeg adds without re-encoding."""
    folder, syncnet = demo
    source, silent = str(folder / "split_video_25fps" / "demo_000.mp4"), str(tmp_path / "frames_only.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", source, "-an", "-c:v", "copy",
                    silent], check=True)
    argv = ["--videos", silent, "--syncnet_path", syncnet, "--csv", str(tmp_path / "scores.csv"), "--device", "cpu"]
    message = refusal("evaluate.py", argv, monkeypatch, capsys)
    assert message.startswith(f"{silent}: no audio stream") and f"ffmpeg -i {silent} -i " in message
    assert "--sources" not in message
    message = refusal("evaluate.py", [*argv, "--sources", source], monkeypatch, capsys)
    assert f"ffmpeg -i {silent} -i {source} -map 0:v -map 1:a" in message and "drop --syncnet_path" in message
    assert not (tmp_path / "scores.csv").exists()


def test_the_same_clip_dubbed_by_two_tools_is_two_rows_told_apart(demo, tmp_path, monkeypatch):
    folder, syncnet = demo
    source = folder / "split_video_25fps" / "demo_000.mp4"
    dubs = [str(tmp_path / tool / "demo_000.mp4") for tool in ("wav2lip", "latentsync")]
    for dub in dubs:
        os.makedirs(os.path.dirname(dub))
        shutil.copy(source, dub)
    monkeypatch.chdir(ROOT)
    from evaluate import main
    with open(main(["--videos", *dubs, "--syncnet_path", syncnet, "--csv", str(tmp_path / "scores.csv"),
                    "--device", "cpu"])) as f:
        assert [row["video"] for row in csv.DictReader(f)] == [*dubs, "mean of 2"]


def test_lpips_with_a_random_trunk_scores_alike_in_every_run_and_draws_none_of_the_callers_numbers():
    """Offline, `--lpips_weights random` is the choice left: its trunk is drawn from a seed of its own, so a table
    made today compares with one made tomorrow, and building it moves no random number of the run that builds it."""
    from models.lpips_loss import LPIPS
    fake, real = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).unbind(0)
    torch.manual_seed(5)
    drawn = torch.rand(3)
    torch.manual_seed(5)
    first = LPIPS("random")(fake[None], real[None])
    assert torch.equal(torch.rand(3), drawn)
    torch.manual_seed(6)  # another run's seed
    assert torch.equal(LPIPS("random")(fake[None], real[None]), first)


def test_the_mean_row_leaves_out_every_offset_the_sources_own_too():
    """An offset is one video's lag: a mean of a source lagging -15 frames and another 14 says nothing, with or
    without the `source ` prefix --sources adds to the sources' own columns."""
    from evaluate import mean_row
    rows = [{"video": "a.mp4", "frames": 20, "offset repo": -15, "source offset repo": -15, "lmd_mouth": 0.1},
            {"video": "b.mp4", "frames": 30, "offset repo": 14, "source offset repo": 14, "lmd_mouth": 0.3}]
    mean = mean_row(rows, [])
    assert mean["frames"] == 50 and mean["lmd_mouth"] == pytest.approx(0.2)
    assert "offset repo" not in mean and "source offset repo" not in mean
