"""export.py and inference.py --onnx: every lab's generator exported to ONNX gives PyTorch's faces to 1e-4 (float32)
at any batch size, and onnxruntime dubs through the same pipeline as PyTorch. Untrained generators at mouth 64, their
BatchNorm statistics taken from one random batch so that every layer carries a full-scale signal."""
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.geometry import CropGeometry
from conftest import ROOT, refusal
from config.labs import LAB_PRESETS, generator_config
from dubbing.pipeline import dub, load_generator
from evaluation.reconstruction import psnr
from footage import SOURCES, short_clip, speech
from media.decoder import read_video_frames
from media.ffmpeg import probe
from models import DINet
from models.checkpoint import atomic_save
from models.syncnet import SyncNetConfig, build_syncnet

onnxruntime = pytest.importorskip("onnxruntime", reason="pip install -r requirements-app.txt")
from dubbing.onnx_generator import INPUTS, export_onnx, sample_inputs  # noqa: E402

MOUTH = 64


def lab_configs():
    """Each distinct generator of the labs, on the audio features its preset trains on (mel where it names none):
    lab5 and lab7 are one network on mel features. The fewest that hold every value of every option between them
    run by default (an exporter fails on a layer, which they all export); the rest, their combinations, are slow."""
    configs = {}
    for lab, preset in LAB_PRESETS.items():
        config = generator_config(lab, 80, audio_feature=preset.get("audio_feature", "mel"))
        configs.setdefault(config, []).append(lab)
    options = {config: set(config.to_dict().items()) for config in configs}
    covering, uncovered = [], set().union(*options.values())
    while uncovered:
        covering.append(max(configs, key=lambda config: len(options[config] & uncovered)))
        uncovered -= options[covering[-1]]
    return [pytest.param(config, id="+".join(labs), marks=() if config in covering else pytest.mark.slow)
            for config, labs in configs.items()]


def trained_like(config, seed=0):
    """An untrained generator whose BatchNorms hold the statistics of one batch of random inputs (with fresh ones each
    layer shrinks the signal and every face is a flat grey: a comparison that could not tell much)."""
    torch.manual_seed(seed)
    network = DINet.from_config(config)
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    reference, masked, audio = sample_inputs(CropGeometry(MOUTH), config.audio_channel, batch=4, seed=seed + 1)
    with torch.no_grad():
        network.train()(masked, reference.expand(4, -1, -1, -1), audio)
    return network.eval()


def save_checkpoint(network, path):
    """As training saves a generator."""
    atomic_save({"epoch": 3, "state_dict": {"net_g": network.state_dict()}, "generator_config": network.config.to_dict(),
                 "mouth_region_size": MOUTH, "audio_feature": "mel"}, str(path))
    return str(path)


@pytest.mark.parametrize("config", lab_configs())
def test_every_lab_exports_to_onnx_with_pytorchs_faces_at_any_batch_size(config, tmp_path):
    network = trained_like(config)
    generator = load_generator(save_checkpoint(network, tmp_path / "netG_best.pth"), torch.device("cpu"))
    path = tmp_path / "generator.onnx"
    export_onnx(generator, str(path), source="netG_best.pth")
    runtime = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert runtime.get_modelmeta().custom_metadata_map["dinet.mouth_region_size"] == str(MOUTH)
    for batch in (1, 5):  # neither the batch traced nor the one export_onnx checks
        reference, masked, audio = sample_inputs(CropGeometry(MOUTH), config.audio_channel, batch, seed=10 + batch)
        faces = runtime.run(None, dict(zip(INPUTS, (reference.numpy(), masked.numpy(), audio.numpy()))))[0]
        with torch.no_grad():
            expected = network(masked, reference, audio).numpy()
        assert faces.shape == expected.shape == (batch, 3, CropGeometry(MOUTH).height, CropGeometry(MOUTH).width)
        assert expected.std() > 0.02  # faces with content, not a flat grey
        assert np.abs(faces - expected).max() <= 1e-4


