"""Compare labs side by side: train each under the same seed and data, then tabulate and plot.

    python compare_labs.py --labs lab1,lab2,lab12 --train_data JSON --epochs 10 --out_dir DIR \\
        --mouth_region_size 64 --batch_size 2 --vgg19_weights random --device cpu --num_workers 0
    python compare_labs.py --table_only [--labs lab1,lab12]   # parameters and GFLOPs per frame, no training

Every flag other than the four above goes to each training run as to train_DINet_frame.py (a generator
flag such as --warp adain overrides every lab's preset). --epochs N means --non_decay N --decay 0 unless
those are given. Each lab trains into DIR/<lab>/ (checkpoints, log.txt, metrics.jsonl); the comparison goes
to DIR/comparison.md, DIR/comparison.csv and DIR/perception_loss.png. A lab the data cannot train (lab7
needs mel features) is listed as skipped, with the reason.
"""
import argparse

from common.errors import ArgumentParser, run_command
from common.files import check_writable
from config.labs import LAB_PRESETS
from config.ranges import integer
from engine.compare import cost_table, markdown_table, run_comparison


def lab_list(text):
    labs = [lab.strip() for lab in text.split(",") if lab.strip()]
    unknown = [lab for lab in labs if lab not in LAB_PRESETS]
    if unknown or not labs:
        raise argparse.ArgumentTypeError(f"unknown lab {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(LAB_PRESETS)}")
    return labs


def build_parser():
    # allow_abbrev off: --lab (a training flag, refused here) must not be read as an abbreviation of --labs
    parser = ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                            epilog="Other flags: see python train_DINet_frame.py --help")
    parser.add_argument("--labs", type=lab_list, default=list(LAB_PRESETS),
                        help="comma-separated (default: every preset of config/labs.py)")
    parser.add_argument("--epochs", type=integer(1), default=10, help="epochs per lab (the lab's notes compare epoch 10)")
    parser.add_argument("--out_dir", default="./asserts/lab_comparison", help="folder for the runs and the comparison")
    parser.add_argument("--table_only", action="store_true", help="print parameters and GFLOPs per frame; no training")
    return parser


def main():
    opt, training_args = build_parser().parse_known_args()
    if opt.table_only:
        print(markdown_table(cost_table(opt.labs)))
        return
    check_writable(opt.out_dir, "--out_dir")  # before any lab trains
    run_comparison(opt.labs, training_args, opt.epochs, opt.out_dir)


if __name__ == "__main__":
    run_command(main)
