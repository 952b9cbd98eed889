"""evaluate.py --protocol self_reconstruction: a checkpoint's held-out videos dubbed with their own audio and scored
against their real frames beside the two baselines; and the lip-shape scores it reports, on real footage (the
detector's noise floor, and a copy a few frames late) and on a mouth that barely moves."""
import csv
import os
import subprocess
import sys

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
import torch
from conftest import ROOT, SHARED, refusal
from test_inference import checkpoint  # noqa: F401  (fixture: an untrained mel generator at mouth 64)

from common.errors import UserError
from data.procedural_faces import (
    SAMPLE_RATE,
    FaceStyle,
    mouth_openings,
    render_talking_face,
    synthesize_speech,
)
from evaluation.baselines import reencode
from evaluation.identity import ARCFACE_TEMPLATE, aligned_face, five_points
from evaluation.lip_shape import lip_shape_scores, lmd_mouth, mouth_open_corr
from evaluation.protocol import LandmarkedVideo
from media.encoder import write_video
from models.checkpoint import atomic_save
from models.face_recognition import IResNet, load_face_recognition
from models.lse_syncnet import LseSyncNet
from models.syncnet import SyncNetConfig, build_syncnet

FFMPEG = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error"]
COLUMNS = ["video", "kind", "frames", "PSNR mouth", "SSIM mouth", "LPIPS mouth", "PSNR face", "SSIM face",
           "LPIPS face", "LSE-D repo", "LSE-C repo", "offset repo", "LSE-D syncnet_v2", "LSE-C syncnet_v2",
           "offset syncnet_v2", "lmd_mouth", "mouth_open_corr", "identity_cos", "dub frames/s", "dub memory MB"]


def test_a_mouth_that_barely_moves_scores_about_zero_correlation_even_in_time_with_the_real_one():
    """A pasted, still mouth keeps a little motion the detector reads from the real jaw around it, in time with the
    real mouth: mouth_open_corr must not take that for speech."""
    wav, spreads = synthesize_speech(np.random.default_rng(1), 3.0)
    _, real = render_talking_face(FaceStyle.draw(np.random.default_rng(0)), mouth_openings(wav), spreads)
    closed = real.mean(axis=0)
    barely = closed + 0.02 * (real - closed)  # every point 2% of the way from the mean face to the real one
    assert mouth_open_corr(barely, real) < 0.1
    assert mouth_open_corr(real + 0.3, real) == pytest.approx(1)  # while the real mouth, anywhere, still scores 1
    assert lmd_mouth(barely, real) > 0.01


