"""Score lip-sync videos: one evaluation protocol for a checkpoint, or dubbed videos as they are.

    python evaluate.py --protocol self_reconstruction --videos held_out_a.mp4 held_out_b.mp4 \
        --checkpoint netG_model_epoch_N.pth [--syncnet_path S.pth] [--lse_syncnet_path syncnet_v2.model] \
        [--identity_weights backbone.pth] [--inception_weights inception.pth] [--out_dir D]

dubs each held-out video with its own audio (dub(), as inference.py does) and scores it against its own real
frames, beside two baselines made from the same video: `real (re-encoded)` (the video through the dubbing encoder
alone: the detector's and the encoder's noise floor) and `reference copy` (its mouth region taken from one frame:
a face that does not speak). Per video and as means: PSNR, SSIM, LPIPS of the mouth and of the face crop, FID of
the face crops (with --inception_weights), LSE-D/C with a SyncNet of this repository (--syncnet_path, columns
"repo") and with syncnet_python's (--lse_syncnet_path, columns "syncnet_v2"), lmd_mouth, mouth_open_corr,
identity_cos (with --identity_weights) and the dubbing's frames/s and memory (evaluation/protocol.py).
Writes D/self_reconstruction.csv and .md, and the three videos of each under D/videos.

    python evaluate.py --videos out/a_facial_dubbing_add_audio.mp4 out/b_facial_dubbing_add_audio.mp4 \
        --syncnet_path S.pth [--lse_syncnet_path syncnet_v2.model] [--sources a.mp4 b.mp4] [--csv results.csv]

scores videos as they are: LSE-D/C on each video's own audio track; with --sources (the source of each, in
order: the videos taken as self-reconstructions), the sources' LSE beside them and every score of the protocol,
computed the same way (in the face crops of the source's frames): PSNR, SSIM, LPIPS of the mouth and of the face,
FID with --inception_weights, lmd_mouth, mouth_open_corr and identity_cos with --identity_weights. Writes the
table as CSV and as markdown beside it. Videos (or sources) without a face are listed and skipped; a video
without a face scored against its source keeps its row, its lip scores n/a.
"""
import argparse
import csv
import math
import os
import sys

# Before torch loads OpenMP, as inference.py: its threads sleep while the decoder and encoder need the cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from tqdm import tqdm

from common.devices import choose_device, resolve_amp
from common.errors import ArgumentParser, UserError, run_command
from common.files import check_writable, write_atomically
from common.geometry import CropGeometry
from data.procedural_faces import read_demo_record
from evaluation.baselines import reencode, reference_copy
from evaluation.procedural import OPENINGS_PLOT, check_faces, finite_mean, procedural_truth, verdict
from evaluation.protocol import (
    SCORE_GEOMETRY,
    LandmarkedVideo,
    NoFace,
    RealVideo,
    Scorers,
    score_against_real,
    sync_columns,
    timed_dub,
)
from evaluation.reconstruction import InceptionFeatures, frechet_distance
from evaluation.sync import check_length
from media.ffmpeg import probe
from models.checkpoint import load_syncnet

PROTOCOL, PROCEDURAL = "self_reconstruction", "procedural"
DUBBED, REAL, REFERENCE = "dubbed", "real (re-encoded)", "reference copy"


