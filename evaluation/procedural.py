"""Dubbing with a ground truth: the procedural demo faces.

A demo face's mouth is drawn from its speech's loudness (data/procedural_faces.py), so for any speech the generator
that drew the set also draws the true face: demo face A speaking demo video B's speech, its head moving as in its
own video. Dubbing A with B's speech can then be scored against that truth, where real footage has none. For each
held-out face A, with B and C the next two held-out videos (in a ring):

    dubbed            A dubbed with B's speech, against A drawn speaking B's speech
    reference copy    A's mouth region taken from one of its frames (a face that does not speak), against the same
    mismatched        A dubbed with C's speech, against the same: what a model that ignores which speech it hears,
                      or only moves the mouth, scores

Every video is dubbed (and the reference copy pasted) through the landmarks the demo set was prepared with, the ones
its training crops come from (its OpenFace-format CSV, or the detector's): crops framed by other landmarks show the
model its faces at another scale and place than it trained on (docs/results.md). Scores, from the repository's
landmark detector on every video alike: lmd_mouth and mouth_open_corr (evaluation/lip_shape.py), the correlation at
the offset within +-1 frame where it is best (`offset`, > 0: the dubbed mouth late), and at that offset what the
correlation is made of: `opening_pearson` (does the mouth open when the true one does) and `opening_scale` (how far:
the spread of its opening over the truth's, 1 as far, 0.5 half as far). `openings.png` beside the table plots the
openings over time.
"""
import math
import os

import numpy as np
from tqdm import tqdm

from common.errors import UserError
from common.files import atomic_output
from data.openface_csv import read_openface_csv
from data.prepare import Layout, landmark_csv
from data.procedural_faces import FPS, demo_video, read_demo_record, write_talking_face

from .baselines import reference_copy
from .lip_shape import best_offset_corr, lmd_mouth, mouth_opening, timing_and_scale
from .protocol import LandmarkedVideo

DUBBED, REFERENCE, MISMATCHED = "dubbed", "reference copy", "mismatched speech"
OPENINGS_PLOT = "openings.png"  # written beside the table: the openings over time, true face and made ones
MIN_FACES = 3  # a face, the speech it is dubbed with, and a third video's mismatched speech


def check_faces(demo_dir, faces, flag="--faces"):
    """The demo set's record, after checking that `faces` are at least MIN_FACES of its videos."""
    record = read_demo_record(demo_dir)
    unknown = [face for face in faces if face not in record["videos"]]
    if unknown:
        raise UserError(f"{flag}: {unknown[0]} is not a video of the demo set in {demo_dir} (it has "
                        f"{', '.join(record['videos'])}); pass held-out videos of that set")
    if len(set(faces)) < MIN_FACES:
        raise UserError(f"{flag}: {len(set(faces))} distinct video(s); the protocol needs at least {MIN_FACES} (a "
                        f"face, the speech it is dubbed with and a mismatched third); hold out more demo videos")
    return record


def scores(made, truth, found):
    """lmd_mouth and the best-offset mouth_open_corr of a made video's landmarks against the truth's, over the
    frames where both faces were found."""
    count = min(len(made.landmarks), len(truth))
    both = made.found[:count] & found[:count]
    if not both.any():
        return {"lmd_mouth": float("nan"), "mouth_open_corr": float("nan"), "offset": None,
                "opening_pearson": float("nan"), "opening_scale": float("nan")}
    generated, real = made.landmarks[:count][both], truth[:count][both]
    offset, correlation = best_offset_corr(generated, real)
    pearson, scale = timing_and_scale(generated, real, offset)
    return {"lmd_mouth": lmd_mouth(generated, real), "mouth_open_corr": correlation, "offset": offset,
            "opening_pearson": pearson, "opening_scale": scale}


def detect(path):
    video = LandmarkedVideo.open(path, progress=False, need_face=False)
    video.close()
    return video


