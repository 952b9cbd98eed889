"""Every numeric flag of every command has its valid range: a value outside it stops the command before any work
with argparse's one line naming the flag (exit 2). The cases are generated from the commands' parsers, so a new
numeric flag without a range turns this red; the flags that crashed mid-run are also run as real processes."""
import subprocess
import sys

import pytest

import app
import benchmark.cli
import compare_labs
import data_processing
import demo
import evaluate
import export
import inference
import train_person
from config.config import clip_training_parser, syncnet_parser, training_parser
from config.ranges import Bounded
from conftest import ROOT

PARSERS = {  # each command's parser, as the command builds it
    "train_DINet_frame.py": training_parser("frame", "./run"),
    "train_DINet_clip.py": clip_training_parser("clip", "./run"),
    "train_syncnet.py": syncnet_parser("syncnet", "./run"),
    "inference.py": inference.build_parser(),
    "evaluate.py": evaluate.build_parser(),
    "data_processing.py": data_processing.build_parser(),
    "bench.py": benchmark.cli.build_parser(),
    "compare_labs.py": compare_labs.build_parser(),
    "demo.py": demo.build_parser(),
    "app.py": app.build_parser(),
    "export.py": export.build_parser(),
    "train_person.py": train_person.build_parser(),
}
# validated by DINet's crop geometry (a multiple of 8, 16 or more) before any work: tests/test_bad_input.py
CHECKED_ELSEWHERE = {"--mouth_region_size"}


def numeric_flags():
    for command, parser in PARSERS.items():
        for action in parser._actions:
            if action.option_strings and (isinstance(action.type, Bounded) or action.type in (int, float)):
                yield command, parser, action


def outside(action):
    """Values just outside the flag's declared range (and, for a number, the non-finite ones)."""
    kind = action.type
    if action.choices:
        return [str(max(action.choices) + 1), str(min(action.choices) - 1)]
    values = []
    if kind.minimum is not None:
        values.append(kind.minimum - 1)
    if kind.above is not None:
        values.append(kind.above)
    if kind.maximum is not None:
        values.append(kind.maximum + 1)
    return [str(value) for value in values] + (["nan", "inf"] if kind.kind is float else [])


CASES = [pytest.param(command, action.option_strings[-1], value, id=f"{command} {action.option_strings[-1]} {value}")
         for command, parser, action in numeric_flags() if isinstance(action.type, Bounded) or action.choices
         for value in outside(action)]


def test_every_numeric_flag_of_every_command_has_a_range_that_holds_its_default():
    unranged = [f"{command} {action.option_strings[-1]}" for command, _, action in numeric_flags()
                if not isinstance(action.type, Bounded) and not action.choices
                and action.option_strings[-1] not in CHECKED_ELSEWHERE]
    assert unranged == []
    for command, _, action in numeric_flags():
        if action.default is not None and isinstance(action.type, Bounded):
            assert action.default in action.type, (command, action.option_strings, action.default)
    assert len(CASES) > 100


@pytest.mark.parametrize("command,flag,value", CASES)
def test_a_value_outside_the_range_stops_argparse_naming_the_flag(command, flag, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        PARSERS[command].parse_known_args([flag, value])
    assert stopped.value.code == 2
    line, = capsys.readouterr().err.strip().splitlines()  # one line, not the usage of every flag above it
    assert f"error: argument {flag}: " in line and (f"got {value}" in line or "invalid choice" in line), line


FRAME = ["--vgg19_weights", "random", "--device", "cpu", "--num_workers", "0", "--augment_num", "2",
         "--batch_size", "2", "--non_decay", "1", "--decay", "0"]


@pytest.mark.parametrize("flag,value,rule", [
    ("--batch_size", "0", "an integer >= 1"),
    ("--decay", "-1", "an integer >= 0"),
    ("--lr_g", "-1", "a number >= 0"),
    ("--num_workers", "-1", "an integer >= 0"),
    ("--seed", "-1", "an integer from 0 to 4294967295"),
    ("--checkpoint", "0", "an integer >= 1"),              # trained a whole epoch, then divided by it
    ("--image_every", "0", "an integer >= 1"),             # crashed after the first step
    ("--keep_step_checkpoints", "0", "an integer >= 1"),   # deleted each step checkpoint as it was written
])
def test_a_training_flag_out_of_range_stops_before_any_training_step(tiny_json, tmp_path, flag, value, rule):
    result_path = tmp_path / "run"
    done = subprocess.run([sys.executable, "train_DINet_frame.py", "--train_data", tiny_json, "--result_path",
                           str(result_path), *FRAME, "--save_every_steps", "1", flag, value], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr == (f"train_DINet_frame.py: error: argument {flag}: must be {rule}, got {value} "
                           f"(python train_DINet_frame.py --help lists the flags)\n")
    assert not result_path.exists()  # no log, no checkpoint: nothing ran


def test_compare_labs_checks_the_training_flags_it_passes_on_before_any_lab_trains(tiny_json, tmp_path):
    done = subprocess.run([sys.executable, "compare_labs.py", "--labs", "lab1", "--out_dir", str(tmp_path / "out"),
                           "--train_data", tiny_json, *FRAME, "--lr_dI", "-1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: argument --lr_dI: must be a number >= 0, got -1" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "lab1").exists()


@pytest.mark.parametrize("flags,code,last", [
    (["--video", "1080x0"], 2, "error: argument --video: must be WxH with even sides of 64 or more, got 1080x0"),
    (["--peak_tflops", "bf16=989,fp32=0"], 1,
     "--peak_tflops bf16=989,fp32=0: a peak must be a number > 0; pass e.g. --peak_tflops 989"),
])
def test_bench_numbers_in_text_flags_are_checked_before_any_measurement(tmp_path, flags, code, last):
    json_path = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "bench.py", "--tasks", "loader", "--quick", "--json", str(json_path),
                           *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == code and "Traceback" not in done.stderr
    assert last in done.stderr.strip().splitlines()[-1]
    assert not json_path.exists()