@pytest.mark.needs_shared(*SOURCES)
def test_inference_dubs_with_the_onnx_export_alone_as_pytorch_does(tmp_path, monkeypatch, capsys):
    """export.py (run in this process, as typed) then inference.py --onnx with no checkpoint given: the video PyTorch
    dubs in float32."""
    checkpoint = save_checkpoint(trained_like(generator_config("lab1", 80)), tmp_path / "netG_best.pth")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["export.py", "--checkpoint", checkpoint, "--out", str(tmp_path / "g.onnx")])
    runpy.run_path(os.path.join(ROOT, "export.py"), run_name="__main__")
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'g.onnx'}: mouth 64, mel features")
    clip, audio = str(tmp_path / "clip.mp4"), str(tmp_path / "speech.wav")
    short_clip(clip, seconds=1)
    seconds = speech(audio, seconds=1.6)
    given = ["--onnx", str(tmp_path / "g.onnx"), "--source_video_path", clip, "--driving_audio_path", audio,
             "--res_video_dir", str(tmp_path / "refused"), "--device", "cpu"]
    assert "exported at mouth 64, but --mouth_region_size is 128" in refusal(
        "inference.py", [*given, "--mouth_region_size", "128"], monkeypatch, capsys)
    assert "both name the generator; pass one of them" in refusal(
        "inference.py", [*given, "--pretrained_clip_DINet_path", checkpoint], monkeypatch, capsys)
    os.rename(checkpoint, tmp_path / "kept.pth")  # the export alone dubs
    run = subprocess.run([sys.executable, "inference.py", "--onnx", str(tmp_path / "g.onnx"), "--source_video_path",
                          clip, "--driving_audio_path", audio, "--res_video_dir", str(tmp_path / "onnx"),
                          "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(onnxruntime)" in run.stdout
    output = tmp_path / "onnx" / "clip_facial_dubbing_add_audio.mp4"
    assert abs(probe(str(output))["duration"] - seconds) < 0.1
    os.rename(tmp_path / "kept.pth", checkpoint)
    dub(clip, audio, load_generator(checkpoint, torch.device("cpu")), str(tmp_path / "torch.mp4"), torch.device("cpu"),
        amp="off", progress=False)
    onnx_frames, torch_frames, source = (np.stack(list(read_video_frames(path))).astype(np.float32)
                                         for path in (str(output), str(tmp_path / "torch.mp4"), clip))
    assert onnx_frames.shape == torch_frames.shape == (40, *source.shape[1:])
    difference = np.abs(onnx_frames - torch_frames)
    # the same first frame, up to a rounding of the generator's float faces (which can turn a decision of x264's,
    # changing a block by a few levels): 75 dB apart where they were measured, the dubbed mouths 35 dB from the source
    assert psnr(*(torch.from_numpy(frames[:1] / 255) for frames in (onnx_frames, torch_frames))).item() > 60
    assert difference.mean() < 0.25  # later frames predict from earlier ones: x264 carries such a rounding on
    assert np.abs(onnx_frames[:25] - source).max() > 50        # and the generator's mouths in it


def test_a_checkpoint_that_is_no_generator_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    syncnet = str(tmp_path / "syncnet.pth")
    atomic_save({"state_dict": {"net": build_syncnet(SyncNetConfig()).state_dict()}}, syncnet)
    message = refusal("export.py", ["--checkpoint", syncnet, "--out", str(tmp_path / "g.onnx")], monkeypatch, capsys)
    assert message.startswith(f"--checkpoint {syncnet}: not a generator checkpoint")
    assert sorted(os.listdir(tmp_path)) == ["syncnet.pth"]


@torch.library.custom_op("dinet_tests::opaque", mutates_args=())
def opaque(faces: torch.Tensor) -> torch.Tensor:
    """An operation with no ONNX translation, as a user's own lab might add."""
    return faces.clone()


@opaque.register_fake
def _(faces):
    return torch.empty_like(faces)


class Opaque(torch.nn.Module):
    def forward(self, faces):
        return opaque(faces)


def test_a_generator_the_exporter_cannot_translate_is_refused_with_the_reason_and_nothing_is_written(tmp_path):
    generator = load_generator(save_checkpoint(trained_like(generator_config("lab1", 80)), tmp_path / "netG.pth"),
                               torch.device("cpu"))
    last = [name for name, module in generator.network.named_modules() if isinstance(module, torch.nn.Conv2d)][-1]
    parent, _, attribute = last.rpartition(".")
    owner = generator.network.get_submodule(parent)
    setattr(owner, attribute, torch.nn.Sequential(getattr(owner, attribute), Opaque()))
    with pytest.raises(UserError) as refused:
        export_onnx(generator, str(tmp_path / "g.onnx"), source="netG.pth")
    message = str(refused.value)
    assert message.startswith("--checkpoint netG.pth: ") and "cannot be exported to ONNX (" in message, message
    assert "dinet_tests" in message or "opaque" in message, message  # the reason names the operation
    assert "\n" not in message
    assert sorted(os.listdir(tmp_path)) == ["netG.pth"]


def test_an_export_into_a_folder_or_one_that_fails_leaves_no_folder_it_made(tmp_path, monkeypatch, capsys):
    """--out naming a folder is refused before the export; an export that fails (or is stopped) after making the
    folders of --out removes them again, those that were there stay."""
    from common.files import atomic_output, folders_removed_on_failure
    (tmp_path / "models").mkdir()
    message = refusal("export.py", ["--checkpoint", "missing.pth", "--out", str(tmp_path / "models")], monkeypatch,
                      capsys)
    assert message == f"--out {tmp_path / 'models'}: a folder; pass the .onnx file to write, e.g. " \
                      f"{tmp_path / 'models' / 'generator.onnx'}"
    out = str(tmp_path / "models" / "new" / "deeper" / "g.onnx")
    with pytest.raises(RuntimeError), folders_removed_on_failure(out):
        with atomic_output(out) as partial:
            open(partial, "wb").close()
            raise RuntimeError("the exporter failed")
    assert os.listdir(tmp_path) == ["models"] and os.listdir(tmp_path / "models") == []


def onnx_graph(path, metadata, output_from="masked_source"):
    """An ONNX model with export.py's inputs whose `face` is one of them unchanged, and `metadata` under dinet.*."""
    import onnx
    from onnx import TensorProto, helper
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in INPUTS]
    graph = helper.make_graph([helper.make_node("Identity", [output_from], ["face"])], "g", inputs,
                              [helper.make_tensor_value_info("face", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    helper.set_model_props(model, {f"dinet.{key}": value for key, value in metadata.items()})
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("size,feature", [("big", "mel"), ("60", "mel"), ("1048576", "mel"), ("64", "rot13")])
def test_an_onnx_model_whose_metadata_export_py_never_writes_is_refused_when_it_loads(tmp_path, size, feature):
    from dubbing.onnx_generator import load_onnx_generator
    path = onnx_graph(tmp_path / "generator.onnx", {"mouth_region_size": size, "audio_feature": feature})
    with pytest.raises(UserError, match=f"^--onnx {path}: its metadata names mouth size '{size}' and audio feature "
                                        f"'{feature}', which export.py never writes"):
        load_onnx_generator(path, torch.device("cpu"))


def test_an_onnx_model_returning_faces_of_another_shape_is_named_when_it_runs(tmp_path):
    from dubbing.onnx_generator import load_onnx_generator
    path = onnx_graph(tmp_path / "generator.onnx", {"mouth_region_size": "64", "audio_feature": "mel"}, "audio")
    model = load_onnx_generator(path, torch.device("cpu"))
    reference, masked_source, audio = sample_inputs(CropGeometry(64), 80, batch=2, seed=0)
    with pytest.raises(UserError, match=rf"^--onnx {path}: returned faces of shape \(2, 80, 5\) for crops of shape "
                                        rf"\(2, 3, 104, 80\); pass a .onnx that export.py wrote"):
        model.network.generate(masked_source, audio, model.network.encode_reference(reference))