def build_parser():
    parser = ArgumentParser(description=__doc__.splitlines()[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--protocol", choices=[PROTOCOL, PROCEDURAL], default=None,
        help=f"{PROTOCOL}: dub --videos (held-out sources) with --checkpoint and score them against themselves; "
             f"{PROCEDURAL}: dub held-out demo --faces with each other's speech and score them against the true "
             f"faces the demo set's generator draws")
    add("--videos", nargs="+", default=None, help="videos with their audio: held-out sources with --protocol "
                                                  f"{PROTOCOL}, else dubbed videos")
    add("--demo_dir", default=None, help=f"with --protocol {PROCEDURAL}: a demo set (data_processing.py "
                                         f"--make_demo_data --demo_dir DIR)")
    add("--faces", nargs="+", default=None, help=f"with --protocol {PROCEDURAL}: 3 or more of its videos the "
                                                 f"checkpoint never trained on (demo_008 demo_009 ...)")
    add("--sources", nargs="+", default=None, help="without --protocol: the source of each video, in the same order "
                                                   "(compared over their first frames, as many as the shorter has)")
    add("--checkpoint", default=None, help="with --protocol: the generator checkpoint (clip or frame stage)")
    add("--mouth_region_size", type=int, default=None, help="for checkpoints that do not record it (DINet's: 256)")
    add("--syncnet_path", default=None, help="a SyncNet of this repository (train_syncnet.py), for LSE-D/C repo")
    add("--lse_syncnet_path", default=None, help="syncnet_python's syncnet_v2.model, for LSE-D/C syncnet_v2 "
                                                 "(comparable with papers)")
    add("--identity_weights", default=None, help="arcface_torch's iresnet backbone.pth, for identity_cos")
    add("--lpips_weights", default="pretrained", help="pretrained, random or a VGG16 .pth")
    add("--inception_weights", default=None, help="torchvision Inception v3 .pth, for FID")
    add("--csv", default="./asserts/evaluation.csv", help="without --protocol: where the table is written (and as "
                                                          "markdown beside it, .md)")
    add("--out_dir", default="./asserts/evaluation", help="with --protocol: the folder of the tables and videos")
    add("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    add("--amp", choices=["auto", "off", "bf16"], default="auto", help="with --protocol: the dubbing's precision, "
                                                                       "as inference.py's --amp")
    return parser


def check_inputs(opt):
    """Every input, flag and the output, before any work: one line naming the file or flag and the fix."""
    syncnets = bool(opt.syncnet_path or opt.lse_syncnet_path)
    if opt.protocol == PROCEDURAL:
        check_procedural(opt)
    elif not opt.videos:
        raise UserError("--videos: pass the videos to score (or --protocol procedural with --demo_dir and --faces)")
    elif opt.demo_dir or opt.faces:
        raise UserError(f"--demo_dir / --faces: only --protocol {PROCEDURAL} reads a demo set; add that, or drop them")
    elif opt.protocol:
        if not opt.checkpoint:
            raise UserError(f"--protocol {PROTOCOL} needs --checkpoint PATH, the generator to dub --videos with "
                            f"(a netG_model_epoch_N.pth)")
        if opt.sources:
            raise UserError(f"--sources: --protocol {PROTOCOL} scores each of --videos against itself; drop --sources")
        names = [os.path.splitext(os.path.basename(path))[0] for path in opt.videos]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice:
            raise UserError(f"--videos: two videos named {twice}, and the videos written to --out_dir are named "
                            f"after them; rename one")
    else:
        if opt.checkpoint:
            raise UserError(f"--checkpoint: only --protocol {PROTOCOL} dubs videos; add that, or drop --checkpoint "
                            f"to score --videos as they are")
        if opt.identity_weights and not opt.sources:
            raise UserError("--identity_weights: identity compares a face before and after dubbing; add --sources "
                            "(the videos before), or drop --identity_weights")
        if not syncnets and not opt.sources:
            raise UserError("nothing to score: pass --syncnet_path and/or --lse_syncnet_path (lip sync), or "
                            "--sources (against the real videos)")
        if opt.sources and len(opt.sources) != len(opt.videos):
            raise UserError(f"--sources gives {len(opt.sources)} videos for {len(opt.videos)} --videos; give one per "
                            f"video")
    sizes = {}  # (width, height) of each video given
    source_of = dict(zip(opt.videos or [], opt.sources or []))
    for flag, paths in (("--videos", opt.videos or []), ("--sources", opt.sources or [])):
        for path in paths:
            if not os.path.isfile(path):
                raise UserError(f"{path}: no such video; check the paths given to {flag}")
            info = probe(path)  # one line naming the file when ffmpeg cannot read it
            if not info["has_video"]:
                raise UserError(f"{path}: no video stream; pass videos to {flag}")
            sizes[path] = info["width"], info["height"]
            if opt.protocol and not info["has_audio"]:
                raise UserError(f"{path}: no audio stream, and the protocol dubs each video with its own speech; "
                                f"pass videos with their audio to {flag}")
            if syncnets and not info["has_audio"]:
                # a dub scored against its source speaks the source's speech; else only the user knows what it says
                speech = source_of.get(path, "SPEECH.wav")
                alone = " or drop --syncnet_path / --lse_syncnet_path to score it against its source alone" \
                    if path in source_of else ""
                raise UserError(f"{path}: no audio stream, and LSE scores a video against its own speech; add its "
                                f"speech: ffmpeg -i {path} -i {speech} -map 0:v -map 1:a -c:v copy "
                                f"with_audio.mp4 and pass that to {flag}{alone}")
            if syncnets and info["duration"]:
                try:
                    check_length(int(info["duration"] * 25))
                except ValueError as error:
                    raise UserError(f"{path}: {error}; pass longer videos to {flag}") from None
    for video, source in zip(opt.videos or [], opt.sources or []):
        if sizes[video] != sizes[source]:  # the source's face crops would be cut from elsewhere in the video's frames
            (width, height), (source_width, source_height) = sizes[video], sizes[source]
            sizes_named = f"{video}: {width}x{height}, and its source {source} {source_width}x{source_height}"
            if abs(width / height - source_width / source_height) > 0.02:  # more than even-size rounding
                raise UserError(f"{sizes_named}: another framing (a face crop?), whose face is elsewhere than the "
                                f"source's; pass as its --sources the source cut to the same region, or drop "
                                f"--sources to score its lip sync alone")
            raise UserError(f"{sizes_named}; the scores compare their frames in the same place, so scale it to its "
                            f"source's size: ffmpeg -i {video} -vf scale={source_width}:{source_height} scaled.mp4")
    if opt.inception_weights and not os.path.isfile(opt.inception_weights):
        raise UserError(f"--inception_weights {opt.inception_weights}: no such file; pass torchvision's Inception v3 "
                        f"state dict (.pth), or leave the flag out to skip FID")
    if opt.mouth_region_size is not None:
        CropGeometry.checked(opt.mouth_region_size)
    choose_device(opt.device)
    if opt.protocol:
        check_writable(opt.out_dir, "--out_dir")
    else:
        check_writable(os.path.dirname(os.path.abspath(opt.csv)), "--csv", shown=opt.csv)


def check_procedural(opt):
    """--protocol procedural's own flags (check_inputs checks the rest: mouth size, device, --out_dir)."""
    unused = next((flag for flag in ("videos", "sources", "syncnet_path", "lse_syncnet_path", "identity_weights",
                                     "inception_weights") if getattr(opt, flag)), None)
    if unused:
        raise UserError(f"--{unused}: --protocol {PROCEDURAL} dubs the demo set's --faces and scores lip shape only; "
                        f"drop --{unused}")
    for flag in ("checkpoint", "demo_dir", "faces"):
        if not getattr(opt, flag):
            raise UserError(f"--protocol {PROCEDURAL} needs --{flag} (--checkpoint netG_best.pth --demo_dir DIR "
                            f"--faces demo_008 demo_009 demo_010)")
    check_faces(opt.demo_dir, opt.faces)


def load_repository_syncnet(path):
    """(network, config) of a SyncNet of this repository whose audio features can be computed here."""
    flag = "--syncnet_path"
    try:
        network, config = load_syncnet(path, flag)
    except UserError:
        from models.weights_file import read_state_dict
        try:
            syncnet_python = any(key.startswith("netcnnlip.") for key in read_state_dict(path, flag, ""))
        except UserError:
            syncnet_python = False
        if syncnet_python:
            raise UserError(f"{flag} {path}: syncnet_python's SyncNet, not one of this repository; pass it to "
                            f"--lse_syncnet_path") from None
        raise
    if config.audio_feature in ("deepspeech", "unknown"):
        raise UserError(f"{flag} {path}: it reads {config.audio_feature} audio features, which cannot be computed "
                        f"here; pass a SyncNet trained by train_syncnet.py on mel or mfcc data")
    return network, config


def load_scorers(opt, device):
    """Every network the scores asked for need, loaded before any work (a wrong file is named at once)."""
    scorers = Scorers(device)
    if opt.syncnet_path:
        network, config = load_repository_syncnet(opt.syncnet_path)
        scorers.syncnet = (network.to(device), config)
    if opt.lse_syncnet_path:
        from models.lse_syncnet import load_lse_syncnet
        scorers.lse_syncnet = load_lse_syncnet(opt.lse_syncnet_path).to(device)
    if opt.identity_weights:
        from models.face_recognition import load_face_recognition
        scorers.identity = load_face_recognition(opt.identity_weights).to(device)
    if opt.protocol or opt.sources:
        from models.lpips_loss import LPIPS
        scorers.lpips = LPIPS(opt.lpips_weights, spatial=True).to(device)
        if opt.inception_weights:
            scorers.inception = InceptionFeatures(opt.inception_weights).to(device)
    return scorers


def load_dubbing_generator(opt, device):
    from dubbing.pipeline import load_generator
    generator = load_generator(opt.checkpoint, device, opt.mouth_region_size, flag="--checkpoint")
    if generator.audio_feature in (None, "deepspeech"):
        raise UserError(f"--checkpoint {opt.checkpoint}: it takes DeepSpeech features, which cannot be computed here "
                        f"(they need TensorFlow), and the protocol dubs each video with its own audio; pass a "
                        f"checkpoint trained on mel or mfcc features")
    return generator


# ------------------------------------------------------------------ the protocol

def self_reconstruction(opt, scorers, generator, amp):
    """The rows of the protocol (per video: dubbed and the two baselines; then their means) and the skipped
    videos with why."""
    device = scorers.device
    folder = os.path.join(opt.out_dir, "videos")
    rows, skipped, features = [], [], {kind: ([], []) for kind in (DUBBED, REAL, REFERENCE)}
    for path in tqdm(opt.videos, desc="videos", unit="video"):
        try:
            real = RealVideo(path, scorers)
        except NoFace as why:
            skipped.append((path, str(why)))
            tqdm.write(f"skipped {path}: {why}")
            continue
        name = os.path.splitext(os.path.basename(path))[0]
        made = {kind: os.path.join(folder, f"{name}_{suffix}.mp4")
                for kind, suffix in ((DUBBED, "dubbed"), (REAL, "real_reencoded"), (REFERENCE, "reference_copy"))}
        cost = timed_dub(path, generator, made[DUBBED], device, amp)
        reencode(path, made[REAL], device)
        reference_copy(path, made[REFERENCE], real.landmarks, generator.mouth_size, device)
        for kind, made_path in made.items():
            columns, fake_features = score_against_real(made_path, real, scorers)
            rows.append({"video": os.path.basename(path), "kind": kind, **columns,
                         **(cost if kind == DUBBED else dict.fromkeys(cost))})
            if fake_features is not None:
                features[kind][0].append(fake_features)
                features[kind][1].append(real.inception[:len(fake_features)])
    if not rows:
        raise all_skipped(skipped)
    means = []
    for kind, (fake, real) in features.items():
        mean = mean_row([row for row in rows if row["kind"] == kind], skipped)
        if fake:
            mean["FID face"] = frechet_distance(np.concatenate(fake), np.concatenate(real))
        means.append(mean)
    return rows + means, skipped


def procedural(opt, generator, device, amp):
    """--protocol procedural: the table, and the verdict as its last line."""
    from dubbing.pipeline import dub

    def dub_with(source, audio, output, landmarks):
        dub(source, audio, generator, output, device, landmark_csv=landmarks, amp=amp, progress=False)
    held_out = generator.held_out
    record = read_demo_record(opt.demo_dir)
    known = [face for face in opt.faces if face not in held_out] if set(held_out) <= set(record["videos"]) else []
    warning = (f"--faces {' '.join(known)}: the checkpoint held out {', '.join(held_out)} of a demo set like this "
               f"one (its validation split) and so may have trained on these; the scores of faces it learned do not "
               f"say how it dubs a face it never saw: pass {' '.join(held_out)}") if held_out and known else None
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    rows = procedural_truth(opt.demo_dir, opt.faces, dub_with, opt.out_dir, device, generator.mouth_size)
    _, line = verdict({row["kind"]: row for row in rows if row["face"].startswith("mean")})
    notes = [f"- checkpoint: {opt.checkpoint} (mouth {generator.mouth_size}), dubbed on {device} with amp {amp}",
             f"- demo set: {opt.demo_dir}; each face dubbed with the next face's speech (dubbed) and the one after's "
             f"(mismatched speech), all scored against the face drawn speaking the next face's speech",
             "- mouth_open_corr at the best offset within +-1 frame (offset > 0: the dubbed mouth late); at that "
             "offset opening_pearson (does the mouth open when the true one does) and opening_scale (how far: 1 as "
             "far, 0.5 half as far)",
             f"- the openings over time, true face and made ones: {os.path.join(opt.out_dir, OPENINGS_PLOT)}"]
    notes += [f"- **warning**: {warning}"] if warning else []
    write_tables(rows, os.path.join(opt.out_dir, f"{PROCEDURAL}.csv"), "Dubbing against the true face", notes)
    print(line)


# ------------------------------------------------------------------ videos as they are

def row_names(paths):
    """Each path's file name, or the path as given where two files share a name (the same clip dubbed by two
    tools, wav2lip/a.mp4 and latentsync/a.mp4, must not read as two scores of one video)."""
    given = list(dict.fromkeys(paths))  # a source given for several videos once
    names = [os.path.basename(path) for path in given]
    return {path: name if names.count(name) == 1 else path for path, name in zip(given, names)}


def score_as_they_are(opt, scorers):
    """Rows of the videos as given (and against --sources), the mean row, and the skipped videos with why."""
    rows, skipped, fake_features, real_features = [], [], [], []
    name = {**row_names(opt.sources or []), **row_names(opt.videos)}
    for index, video_path in enumerate(tqdm(opt.videos, desc="videos", unit="video")):
        path = opt.sources[index] if opt.sources else video_path  # named if it has no face
        try:
            if opt.sources:  # the protocol's scores, against the source as the real video
                real = RealVideo(path, scorers, own_sync="source ")
                # a dub without a face is scored, as the protocol scores one: a tool's failure counts in its mean
                columns, features = score_against_real(video_path, real, scorers)
                row = {"video": name[video_path], "source": name[path], **columns, **real.sync}
                if features is not None:
                    fake_features.append(features)
                    real_features.append(real.inception[:len(features)])
            else:
                video = LandmarkedVideo.open(path)
                try:
                    row = {"video": name[path], "frames": len(video), **sync_columns(video, scorers)}
                finally:
                    video.close()
            rows.append(row)
        except NoFace as why:
            skipped.append((path, str(why)))
            tqdm.write(f"skipped {path}: {why}")
    if not rows:
        raise all_skipped(skipped)
    if len(rows) > 1 or skipped:
        rows.append(mean_row(rows, skipped))
    if fake_features:
        rows[-1]["FID face"] = frechet_distance(np.concatenate(fake_features), np.concatenate(real_features))
    return rows, skipped


# ------------------------------------------------------------------ tables

def all_skipped(skipped):
    path, why = skipped[0]
    more = f" (and so did {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    return UserError(f"{path}: {why}{more}; the scores read the speaker's lips, so pass videos with one visible, "
                     f"frontal face")


