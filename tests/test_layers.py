"""The repository's layers: each package imports only the ones below it (dubbing, inference and evaluation never the
training engine, config never engine), each shared constant has one definition, and what moved to a shared home
behaves as one: the atomic writer, checkpoints' checksums, and --help texts that stand alone."""
import ast
import os
import re
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from conftest import ROOT
from models.checkpoint import load_checkpoint
from test_flag_ranges import PARSERS

# what each package may import of the repository, itself included (models/fast and the like are inside `models`)
LAYERS = {
    "common": {"common"},
    "models": {"common", "models"},
    "media": {"common", "media"},
    "data": {"common", "models", "media", "data"},
    "config": {"common", "models", "data", "config"},
    "engine": {"common", "models", "media", "data", "config", "evaluation", "engine"},  # validation's metrics
    "dubbing": {"common", "models", "media", "data", "dubbing"},
    "evaluation": {"common", "models", "media", "data", "dubbing", "evaluation"},
}


def imported_packages(code):
    """The repository's packages in sys.modules after running `code` in a fresh interpreter."""
    report = f"{code}\nimport sys\nprint(sorted({{name.split('.')[0] for name in sys.modules}} & {set(LAYERS)!r}))"
    done = subprocess.run([sys.executable, "-c", report], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))


def modules_of(package):
    """Every module of `package`, subpackages included."""
    return sorted(os.path.relpath(os.path.join(where, name), ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                  for where, _, names in os.walk(os.path.join(ROOT, package)) for name in names if name.endswith(".py"))


@pytest.mark.parametrize("package", LAYERS)
def test_each_package_imports_only_the_layers_below_it(package):
    modules = modules_of(package)
    assert modules, f"no package {package}"
    imports = "\n".join(f"import {module}" for module in modules)
    assert imported_packages(imports) <= LAYERS[package]


def test_dubbing_inference_and_evaluation_never_load_the_training_engine():
    assert "engine" not in imported_packages("import dubbing.pipeline, inference, evaluate")


def test_each_frame_window_and_count_has_one_definition():
    definitions = {}
    for where, folders, names in os.walk(ROOT):
        folders[:] = [name for name in folders if not name.startswith(".") and name != "tests"]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(where, name)
                for node in ast.parse(open(path).read()).body:
                    targets = node.targets if isinstance(node, ast.Assign) else []
                    for target in targets:
                        for leaf in target.elts if isinstance(target, ast.Tuple) else [target]:
                            if isinstance(leaf, ast.Name):
                                definitions.setdefault(leaf.id, []).append(os.path.relpath(path, ROOT))
    for constant in ("AUDIO_WINDOW", "NUM_REFERENCES", "CLIP_LENGTH", "MOUTH_FRAMES", "AUDIO_FRAMES"):
        assert definitions.get(constant) == [os.path.join("common", "geometry.py")], (constant, definitions.get(constant))


WRITTEN = {"report.md"}  # what a command writes, named in its help


def test_help_texts_name_no_file_the_repository_lacks():
    for command, parser in PARSERS.items():
        for name in set(re.findall(r"[\w./-]+\.md\b", parser.format_help())) - WRITTEN:
            assert os.path.exists(os.path.join(ROOT, name)), f"{command} --help names {name}"


def test_a_checksum_this_repository_never_writes_marks_the_checkpoint_corrupt(tmp_path):
    path = tmp_path / "netG_model_epoch_2.pth"
    torch.save({"epoch": 3, "state_dict": {"net_g": {"w": torch.zeros(4)}}, "integrity": "0f" * 16}, path)
    with pytest.raises(UserError, match=f"--resume {path}: corrupt checkpoint"):
        load_checkpoint(str(path))


def test_the_evaluation_table_on_a_full_disk_keeps_the_earlier_one_and_says_so_in_one_line(tmp_path):
    table = tmp_path / "evaluation.csv"
    table.write_text("video,LSE-D\nearlier.mp4,7.0\n")
    write = ("import resource, signal\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
             "from common.errors import run_command\nfrom evaluate import write_csv\n"
             f"run_command(write_csv, [{{'video': f'v{{i}}.mp4', 'LSE-D': 7.5}} for i in range(1000)], {str(table)!r})")
    full = subprocess.run([sys.executable, "-c", write], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert full.returncode == 1
    assert full.stderr.strip() == (f"{table}: not written, the disk is full (File too large); the earlier "
                                   f"evaluation.csv is intact. Free space in {tmp_path} and run again")
    assert table.read_text() == "video,LSE-D\nearlier.mp4,7.0\n"
    assert os.listdir(tmp_path) == ["evaluation.csv"]
