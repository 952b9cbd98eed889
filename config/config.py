"""Command-line options of the training scripts.

Every flag of DINet's `config/config.py` keeps its name and default, so the lab's commands run as
written; `--lamb_syncnet_perception` is a float (DINet declared it int with a float default).
New: `--lab` and one flag per architectural choice, `--resume`, `--device`, `--vgg19_weights`,
`--num_workers`, `--image_every`.
"""
import argparse

from models.dinet import CHOICES

from .labs import LAB_PRESETS


def on_off(value):
    lowered = str(value).lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


def add_generator_flags(parser):
    group = parser.add_argument_group("architecture (a lab preset, then per-flag overrides)")
    group.add_argument("--lab", default=None, choices=list(LAB_PRESETS),
                       help="named preset from DESIGN.md's lab table (default lab1; on --resume, the checkpoint's)")
    group.add_argument("--extra_same_block", type=on_off, default=None, metavar="{on,off}",
                       help="one more SameBlock2d(256->256) closing the source and reference encoders")
    for name, allowed in CHOICES.items():
        group.add_argument(f"--{name}", default=None, choices=allowed, help="default: the lab's")


def training_parser(description, result_path):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--seed", type=int, default=456, help="random seed to use")
    add("--source_channel", type=int, default=3, help="input source image channels")
    add("--ref_channel", type=int, default=15, help="input reference image channels (5 frames)")
    add("--audio_channel", type=int, default=None,
        help="audio feature width; read from the training JSON (29 for DeepSpeech). Given explicitly, it must agree")
    add("--augment_num", type=int, default=32, help="times each video is sampled per epoch")
    add("--mouth_region_size", type=int, default=64, help="mouth size m; the face crop is (3m/2+m/8) x (m+m/4)")
    add("--train_data", type=str, default="./asserts/training_data/training_json.json", help="path of training json")
    add("--batch_size", type=int, default=24, help="training batch size")
    add("--lamb_perception", type=float, default=10, help="weight of perception loss")
    add("--lamb_syncnet_perception", type=float, default=0.1, help="weight of sync loss")
    add("--lr_g", type=float, default=0.0001, help="initial learning rate of the generator (Adam)")
    add("--lr_dI", type=float, default=0.0001, help="initial learning rate of the frame discriminator (Adam)")
    add("--start_epoch", default=1, type=int, help="start epoch in training stage")
    add("--non_decay", default=200, type=int, help="epochs with fixed learning rate")
    add("--decay", default=200, type=int, help="epochs of linear learning-rate decay")
    add("--checkpoint", type=int, default=2, help="save a checkpoint every N epochs")
    add("--result_path", type=str, default=result_path, help="folder for checkpoints, logs and samples")
    add("--coarse2fine", action="store_true", help="initialise the generator from --coarse_model_path")
    add("--coarse_model_path", default="", type=str, help="checkpoint (.pth) of the coarser stage")
    add("--pretrained_syncnet_path", default="", type=str, help="checkpoint (.pth) of a trained SyncNet")
    add("--pretrained_frame_DINet_path", default="", type=str, help="checkpoint (.pth) of the frame-trained DINet")
    add("--D_num_blocks", type=int, default=4, help="num of down blocks in discriminator")
    add("--D_block_expansion", type=int, default=64, help="block expansion in discriminator")
    add("--D_max_features", type=int, default=256, help="max channels in discriminator")
    add_generator_flags(parser)
    group = parser.add_argument_group("running")
    group.add_argument("--resume", default="", help="checkpoint to continue from: networks, optimizers, schedulers, epoch, RNG")
    group.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    group.add_argument("--vgg19_weights", default="imagenet",
                       help="VGG19 for the perception loss: imagenet (torchvision download/cache), random, or a .pth path")
    group.add_argument("--num_workers", type=int, default=2, help="data-loader worker processes")
    group.add_argument("--image_every", type=int, default=200, help="write an image grid every N iterations")
    group.add_argument("--frame_cache_mb", type=int, default=2048,
                       help="memory per loader process for decoded, resized face crops (0: re-read every time)")
    return parser