def mean_row(rows, skipped):
    """The mean of each number over `rows` (NaN cells left out), frames summed; the skipped videos counted."""
    label = f"mean of {len(rows)}" + (f" ({len(skipped)} skipped)" if skipped else "")
    mean = {"video": label, **({"kind": rows[0]["kind"]} if "kind" in rows[0] else {}),
            "frames": sum(row["frames"] for row in rows)}
    for key in rows[0]:
        values = [row.get(key) for row in rows]
        # an offset (a video's or its source's) is its own lag: their mean (of -15 and 14, -0.5) says nothing
        if key not in mean and "offset" not in key.split() and all(isinstance(v, (int, float)) for v in values):
            mean[key] = finite_mean(values)
    return mean


def partial_mean_notes(rows):
    """A note for each mean row whose numbers leave out the videos where they are n/a (a dub whose face is gone),
    saying how many videos each mean is over."""
    notes = []
    for mean in (row for row in rows if row["video"].startswith("mean of")):
        videos = [row for row in rows if not row["video"].startswith("mean of") and row.get("kind") == mean.get("kind")]
        over = {}  # how many videos -> the columns measured on that many
        for key, value in mean.items():
            if isinstance(value, float) and key != "FID face":
                count = sum(not math.isnan(row[key]) for row in videos if isinstance(row.get(key), (int, float)))
                if count < len(videos):
                    over.setdefault(count, []).append(key)
        kind = f" ({mean['kind']})" if "kind" in mean else ""
        notes += [f"- {mean['video']}{kind}: {', '.join(keys)} over the {count} of {len(videos)} videos where "
                  f"measured (n/a in the others)" for count, keys in over.items()]
    return notes