@pytest.mark.needs_shared("data/talking_head_a.mp4")
def test_on_real_footage_a_reencoded_copy_scores_the_detectors_noise_floor_and_a_late_copy_clearly_worse(tmp_path):
    source, reencoded, late = (str(tmp_path / name) for name in ("source.mp4", "reencoded.mp4", "late.mp4"))
    subprocess.run([*FFMPEG, "-i", os.path.join(SHARED, "data/talking_head_a.mp4"), "-t", "4", "-c", "copy", source],
                   check=True)
    reencode(source, reencoded, torch.device("cpu"))
    # frame t of the late copy is frame t + 3 of the source: the mouth 120 ms ahead of the real one
    subprocess.run([*FFMPEG, "-i", source, "-vf", "trim=start_frame=3,setpts=PTS-STARTPTS", "-an", "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "18", late], check=True)
    real = LandmarkedVideo.open(source, progress=False)
    real.close()

    def scores(path):
        video = LandmarkedVideo.open(path, progress=False)
        video.close()
        count = min(len(video), len(real))
        both = video.found[:count] & real.found[:count]
        return lip_shape_scores(video.landmarks[:count], real.landmarks[:count], both)
    floor, shifted = scores(reencoded), scores(late)
    assert floor["lmd_mouth"] < 0.01 and floor["mouth_open_corr"] > 0.95, floor
    assert shifted["lmd_mouth"] > 3 * floor["lmd_mouth"] + 0.01 and shifted["mouth_open_corr"] < 0.8, shifted


def test_face_alignment_puts_the_five_points_on_arcfaces_template():
    """A face turned 20 degrees, 2.5 times the template's size, elsewhere in the frame: aligned, its eye centres,
    nose tip and mouth corners land where ArcFace's template has them."""
    landmarks = np.zeros((68, 2))
    landmarks[36:42], landmarks[42:48] = ARCFACE_TEMPLATE[0], ARCFACE_TEMPLATE[1]
    landmarks[30], landmarks[48], landmarks[54] = ARCFACE_TEMPLATE[2], ARCFACE_TEMPLATE[3], ARCFACE_TEMPLATE[4]
    angle = np.radians(20)
    rotation = 2.5 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    in_frame = landmarks @ rotation.T + (300, 200)
    frame = np.zeros((600, 700, 3), np.uint8)
    for x, y in five_points(in_frame):
        cv2.circle(frame, (round(x), round(y)), 6, (255, 255, 255), -1)
    face = aligned_face(frame, in_frame)[..., 0].astype(float)
    for x, y in ARCFACE_TEMPLATE:
        assert face[round(y), round(x)] > 200  # a dot's centre
    assert face.mean() < 40  # and only the dots


@pytest.fixture(scope="module")
def face_recognition(tmp_path_factory):
    """A randomly initialised iresnet18 saved as arcface_torch saves backbone.pth: its state dict."""
    torch.manual_seed(0)
    network = IResNet((2, 2, 2, 2)).eval()
    path = str(tmp_path_factory.mktemp("arcface") / "backbone.pth")
    torch.save(network.state_dict(), path)
    return network, path


def test_arcface_backbone_loads_as_a_state_dict_of_any_depth_and_others_are_named(face_recognition, tmp_path):
    network, path = face_recognition
    loaded = load_face_recognition(path)
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(faces), network(faces)) and loaded(faces).shape == (2, 512)
    torch.save(LseSyncNet().state_dict(), tmp_path / "syncnet_v2.model")
    with pytest.raises(UserError) as error:
        load_face_recognition(str(tmp_path / "syncnet_v2.model"))
    assert str(error.value).startswith(f"--identity_weights {tmp_path / 'syncnet_v2.model'}: not an arcface_torch "
                                       f"iresnet") and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, checkpoint, face_recognition):  # noqa: F811
    """A 0.8 s procedural talking face (20 frames: LSE needs 15, and LPIPS costs about a quarter second a face on
    one core), a grey video without a face, both with speech, and untrained networks for every score."""
    folder = tmp_path_factory.mktemp("protocol")
    rng = np.random.default_rng(4)
    wav, spreads = synthesize_speech(rng, 0.8)
    frames, _ = render_talking_face(FaceStyle.draw(rng), mouth_openings(wav), spreads)
    soundfile.write(folder / "speech.wav", wav, SAMPLE_RATE)
    write_video(str(folder / "talk.mp4"), frames, audio_path=str(folder / "speech.wav"))
    write_video(str(folder / "grey.mp4"), np.full((20, 64, 64, 3), 128, np.uint8),
                audio_path=str(folder / "speech.wav"))
    torch.manual_seed(0)
    config = SyncNetConfig(arch="embedding", audio_channel=80, audio_feature="mel", mouth_region_size=64, input_size=32)
    atomic_save({"state_dict": {"net": build_syncnet(config).state_dict()}, "syncnet_config": config.to_dict()},
                str(folder / "syncnet.pth"))
    torch.save(LseSyncNet().state_dict(), folder / "syncnet_v2.model")
    return dict(talk=str(folder / "talk.mp4"), grey=str(folder / "grey.mp4"), checkpoint=checkpoint,
                syncnet=str(folder / "syncnet.pth"), syncnet_v2=str(folder / "syncnet_v2.model"),
                arcface=face_recognition[1])


