"""Dub a video with new speech.

    python inference.py --source_video_path talking.mp4 --driving_audio_path speech.wav \
        --pretrained_clip_DINet_path ./asserts/training_model_weight/clip_training_256/netG_model_epoch_2.pth

writes RES_DIR/<video name>_facial_dubbing_add_audio.mp4 (H.264 + AAC, 25 fps, the source's resolution,
one frame per 40 ms of audio). The generator, its mouth size, lab and audio feature come from the
checkpoint. Landmarks are detected unless --source_openface_landmark_path gives an OpenFace CSV.
The published clip_training_DINet_256mouth.pth records no mouth size: pass --mouth_region_size 256; it takes
DeepSpeech features: pass them with --audio_feature_path FILE.npy (frames x 29), since computing them needs
TensorFlow. With --onnx GENERATOR.onnx (export.py's) onnxruntime runs the generator instead of PyTorch, through the
same pipeline; the checkpoint is then not read.
"""
import argparse
import os
import time

# Before torch loads OpenMP: its threads sleep instead of spinning when they wait, which leaves the cores to
# the decoder and encoder that run beside the generator (dubbing/pipeline.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from common.devices import choose_device, resolve_amp
from common.errors import ArgumentParser, UserError, run_command, stopped_without
from common.files import check_writable, folders_removed_on_failure
from common.geometry import CropGeometry
from config.ranges import integer
from dubbing.faces import FaceChoice, parse_face
from dubbing.pipeline import LENGTHS, dub, load_generator
from media.decoder import even_size
from media.ffmpeg import probe, squeezed

DEFAULT_CHECKPOINT = "./asserts/clip_training_DINet_256mouth.pth"  # where DINet's README puts its generator