def columns_of(rows):
    return list(dict.fromkeys(key for row in rows for key in row))


def write_csv(rows, path):
    """The table as CSV at `path`, complete or not at all (an earlier table there stays until this one is written)."""
    def write(f):
        writer = csv.DictWriter(f, columns_of(rows))
        writer.writeheader()
        writer.writerows(rows)
    write_atomically(path, write, mode="w")


def cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def markdown(rows, title, notes):
    """A markdown document: the title, the notes (one line each), the table with its columns padded."""
    columns = columns_of(rows)
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]

    def line(values):
        return "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths)) + " |"
    table = [line(columns), line(["-" * width for width in widths]), *(line(values) for values in cells)]
    return "\n".join([f"# {title}", "", *notes, "", *table, ""])


def write_tables(rows, csv_path, title, notes):
    """CSV at `csv_path`, markdown beside it (.md); the markdown printed."""
    document = markdown(rows, title, notes)
    markdown_path = os.path.splitext(csv_path)[0] + ".md"
    write_csv(rows, csv_path)
    write_atomically(markdown_path, lambda f: f.write(document), mode="w")
    print(document)
    print(f"wrote {csv_path} and {markdown_path}")


def main(argv=None):
    """The command, for `argv` (default: the command line); the path of the CSV it wrote (the web app's Score tab
    calls it too)."""
    opt = build_parser().parse_args(argv)
    check_inputs(opt)
    device = choose_device(opt.device)
    if opt.protocol:
        generator = load_dubbing_generator(opt, device)
        if device.type == "cpu":
            from inference import tune_cpu_allocator
            tune_cpu_allocator()
        amp = resolve_amp(opt.amp, device)
    if opt.protocol == PROCEDURAL:
        procedural(opt, generator, device, amp)
        return os.path.join(opt.out_dir, f"{PROCEDURAL}.csv")
    scorers = load_scorers(opt, device)
    notes = [f"- LSE repo: {opt.syncnet_path}" * bool(opt.syncnet_path),
             f"- LSE syncnet_v2: {opt.lse_syncnet_path}" * bool(opt.lse_syncnet_path),
             f"- identity_cos: {opt.identity_weights}" * bool(opt.identity_weights),
             f"- LPIPS: {opt.lpips_weights}" * bool(scorers.lpips is not None),
             f"- FID: {opt.inception_weights}" * bool(scorers.inception is not None)]
    if opt.protocol:
        rows, skipped = self_reconstruction(opt, scorers, generator, amp)
        geometry = SCORE_GEOMETRY
        notes = [f"- checkpoint: {opt.checkpoint} (mouth {generator.mouth_size}, {generator.audio_feature} "
                 f"features), dubbed on {device} with amp {amp}",
                 f"- scored in DINet's face crop of each real frame, resized to {geometry.width}x{geometry.height} "
                 f"(mouth {geometry.mouth_size}x{geometry.mouth_size})", *notes]
        csv_path, title = os.path.join(opt.out_dir, f"{PROTOCOL}.csv"), "Self-reconstruction"
    else:
        rows, skipped = score_as_they_are(opt, scorers)
        csv_path, title = opt.csv, "Evaluation"
        if opt.sources:
            notes.append("- each video against its source over their first `frames` frames: rows compare with "
                         "each other where source and frames are the same")
    notes += [f"- skipped {path}: {why}" for path, why in skipped] + partial_mean_notes(rows)
    write_tables(rows, csv_path, title, [note for note in notes if note])
    return csv_path


if __name__ == "__main__":
    run_command(main)
