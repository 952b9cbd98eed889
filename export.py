"""Export a generator checkpoint for onnxruntime.

    python export.py --checkpoint netG_best.pth --format onnx --out generator.onnx
    python inference.py --onnx generator.onnx --source_video_path talking.mp4 --driving_audio_path speech.wav

writes the generator as dubbing runs it, in float32, as one ONNX graph with the reference branch inside (not split
out): inputs `reference` (1, 15, H, W), the 5 reference face crops stacked on channels, `masked_source` (batch, 3, H,
W) and `audio` (batch, A, 5); output `face` (batch, 3, H, W) in [0, 1]. The batch axis is dynamic; H x W is the
checkpoint's face crop (104 x 80 at mouth 64). Each call encodes its reference set once for the whole batch, so
onnxruntime dubbing keeps no state between calls. The mouth size, audio feature and lab ride in the model's metadata.
Before the file is written (atomically), onnxruntime's faces for a batch of another size than the traced one are
checked against PyTorch's: more than 1e-4 apart, or a lab the exporter cannot trace, is refused with the reason.
Needs onnx, onnxscript and onnxruntime (pip install -r requirements-app.txt).
"""
import argparse
import os

from common.errors import ArgumentParser, UserError, run_command, stopped_without
from common.files import check_writable, folders_removed_on_failure
from common.geometry import CropGeometry


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The defaults, and this file's notes as written: what the graph takes and returns."""


def build_parser():
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--checkpoint", required=True, help="generator checkpoint (netG_*.pth of a training stage, or "
                                            "train_person.py's model.pth)")
    add("--format", choices=["onnx"], default="onnx", help="what to export to")
    add("--out", default=None, help="the .onnx to write (default: beside the checkpoint, its name with .onnx)")
    add("--mouth_region_size", type=int, default=None,
        help="for checkpoints that do not record it (DINet's: 256 for clip_training_DINet_256mouth.pth)")
    return parser


def main():
    opt = build_parser().parse_args()
    out = opt.out or os.path.splitext(opt.checkpoint)[0] + ".onnx"
    if opt.mouth_region_size is not None:
        CropGeometry.checked(opt.mouth_region_size)
    if os.path.isdir(out):
        raise UserError(f"--out {out}: a folder; pass the .onnx file to write, e.g. "
                        f"{os.path.join(out, 'generator.onnx')}")
    check_writable(os.path.dirname(os.path.abspath(out)), "--out", shown=out)
    with stopped_without(out), folders_removed_on_failure(out):
        export(opt, out)


def export(opt, out):
    import torch

    from config.labs import lab_of
    from dubbing.onnx_generator import export_onnx
    from dubbing.pipeline import load_generator
    generator = load_generator(opt.checkpoint, torch.device("cpu"), opt.mouth_region_size, flag="--checkpoint")
    difference = export_onnx(generator, out, source=opt.checkpoint, lab=lab_of(generator.network.config))
    print(f"wrote {out}: mouth {generator.mouth_size}, {generator.audio_feature} features; onnxruntime's faces "
          f"within {difference:.1g} of PyTorch's (max abs, float32); dub with python inference.py --onnx {out}")


if __name__ == "__main__":
    run_command(main)