def test_protocol_dubs_each_video_and_scores_it_beside_both_baselines_in_csv_and_markdown(demo, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "evaluate.py", "--protocol", "self_reconstruction", "--videos",
                             demo["talk"], demo["grey"], "--checkpoint", demo["checkpoint"], "--syncnet_path",
                             demo["syncnet"], "--lse_syncnet_path", demo["syncnet_v2"], "--identity_weights",
                             demo["arcface"], "--lpips_weights", "random", "--out_dir", str(out), "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipped {demo['grey']}: no face found in any frame" in result.stdout
    with open(out / "self_reconstruction.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = {(row["video"], row["kind"]): row for row in reader}
    kinds = ("dubbed", "real (re-encoded)", "reference copy")
    assert list(rows) == [("talk.mp4", kind) for kind in kinds] + [("mean of 1 (1 skipped)", kind) for kind in kinds]
    dubbed, real, copy = (rows["talk.mp4", kind] for kind in kinds)
    assert int(real["frames"]) == 20
    # the real video re-encoded: the detector's noise floor, and the same face
    assert float(real["lmd_mouth"]) < 0.01 and float(real["mouth_open_corr"]) > 0.9
    assert float(real["PSNR mouth"]) > 35 and float(real["identity_cos"]) > 0.99
    # one reference frame's mouth in every frame: a mouth that does not speak
    assert abs(float(copy["mouth_open_corr"])) < 0.2 and float(copy["lmd_mouth"]) > 2 * float(real["lmd_mouth"])
    assert float(copy["PSNR mouth"]) < float(real["PSNR mouth"])
    assert float(dubbed["dub frames/s"]) > 0 and float(dubbed["dub memory MB"]) > 0 and real["dub frames/s"] == ""
    for (video, _), row in rows.items():  # a mean row has no offset: each video's lag is its own
        blank = {"offset repo", "offset syncnet_v2"} if video.startswith("mean") else set()
        assert all((row[column] == "") == (column in blank) for column in COLUMNS[:-2]), row
    document = (out / "self_reconstruction.md").read_text()
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in document.splitlines()
             if line.startswith("|")]
    assert table[0] == COLUMNS and [line[:2] for line in table[2:]] == [list(key) for key in rows]
    assert f"- skipped {demo['grey']}: no face found in any frame" in document
    assert sorted(os.listdir(out / "videos")) == ["talk_dubbed.mp4", "talk_real_reencoded.mp4",
                                                  "talk_reference_copy.mp4"]


@pytest.mark.parametrize("args,expected", [
    ("--videos {talk}", "--protocol self_reconstruction needs --checkpoint PATH"),
    ("--videos {talk} --checkpoint {checkpoint} --sources {talk}", "--sources: --protocol self_reconstruction scores"),
    ("--videos {talk} {talk} --checkpoint {checkpoint}", "--videos: two videos named talk"),
    ("--videos {talk} --checkpoint {checkpoint} --identity_weights {syncnet_v2}",
     "--identity_weights {syncnet_v2}: not an arcface_torch iresnet"),
    ("--videos {talk} --checkpoint {syncnet}", "--checkpoint {syncnet}: not a generator checkpoint"),
    ("--videos {grey} --checkpoint {checkpoint}", "{grey}: no face found in any frame"),
])
def test_bad_protocol_input_is_one_line_and_leaves_no_table(demo, args, expected, tmp_path, monkeypatch, capsys):
    argv = [piece.format(**demo) for piece in args.split()]
    message = refusal("evaluate.py", ["--protocol", "self_reconstruction", *argv, "--out_dir", str(tmp_path / "out"),
                                      "--lpips_weights", "random", "--device", "cpu"], monkeypatch, capsys)
    assert message.startswith(expected.format(**demo)), message
    assert not os.path.exists(tmp_path / "out" / "self_reconstruction.csv")
