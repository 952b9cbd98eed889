"""The generator as an ONNX model: exported from a checkpoint (`export_onnx`, behind export.py) and run by onnxruntime
in dubbing (`load_onnx_generator`, behind inference.py --onnx), through the same pipeline as PyTorch's.

One graph, the reference branch inside it: inputs `reference` (1, 15, H, W), the 5 reference crops stacked on
channels, `masked_source` (batch, 3, H, W) and `audio` (batch, A, 5); output `face` (batch, 3, H, W) in [0, 1], the
whole crop. Each call encodes its one reference set (DINet.encode_reference) and generates every frame of the
batch from it (DINet.generate), so a caller keeps no state between calls; the price is one reference encoding per
call, not per frame. The network exported is the one dubbing runs (BatchNorms folded, the reference half of the
alignment encoder's first convolution split off), in float32. The model's metadata carries the mouth size, the audio
feature and the generator's settings, so dubbing needs no checkpoint beside it. onnx, onnxscript and onnxruntime
are imported only here, and only when called.
"""
import copy
import json
import os
import re
import warnings
from dataclasses import fields

import numpy as np
import torch
from torch import nn

from common.errors import UserError
from common.files import atomic_output
from common.geometry import AUDIO_WINDOW, NUM_REFERENCES, CropGeometry
from data.audio_features import FEATURE_WIDTHS
from models.checkpoint import recordable_mouth_size
from models.dinet import ReferenceState
from models.fast.fold import fold_batch_norms
from models.fast.split import split_first_alignment_layer

INPUTS, OUTPUT = ("reference", "masked_source", "audio"), "face"
METADATA = "dinet."  # the prefix of the model's metadata keys
TOLERANCE = 1e-4     # the most an exported face may differ from PyTorch's (max abs, float32)
OPSET = 18
INSTALL = "pip install -r requirements-app.txt"


class ExportedGenerator(nn.Module):
    """forward(reference, masked_source, audio) = generate(masked_source, audio, encode_reference(reference)), the
    reference state spread over the batch (an expand, which a batch of any size takes, 1 included)."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, reference, masked_source, audio):
        state = self.network.encode_reference(reference)
        batch = masked_source.shape[0]
        spread = {f.name: None if value is None else value.expand(batch, *value.shape[1:])
                  for f in fields(ReferenceState) for value in [getattr(state, f.name)]}
        return self.network.generate(masked_source, audio, ReferenceState(**spread))


def sample_inputs(geometry, audio_channel, batch, seed):
    """Random inputs of the exported model's shapes: (reference, masked_source, audio)."""
    generator = torch.Generator().manual_seed(seed)
    size = (geometry.height, geometry.width)
    return (torch.rand(1, 3 * NUM_REFERENCES, *size, generator=generator),
            torch.rand(batch, 3, *size, generator=generator),
            torch.randn(batch, audio_channel, AUDIO_WINDOW, generator=generator))


def export_onnx(generator, path, flag="--checkpoint", source="", lab=None):
    """Write `generator` (a DubbingModel on the CPU) to `path` as ONNX (atomically), checked first: onnxruntime's faces
    for a batch of another size than the traced one must be within TOLERANCE of the PyTorch network's. Returns that
    largest difference. A generator the exporter cannot trace, or whose export differs, is a UserError naming
    `flag` `source` and the reason; nothing is written then. `lab` names the network (default: its settings)."""
    onnxruntime = _require("onnxruntime")
    _require("onnxscript")
    config, geometry = generator.network.config, CropGeometry(generator.mouth_size)
    lab = lab or config.describe()
    what = f"{flag} {source}: {lab} at mouth {generator.mouth_size}"
    network = split_first_alignment_layer(fold_batch_norms(copy.deepcopy(generator.network).eval()))
    model = ExportedGenerator(network)
    traced = sample_inputs(geometry, config.audio_channel, batch=2, seed=0)
    with torch.no_grad():
        model(*traced)  # fills AdaAT's channel-pair tables, so that tracing reads them as constants
    batch = torch.export.Dim("batch")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, traced, input_names=list(INPUTS), output_names=[OUTPUT],
                                        dynamic_shapes={"reference": None, "masked_source": {0: batch},
                                                        "audio": {0: batch}},
                                        opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
    except Exception as error:  # the exporter's own errors: the innermost one names the operation it cannot translate
        cause = _root_cause(error)
        raise UserError(f"{what} cannot be exported to ONNX ({type(cause).__name__}: "
                        f"{_first_line(cause)}); dub with PyTorch (inference.py without --onnx)") from None
    metadata = {"mouth_region_size": str(generator.mouth_size), "audio_feature": generator.audio_feature or "",
                "generator_config": json.dumps(config.to_dict()), "lab": lab,
                "reference_branch": "inside the graph: `reference` is encoded once per call"}
    program.model.metadata_props.update({METADATA + key: value for key, value in metadata.items()})
    checked = sample_inputs(geometry, config.audio_channel, batch=3, seed=1)
    with torch.no_grad():
        expected = generator.network.eval()(checked[1], checked[0], checked[2]).numpy()
    with atomic_output(path, what="ONNX model") as partial:
        program.save(partial, external_data=False)
        runtime = onnxruntime.InferenceSession(partial, providers=["CPUExecutionProvider"])
        faces = runtime.run([OUTPUT], dict(zip(INPUTS, (tensor.numpy() for tensor in checked))))[0]
        difference = float(np.abs(faces - expected).max())
        if not difference <= TOLERANCE:  # NaN included
            raise UserError(f"{what} cannot be exported to ONNX (onnxruntime's faces differ from PyTorch's by "
                            f"{difference:.2g}, over {TOLERANCE:g}); dub with PyTorch (inference.py without --onnx)")
    return difference


