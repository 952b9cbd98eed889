"""evaluate.py --protocol procedural: demo faces dubbed with other demo videos' speech, scored against the faces the
demo set's generator draws for that speech, beside a face that does not speak and a mismatched speech."""
import csv
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, refusal
from test_inference import checkpoint  # noqa: F401  (fixture: an untrained mel generator at mouth 64)

from data.procedural_faces import DEMO_RECORD, demo_video, make_demo_data, read_demo_record, write_talking_face
from evaluation.procedural import DUBBED, MISMATCHED, REFERENCE, procedural_truth
from models.checkpoint import atomic_save, load_checkpoint

FACES = ["demo_000", "demo_001", "demo_002"]
COLUMNS = ["face", "kind", "speech", "truth speech", "frames", "lmd_mouth", "mouth_open_corr", "offset",
           "opening_pearson", "opening_scale"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("procedural")
    make_demo_data(str(folder), num_videos=3, seconds=2.4, seed=5)
    return str(folder)


def test_the_demo_set_records_how_to_draw_its_faces_again(demo_dir):
    assert read_demo_record(demo_dir) == {"seed": 5, "seconds": 2.4, "videos": FACES}


def test_a_demo_record_nested_deeper_than_json_parses_is_one_line(tmp_path):
    from common.errors import UserError
    (tmp_path / DEMO_RECORD).write_text('{"seed": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(UserError, match=f"^{tmp_path / DEMO_RECORD}: not a demo set's record \\(RecursionError\\)"):
        read_demo_record(str(tmp_path))


def means_of(rows):
    return {row["kind"]: row for row in rows if row["face"].startswith("mean")}


def test_a_dubber_that_draws_the_true_face_scores_near_one_and_both_baselines_far_below(demo_dir, tmp_path):
    """An oracle for the generator: it writes the face speaking whichever demo speech it is given. The protocol must
    then score it near perfect, and the reference copy and the mismatched speech clearly worse."""
    record = read_demo_record(demo_dir)

    def draw(source, audio, output, landmarks):
        face, speech = (os.path.splitext(os.path.basename(path))[0] for path in (source, audio))
        write_talking_face(output, *(demo_video(5, record["videos"].index(name), 2.4) for name in (face, speech)))
    rows = procedural_truth(demo_dir, FACES, draw, str(tmp_path), torch.device("cpu"), 64)
    assert [(row["face"], row["kind"]) for row in rows[:3]] == [("demo_000", kind)
                                                                 for kind in (DUBBED, REFERENCE, MISMATCHED)]
    assert [row["speech"] for row in rows[:9:3]] == ["demo_001", "demo_002", "demo_000"]  # the next face's speech
    assert [row["speech"] for row in rows[2:9:3]] == ["demo_002", "demo_000", "demo_001"]  # the one after's
    means = means_of(rows)
    assert means[DUBBED]["mouth_open_corr"] > 0.95 and means[DUBBED]["lmd_mouth"] < 0.01
    for kind in (REFERENCE, MISMATCHED):
        assert means[kind]["mouth_open_corr"] < 0.5, (kind, means[kind])
        assert means[kind]["lmd_mouth"] > 2 * means[DUBBED]["lmd_mouth"], (kind, means[kind])
    assert all(row["offset"] == 0 for row in rows[:9:3])
    assert means[DUBBED]["opening_pearson"] > 0.95 and means[DUBBED]["opening_scale"] == pytest.approx(1, abs=0.1)
    assert means[REFERENCE]["opening_scale"] < 0.3  # one frame's mouth: the opening barely moves


def test_evaluate_dubs_with_a_checkpoint_and_writes_the_table_and_the_verdict(demo_dir, checkpoint, tmp_path):  # noqa: F811
    """The checkpoint says it held out demo_001 and demo_002 of a demo set like this one (as training with
    validation records): demo_000, which it may have trained on, is scored with a warning in the output and table."""
    out, held_out = tmp_path / "out", str(tmp_path / "netG_best.pth")
    atomic_save({**load_checkpoint(checkpoint), "validation_split": {"val_data": "held_out.json",
                                                                     "videos": ["demo_001", "demo_002"]}}, held_out)
    result = subprocess.run([sys.executable, "evaluate.py", "--protocol", "procedural", "--demo_dir", demo_dir,
                             "--faces", *FACES, "--checkpoint", held_out, "--out_dir", str(out), "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = ("--faces demo_000: the checkpoint held out demo_001, demo_002 of a demo set like this one (its "
               "validation split) and so may have trained on these")
    assert f"warning: {warning}" in result.stderr and warning in (out / "procedural.md").read_text()
    with open(out / "procedural.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert len(rows) == 12 and [row["face"] for row in rows[9:]] == ["mean of 3"] * 3
    assert all(int(row["frames"]) == 60 for row in rows[:9])
    untrained = means_of(rows)[DUBBED]
    # an untrained generator does not follow the speech, and the last line says so
    assert float(untrained["mouth_open_corr"]) < 0.8
    assert re.search(r"the dubbed mouths do not yet follow the new speech: mouth_open_corr -?[\d.]+ against the true",
                     result.stdout.strip().splitlines()[-1])
    made = sorted(os.listdir(out / "videos"))
    assert "demo_000_speaking_demo_001.mp4" in made and "demo_000_speaking_demo_001_truth.mp4" in made
    assert "demo_000_speaking_demo_002.mp4" in made and "demo_000_reference_copy.mp4" in made
    assert (out / "procedural.md").read_text().startswith("# Dubbing against the true face")
    assert (out / "openings.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("args,expected", [
    ("--faces demo_000 demo_001", "--faces: 2 distinct video(s); the protocol needs at least 3"),
    ("--faces demo_000 demo_001 demo_009", "--faces: demo_009 is not a video of the demo set in {demo_dir}"),
    ("--faces demo_000 demo_001 demo_002 --videos {checkpoint}", "--videos: --protocol procedural dubs the demo set"),
    ("--demo_dir {checkpoint_dir} --faces demo_000 demo_001 demo_002",
     "{checkpoint_dir}/" + DEMO_RECORD + ": not a demo set's record"),
    ("--demo_dir {checkpoint} --faces demo_000 demo_001 demo_002",
     "{checkpoint}: a file, not a demo set's folder; pass the folder python data_processing.py --make_demo_data"),
    ("--faces demo_000 demo_001 demo_002 --checkpoint {demo_dir}/training_json.json",
     "--checkpoint {demo_dir}/training_json.json: "),
])
def test_bad_input_is_one_line_and_leaves_no_table(demo_dir, checkpoint, args, expected, tmp_path,  # noqa: F811
                                                   monkeypatch, capsys):
    values = dict(demo_dir=demo_dir, checkpoint=checkpoint, checkpoint_dir=os.path.dirname(checkpoint))
    argv = [piece.format(**values) for piece in args.split()]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", checkpoint]
    if "--demo_dir" not in argv:
        argv += ["--demo_dir", demo_dir]
    message = refusal("evaluate.py", ["--protocol", "procedural", *argv, "--out_dir", str(tmp_path / "out"),
                                      "--device", "cpu"], monkeypatch, capsys)
    assert message.startswith(expected.format(**values)), message
    assert not os.path.exists(tmp_path / "out" / "procedural.csv")
