"""Print what checkpoints record beside their weights: the flags of the run that wrote them, lab, sizes, scores.

    python inspect_checkpoint.py ./asserts/training_model_weight/frame_training_128/netG_best.pth [MORE.pth ...]

One JSON object per file, read as training and dubbing read it (checksum checked, no code run).
"""
import json

from common.errors import ArgumentParser, run_command
from models.checkpoint import load_checkpoint

LOOP_STATE = ("state_dict", "optimizer", "scheduler", "scaler", "rng")  # what a resume reads, not what a reader wants


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", metavar="FILE", help="a .pth of a training run, or DINet's")
    for path in parser.parse_args().checkpoints:
        checkpoint = load_checkpoint(path, "checkpoint", expected="a .pth a training run wrote")
        recorded = {key: value for key, value in checkpoint.items() if key not in LOOP_STATE}
        print(json.dumps({"file": path, **recorded}, indent=1, default=lambda value: f"<{type(value).__name__}>"))


if __name__ == "__main__":
    run_command(main)