class OnnxGenerator:
    """An exported generator in onnxruntime, with the two calls dubbing makes of a network: `encode_reference`
    (here: the reference crops themselves, encoded inside each later call) and `generate` (whole faces, float32, on
    `device`; `first_row` is not needed: the rows above it are computed too, and pasting never reads them)."""

    def __init__(self, runtime, device, named="--onnx"):
        self.runtime, self.device, self.named = runtime, device, named  # named: the flag and file, for errors

    def encode_reference(self, reference):
        return reference.float().cpu().contiguous().numpy()

    def generate(self, masked_source, audio_feature, state, first_row=0):
        feeds = dict(zip(INPUTS, (state, *(t.float().cpu().contiguous().numpy() for t in (masked_source,
                                                                                            audio_feature)))))
        face = self.runtime.run([OUTPUT], feeds)[0]
        if face.shape != feeds["masked_source"].shape:  # a graph not export.py's: it would fail later, unnamed
            raise UserError(f"{self.named}: returned faces of shape {face.shape} for crops of shape "
                            f"{feeds['masked_source'].shape}; pass a .onnx that export.py wrote")
        return torch.from_numpy(face).to(self.device)


def load_onnx_generator(path, device, flag="--onnx"):
    """A DubbingModel whose network is the OnnxGenerator of the export at `path` (mouth size and audio feature from its
    metadata), run by onnxruntime on `device` (CUDA where this onnxruntime has it); errors name `flag`."""
    from .pipeline import DubbingModel, generator_streams
    onnxruntime = _require("onnxruntime", flag)
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; check the path, or export one with python export.py "
                        f"--checkpoint CHECKPOINT --out {path}")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise UserError(f"--device {device}: this onnxruntime runs on the CPU only; pip install onnxruntime-gpu, "
                            f"or pass --device cpu")
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    options = onnxruntime.SessionOptions()
    # dubbing runs generator_streams calls at once, each on its share of the threads, beside the decoder and encoder
    options.intra_op_num_threads = max(1, torch.get_num_threads() // generator_streams(device))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        runtime = onnxruntime.InferenceSession(path, options, providers=providers)
    except Exception as error:
        raise UserError(f"{flag} {path}: onnxruntime cannot load it ({_first_line(error)}); pass a .onnx that "
                        f"export.py wrote") from None
    metadata = runtime.get_modelmeta().custom_metadata_map
    names = [node.name for node in runtime.get_inputs()]
    if names != list(INPUTS) or METADATA + "mouth_region_size" not in metadata:
        raise UserError(f"{flag} {path}: not a generator export.py wrote (inputs {', '.join(names)}, no mouth size "
                        f"in its metadata); export one with python export.py --checkpoint CHECKPOINT --out generator.onnx")
    size, feature = metadata[METADATA + "mouth_region_size"], metadata.get(METADATA + "audio_feature") or None
    if not (size.isdigit() and recordable_mouth_size(int(size))) or feature not in (
            None, *FEATURE_WIDTHS):
        raise UserError(f"{flag} {path}: its metadata names mouth size {size[:20]!r} and audio feature "
                        f"{str(feature)[:20]!r}, which export.py never writes; export one with python export.py "
                        f"--checkpoint CHECKPOINT --out generator.onnx")
    return DubbingModel(OnnxGenerator(runtime, device, f"{flag} {path}"), int(size), feature)


def _require(module, flag="export.py"):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"{flag}: needs {module}, which is not installed; {INSTALL}") from None


def _root_cause(error):
    """The innermost exception of a chain: the exporter wraps the one that names the operation in two of its own."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def _first_line(error):
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    return lines[0] if lines else type(error).__name__