def procedural_truth(demo_dir, faces, dub, out_dir, device, mouth_size):
    """Rows (per face: dubbed, reference copy, mismatched) and the mean of each kind. `dub(source, audio, output,
    landmarks)` dubs a video file with an audio file, cropping by the landmark CSV `landmarks`; the videos made are
    kept under out_dir/videos."""
    record = check_faces(demo_dir, faces)
    faces = list(dict.fromkeys(faces))
    layout = Layout.under(demo_dir)
    folder = os.path.join(out_dir, "videos")
    os.makedirs(folder, exist_ok=True)
    rows, traces = [], {}
    for index, face in enumerate(tqdm(faces, desc="faces", unit="face")):
        speech, mismatched = faces[(index + 1) % len(faces)], faces[(index + 2) % len(faces)]
        drawn = {name: demo_video(record["seed"], record["videos"].index(name), record["seconds"])
                 for name in (face, speech)}
        source = os.path.join(layout.split_video_dir, face + ".mp4")
        made = {DUBBED: (speech, os.path.join(folder, f"{face}_speaking_{speech}.mp4")),
                MISMATCHED: (mismatched, os.path.join(folder, f"{face}_speaking_{mismatched}.mp4")),
                REFERENCE: (face, os.path.join(folder, f"{face}_reference_copy.mp4"))}
        truth_path = os.path.join(folder, f"{face}_speaking_{speech}_truth.mp4")
        write_talking_face(truth_path, drawn[face], drawn[speech])
        truth = detect(truth_path)
        if not truth.found.any():
            raise UserError(f"{truth_path}: the landmark detector finds no face in the drawn truth; the demo set in "
                            f"{demo_dir} cannot be scored")
        prepared, _ = landmark_csv(face, layout)
        if not os.path.isfile(prepared):
            raise UserError(f"{demo_dir}: {face} has no landmarks ({prepared}); prepare the demo set again with "
                            f"python data_processing.py --make_demo_data --demo_dir {demo_dir}")
        for kind in (DUBBED, MISMATCHED):
            audio, output = made[kind]
            dub(source, os.path.join(layout.audio_dir, audio + ".wav"), output, prepared)
        reference_copy(source, made[REFERENCE][1], read_openface_csv(prepared), mouth_size, device)
        traces[face] = {"true face": openings(truth)}
        for kind in (DUBBED, REFERENCE, MISMATCHED):
            audio, output = made[kind]
            video = detect(output)
            traces[face][kind] = openings(video)
            rows.append({"face": face, "kind": kind, "speech": audio, "truth speech": speech,
                         "frames": len(truth.landmarks), **scores(video, truth.landmarks, truth.found)})
    means = []
    for kind in (DUBBED, REFERENCE, MISMATCHED):
        of_kind = [row for row in rows if row["kind"] == kind]
        means.append({"face": f"mean of {len(of_kind)}", "kind": kind, "frames": sum(r["frames"] for r in of_kind),
                      **{key: finite_mean([row[key] for row in of_kind])
                         for key in ("lmd_mouth", "mouth_open_corr", "opening_pearson", "opening_scale")}})
    plot_openings(traces, os.path.join(out_dir, OPENINGS_PLOT))
    return rows + means


def openings(video):
    """(T,) a video's mouth opening per frame in units of the face size, NaN where no face was found."""
    return np.where(video.found, mouth_opening(video.landmarks), np.nan)


def plot_openings(traces, path):
    """One panel per face: the true face's mouth opening over time beside the dubbed and baseline ones, so a reader
    sees at once whether the dubbed mouth opens when the true one does, and how far."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(len(traces), 1, figsize=(10, 2.4 * len(traces)), sharex=True, squeeze=False)
    styles = {"true face": dict(color="black", linewidth=2), DUBBED: dict(color="tab:red", linewidth=1.5),
              MISMATCHED: dict(color="tab:blue", linewidth=1, alpha=0.6),
              REFERENCE: dict(color="tab:gray", linewidth=1, linestyle="--")}
    for axes, (face, series) in zip(panels[:, 0], traces.items()):
        for kind, values in series.items():
            axes.plot(np.arange(len(values)) / FPS, values, label=kind, **styles[kind])
        axes.set_title(face, fontsize=9, loc="left")
        axes.set_ylabel("mouth opening")
        axes.grid(alpha=0.3)
    panels[0, 0].legend(fontsize=8, ncol=4, loc="upper right")
    panels[-1, 0].set_xlabel("seconds")
    with atomic_output(path) as partial:
        figure.savefig(partial, dpi=100, bbox_inches="tight")
    plt.close(figure)


def finite_mean(values):
    """The mean of the numbers that are not NaN (a score a video could not have), NaN if none is."""
    finite = [value for value in values if not math.isnan(value)]
    return sum(finite) / len(finite) if finite else float("nan")


def verdict(means, minimum=0.8):
    """One line: does the dubbed mouth follow the speech (mouth_open_corr >= minimum and both baselines beaten in
    both scores)? `means`: {kind: mean row}."""
    dubbed = means[DUBBED]
    beaten = all(dubbed["lmd_mouth"] < means[kind]["lmd_mouth"] and
                 dubbed["mouth_open_corr"] > means[kind]["mouth_open_corr"] for kind in (REFERENCE, MISMATCHED))
    follows = dubbed["mouth_open_corr"] >= minimum and beaten
    return follows, (f"the dubbed mouths {'follow' if follows else 'do not yet follow'} the new speech: "
                     f"mouth_open_corr {dubbed['mouth_open_corr']:.2f} against the true face ({minimum} or more is "
                     f"the bar), lmd_mouth {dubbed['lmd_mouth']:.3f}; reference copy "
                     f"{means[REFERENCE]['mouth_open_corr']:.2f} / {means[REFERENCE]['lmd_mouth']:.3f}, mismatched "
                     f"speech {means[MISMATCHED]['mouth_open_corr']:.2f} / {means[MISMATCHED]['lmd_mouth']:.3f}"
                     f"{'' if beaten else ' (a baseline is not beaten in both)'}")