def build_parser():
    parser = ArgumentParser(description=__doc__.splitlines()[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--source_video_path", default="./asserts/examples/test4.mp4",
        help="video or photograph (jpg, png, webp) to dub; any fps and codec")
    add("--source_openface_landmark_path", default="", help="OpenFace CSV of the source at 25 fps (default: detect)")
    add("--driving_audio_path", default="./asserts/examples/driving_audio_1.wav", help="speech to dub with")
    add("--pretrained_clip_DINet_path", default=DEFAULT_CHECKPOINT, help="generator checkpoint (clip or frame stage)")
    add("--onnx", default="", help="run this ONNX export of the generator (python export.py) in onnxruntime, in "
                                   "float32, instead of the checkpoint in PyTorch")
    add("--res_video_dir", default="./asserts/inference_result", help="folder of the results")
    add("--mouth_region_size", type=int, default=None,
        help="needed for checkpoints that do not record it (DINet's: 256 for clip_training_DINet_256mouth.pth)")
    add("--audio_feature_path", default="", help="precomputed features of the driving audio (.npy/.txt, T x C, "
                                                    "25 rows per second of it)")
    add("--face_video", action="store_true", help="also write the generated face crops as a video")
    add("--batch_size", type=integer(1), default=16, help="most frames per generator call (on CPU: 12 at mouth 64, 3 at 128, 1 at 256)")
    add("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    add("--amp", choices=["auto", "off", "bf16"], default="auto",
        help="bf16 autocast for the generator; auto: bf16 where the hardware has it natively (its output is about "
             "35 dB PSNR from fp32's inside the face boxes), fp32 elsewhere")
    add("--face", type=face_option, default=FaceChoice(), metavar="{largest,N,x,y}",
        help="whom to dub where several faces show: the largest (on screen over the shot), the N-th from the left "
             "(in the shot's first frame with a face, from 1), or the face containing pixel x,y; chosen again in "
             "every shot, everyone else left untouched")
    add("--length", choices=LENGTHS, default="pingpong",
        help="when audio and video differ in length: the output has the audio's length, the video played forwards "
             "and backwards (pingpong, DINet's), from the start again (loop) or holding its last frame (pad); or "
             "cut: as long as the shorter, the audio cut to the video (a photograph is held as long as the speech)")
    add("--close_on_silence", action="store_true",
        help="where the speech is silent for 160 ms or more, show the closed mouth of a reference frame instead of "
             "the generated one (fading over 4 frames)")
    add("--strict", action="store_true",
        help="stop, writing nothing, if some frames have no usable face (by default they pass through untouched)")
    # DINet's flags that no longer do anything, accepted so old command lines keep working
    add("--source_channel", type=int, choices=[3], default=3, help=argparse.SUPPRESS)
    add("--ref_channel", type=int, choices=[15], default=15, help=argparse.SUPPRESS)
    add("--audio_channel", type=integer(1), default=None, help=argparse.SUPPRESS)
    add("--deepspeech_model_path", default="", help=argparse.SUPPRESS)
    return parser


def face_option(text):
    try:
        return parse_face(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def check_inputs(opt):
    """Every input, flag and the output folder, before any work: one line naming the flag or file and the fix."""
    for flag, path in (("--source_video_path", opt.source_video_path), ("--driving_audio_path", opt.driving_audio_path),
                       ("--source_openface_landmark_path", opt.source_openface_landmark_path),
                       ("--audio_feature_path", opt.audio_feature_path)):
        if path and not os.path.isfile(path):
            raise UserError(f"{flag} {path}: " + ("a folder; pass a file in it" if os.path.isdir(path)
                                                  else "no such file; check the path"))
    for flag, path, kind, stream, fix in (
            ("--source_video_path", opt.source_video_path, "video", "has_video", "pass a video of the face to dub"),
            ("--driving_audio_path", opt.driving_audio_path, "audio file", "has_audio",
             "pass the speech to dub with (wav, mp3, or a video with sound)")):
        try:
            info = probe(path, kind)
        except UserError as error:
            raise UserError(f"{flag} {error}") from None
        if not info[stream]:
            raise UserError(f"{flag} {path}: no {stream[len('has_'):]} stream; {fix}")
        if stream == "has_video" and not info["square_pixels"] and not info["still"]:  # viewers ignore a photo's
            raise UserError(f"{flag} {squeezed(path, info)}")
    if opt.mouth_region_size is not None:
        try:
            CropGeometry(opt.mouth_region_size)
        except ValueError:
            raise UserError(f"--mouth_region_size {opt.mouth_region_size}: DINet's crop geometry needs a multiple of "
                            f"8, 16 or more; use 64, 128 or 256, or drop the flag (checkpoints record it)") from None
    if opt.device is not None:
        try:
            torch.device(opt.device)
        except RuntimeError:
            raise UserError(f"--device {opt.device}: not a device; pass cuda, cuda:N or cpu") from None
    if opt.onnx and opt.pretrained_clip_DINet_path != DEFAULT_CHECKPOINT:
        raise UserError(f"--onnx {opt.onnx} and --pretrained_clip_DINet_path {opt.pretrained_clip_DINet_path}: both "
                        f"name the generator; pass one of them")
    if opt.onnx and opt.amp == "bf16":
        raise UserError("--amp bf16: an ONNX export runs in float32 as exported; drop --amp, or dub without --onnx")
    check_writable(opt.res_video_dir, "--res_video_dir")


def tune_cpu_allocator():
    """Keep glibc's malloc from serving the generator's large tensors with a fresh mmap each (a page fault per
    4 KB on every call): no mmap, one arena, memory kept rather than trimmed. Process-wide, so set here and not by
    dub(); a no-op where the C library is not glibc."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)           # M_TRIM_THRESHOLD
        libc.mallopt(-4, 0)                 # M_MMAP_MAX
        libc.mallopt(-8, 1)                 # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def load_dubbing_model(opt, device):
    """The generator the options name: the --onnx export in onnxruntime, or the checkpoint in PyTorch."""
    if opt.onnx:
        from dubbing.onnx_generator import load_onnx_generator
        model = load_onnx_generator(opt.onnx, device)
        if opt.mouth_region_size not in (None, model.mouth_size):
            raise UserError(f"--onnx {opt.onnx}: exported at mouth {model.mouth_size}, but --mouth_region_size is "
                            f"{opt.mouth_region_size}; drop --mouth_region_size (it is read from the export)")
        return model
    return load_generator(opt.pretrained_clip_DINet_path, device, opt.mouth_region_size)


def output_paths(opt):
    """(the dubbed video, the face video or None) that the options write."""
    name = os.path.splitext(os.path.basename(opt.source_video_path))[0]
    return (os.path.join(opt.res_video_dir, f"{name}_facial_dubbing_add_audio.mp4"),
            os.path.join(opt.res_video_dir, f"{name}_synthetic_face.mp4") if opt.face_video else None)


def rate_note(path, info):
    """The line saying that a video of another frame rate (probe's `info`) is dubbed at 25 fps; None for one at 25 fps
    or a photograph."""
    if info["still"] or not info["fps"] or abs(info["fps"] - 25) < 0.01:
        return None
    return (f"note: {path} is {info['fps']:g} fps; the dub is 25 fps, one frame per 40 ms of speech as the model was "
            f"trained, so some of the video's frames are {'left out' if info['fps'] > 25 else 'repeated'}")


FILLS = {"pingpong": "played forwards and backwards", "loop": "played again from its start",
         "pad": "its last frame held"}  # how each --length fills speech longer than the video


def length_note(result, length):
    """The line saying how --length made the output as long as it is, where the video and the speech differ in
    length (a photograph aside: it is always held); None where they do not."""
    video, speech = result.source_frames / 25, result.speech_frames / 25
    if result.source_frames > 1 and result.frames > result.source_frames:
        return (f"note: the video ({video:.2f} s) is shorter than the speech ({speech:.2f} s): {FILLS[length]} to "
                f"last as long (--length {length}; --length cut ends both with the video)")
    if result.source_frames > 1 and result.frames < result.speech_frames:
        return f"note: the speech ({speech:.2f} s) is cut to the video's {result.frames / 25:.2f} s (--length cut)"
    return None


def run(opt, generator=None, progress=True):
    """Dub as the checked options `opt` say, with `generator` (a DubbingModel; default: load_dubbing_model's),
    printing what it did; the DubResult. The command and the web app (app.py) both dub through this."""
    info = probe(opt.source_video_path)
    notes = []

    def note(line):
        if line:
            print(line)
            notes.append(line.removeprefix("note: "))
    size, output_size = (info["width"], info["height"]), even_size(info["width"], info["height"])
    if output_size != size:
        note("note: {} is {}x{}; H.264 in 4:2:0 needs even sides, so the output is {}x{}, the last column or row "
             "repeated".format(opt.source_video_path, *size, *output_size))
    note(rate_note(opt.source_video_path, info))
    device = choose_device(opt.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    generator = generator or load_dubbing_model(opt, device)
    output_path, face_path = output_paths(opt)
    started = time.time()
    result = dub(opt.source_video_path, opt.driving_audio_path, generator, output_path, device,
                 landmark_csv=opt.source_openface_landmark_path or None, audio_feature_path=opt.audio_feature_path,
                 batch_size=opt.batch_size, face_video_path=face_path,
                 amp=None if opt.onnx else resolve_amp(opt.amp, device), face=opt.face, length=opt.length,
                 strict=opt.strict, close_on_silence=opt.close_on_silence, progress=progress)
    seconds = time.time() - started
    print(f"wrote {result.output_path}: {result.frames} frames at 25 fps, mouth {generator.mouth_size}, "
          f"{result.frames / seconds:.2f} frames/s end to end" + (" (onnxruntime)" if opt.onnx else ""))
    print(f"dubbed: {'; '.join(result.faces)} (--face {opt.face}, {result.shots} shot(s))")
    print(f"{result.frames - result.passed_through} frames dubbed, {result.passed_through} passed through untouched"
          + (f": {result.passed_through_ranges}" if result.passed_through else ""))
    note(length_note(result, opt.length))
    if face_path:
        print(f"wrote {face_path}")
    if result.hardware_failure:
        note(f"note: decoded on the CPU, not by the GPU's decoder (NVDEC): {result.hardware_failure}")
    elif result.decoder == "cuda":
        print("decoded by the GPU's decoder (NVDEC)")
    result.notes = tuple(notes)
    return result


def main():
    opt = build_parser().parse_args()
    check_inputs(opt)
    output_path = output_paths(opt)[0]
    # the scratch folders, the partial output and a --res_video_dir made for it removed on the way
    with stopped_without(output_path), folders_removed_on_failure(output_path):
        run(opt)


if __name__ == "__main__":
    run_command(main)
