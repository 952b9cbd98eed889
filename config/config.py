"""Command-line options of the training scripts.

Every flag of DINet's `config/config.py` keeps its name and default, so the lab's commands run as
written; `--lamb_syncnet_perception` is a float (DINet declared it int with a float default).
New: `--lab` and one flag per architectural choice, `--resume [PATH|auto]`, `--save_every_steps`,
`--max_non_finite`, `--amp`, `--channels_last`, `--compile`, `--device`, `--vgg19_weights`,
`--num_workers`, `--image_every`, `--iterations_per_epoch`, validation on held-out videos (`--val_*`);
for the clip stage the loss recipe (`--loss_preset` and one weight per loss, `--lpips_weights`,
`--trepa_weights`); and the SyncNet script's own parser.

Numeric flags carry their valid range (`config/ranges.py`): a value outside it stops argparse before any work.

Loss weights default to None on the command line and are filled from the loss preset after parsing
(DINet's unless `--loss_preset` says otherwise), so a weight given explicitly always wins; a new `--lamb_*` flag
needs its weight in every preset of LOSS_PRESETS (parsing stops, naming it, until it has one).
"""
import argparse

from common.devices import AMP_CHOICES
from common.errors import ArgumentParser
from models.dinet import CHOICES
from models.syncnet import ARCHITECTURES, DEFAULT_INPUT_SIZE, FACE_STRIDE

from .labs import LAB_PRESETS
from .ranges import SEED, integer, number

COMPILE_MODES = ("off", "default", "reduce-overhead")  # --compile: engine/precision.py, engine/graphs.py

# Each preset sets every weight; 0 turns a loss off and its network is never built.
LOSS_PRESETS = {
    # DINet: VGG19 perception x10 and the SyncNet score x0.1 (plus both discriminators, x1)
    "dinet": dict(lamb_perception=10.0, lamb_syncnet_perception=0.1, lamb_l1=0.0, lamb_mouth=0.0, lamb_lpips=0.0,
                  lamb_trepa=0.0),
    # LatentSync's pixel-space weighting: reconstruction L1 x1, SyncNet x0.05, LPIPS x0.1, TREPA x10
    "latentsync": dict(lamb_perception=0.0, lamb_syncnet_perception=0.05, lamb_l1=1.0, lamb_mouth=0.0,
                       lamb_lpips=0.1, lamb_trepa=10.0),
}
SYNCNET_LR = 0.0003  # train_syncnet.py's: as fast as 0.001 on the demo set, and steadier at a constant rate


# validation scores, each with whether higher is better (engine/validation.py computes them)
VALIDATION_METRICS = {"lmd_mouth": False, "mouth_open_corr": True, "l1": False, "psnr": True, "ssim": True,
                      "lpips": False, "sync": True}
BEST_NAME = "netG_best.pth"


class PresetDefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default in its help: a loss weight's is each --loss_preset's (read from LOSS_PRESETS); None, which
    says nothing, is left out."""

    def _get_help_string(self, action):
        if action.dest.startswith("lamb_"):
            weights = ", ".join(f"{name} {preset[action.dest]:g}" for name, preset in LOSS_PRESETS.items())
            return f"{action.help} (default by --loss_preset: {weights})"
        return action.help if action.default is None else super()._get_help_string(action)


class TrainingParser(ArgumentParser):
    """An ArgumentParser that fills loss weights left unset from the chosen --loss_preset (default dinet)."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=PresetDefaultsHelpFormatter, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        opt, rest = super().parse_known_args(args, namespace)
        for name in vars(opt):  # a weight no preset sets would stay None: its loss silently off
            if name.startswith("lamb_") and any(name not in preset for preset in LOSS_PRESETS.values()):
                raise ValueError(f"--{name}: no loss preset sets it; give it a weight in every preset of LOSS_PRESETS "
                                 f"(config/config.py), 0 for off")
        preset = LOSS_PRESETS[getattr(opt, "loss_preset", "dinet")]
        for name, value in preset.items():
            if hasattr(opt, name) and getattr(opt, name) is None:
                setattr(opt, name, value)
        return opt, rest


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
                       help="named preset of config/labs.py, each DINet with the changes it lists (default lab1; on "
                            "--resume, the checkpoint's)")
    group.add_argument("--extra_same_block", type=on_off, default=None, metavar="{on,off}",
                       help="one more SameBlock2d(256->256) closing the source and reference encoders")
    for name, allowed in CHOICES.items():
        group.add_argument(f"--{name}", default=None, choices=allowed, help="default: the lab's")


def add_data_and_schedule_flags(parser, result_path, epochs):
    """What every training script reads the same way: the seed, the training data, DINet's schedule (`epochs` at a
    fixed learning rate, then as many decaying), checkpoints and the result folder."""
    add = parser.add_argument
    add("--seed", type=SEED, default=456, help="random seed to use")
    add("--train_data", type=str, default="./asserts/training_data/training_json.json", help="path of training json")
    add("--audio_channel", type=integer(1), default=None,
        help="audio feature width; read from the training JSON (29 for DeepSpeech). Given explicitly, it must agree")
    add("--start_epoch", default=1, type=integer(1), help="start epoch in training stage")
    add("--non_decay", default=epochs, type=integer(0), help="epochs with fixed learning rate")
    add("--decay", default=epochs, type=integer(0), help="epochs of linear learning-rate decay")
    add("--checkpoint", type=integer(1), default=2, help="save a checkpoint every N epochs, and after the last")
    add("--result_path", type=str, default=result_path, help="folder for checkpoints, logs and samples")


def add_running_flags(parser, image_every=200):
    """What every training script shares beyond the data and the schedule: device, resume, loading, records."""
    group = parser.add_argument_group("running")
    group.add_argument("--resume", default="",
                       help="checkpoint to continue from (networks, optimizers, schedulers, position in the epoch, RNG), "
                            "or auto: the newest good checkpoint in --result_path (none yet: start from the beginning)")
    group.add_argument("--save_every_steps", type=integer(0), default=0,
                       help="also write a checkpoint every K iterations ({prefix}_{epoch}_iter_{I}.pth; 0: only DINet's "
                            "per-epoch ones)")
    group.add_argument("--keep_step_checkpoints", type=integer(1), default=2,
                       help="how many of the newest step checkpoints stay (the newest holds the run)")
    group.add_argument("--max_non_finite", type=integer(1), default=10,
                       help="stop after this many iterations in a row with a non-finite loss (each one is skipped)")
    group.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    group.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                       help="autocast precision; auto: bf16 on CPUs with AMX or AVX512-BF16, fp32 (TF32 tensor cores) "
                            "on GPUs and other CPUs, each measured fastest at the lab's batch sizes. fp16 adds a "
                            "gradient scaler")
    group.add_argument("--channels_last", type=on_off, default="on", metavar="{on,off}",
                       help="NHWC memory format for the networks and image batches (measured faster)")
    group.add_argument("--compile", nargs="?", const="default", default="off", choices=COMPILE_MODES,
                       help="default (or the bare flag): torch.compile the generator (minutes of compiling on a CPU); "
                            "reduce-overhead: the whole step recorded once as a CUDA graph and replayed (a GPU, one "
                            "process; elsewhere, or where the capture fails, the run goes on without it and says why)")
    group.add_argument("--num_workers", type=integer(0), default=None,
                       help="data-loader worker processes (default: 2 on a CPU; on a GPU this process's share of the "
                            "CPU cores less one, 2 to 8)")
    group.add_argument("--image_every", type=integer(1), default=image_every,
                       help="write an image grid every N iterations")
    group.add_argument("--frame_cache_mb", type=integer(0), default=2048,
                       help="memory per loader process for decoded, resized face crops (0: re-read every time)")
    group.add_argument("--iterations_per_epoch", type=integer(0), default=0,
                       help="stop each epoch after N iterations (0: a full pass, DINet's epoch)")
    group.add_argument("--max_minutes", type=number(above=0), default=None,
                       help="stop, with a checkpoint, after the epoch past which another would not fit in M minutes "
                            "of this process's time (the schedule is not shortened: the rate stays where it got to)")
    return group


def training_parser(description, result_path):
    parser = TrainingParser(description=description)
    add_data_and_schedule_flags(parser, result_path, epochs=200)
    add = parser.add_argument
    add("--source_channel", type=int, choices=[3], default=3, help="input source image channels (RGB)")
    add("--ref_channel", type=int, choices=[15], default=15, help="input reference image channels (5 RGB frames)")
    add("--augment_num", type=integer(1), default=32, help="times each video is sampled per epoch")
    add("--mouth_region_size", type=int, default=64, help="mouth size m; the face crop is (3m/2+m/8) x (m+m/4)")
    add("--batch_size", type=integer(1), default=24, help="training batch size")
    add("--lamb_perception", type=number(0), default=None, help="weight of VGG19 perception loss")
    add("--lamb_l1", type=number(0), default=None,
        help="weight of the L1 reconstruction loss (the frame stage takes it too)")
    add("--lamb_mouth", type=number(0), default=None,
        help="weight of an L1 on the mouth hole weighted by how far each pixel differs from the references' mean "
             "(engine/losses.py mouth_l1): it teaches how far the mouth opens sooner")
    add("--lamb_syncnet_perception", type=number(0), default=None,
        help="weight of the SyncNet loss in the clip stage")
    add("--lr_g", type=number(0), default=0.0001, help="initial learning rate of the generator (Adam; 0 freezes it)")
    add("--lr_dI", type=number(0), default=0.0001, help="initial learning rate of the discriminators (Adam; 0 freezes them)")
    add("--ema", type=number(0, maximum=0.99999), default=0.0,
        help="keep a moving average of the generator's weights, this much of it kept per iteration (e.g. 0.995); "
             "validation scores it and checkpoints give it to dubbing and the next stage (0: off, as DINet)")
    add("--coarse2fine", action="store_true", help="initialise the generator from --coarse_model_path")
    add("--coarse_model_path", default="", type=str, help="checkpoint (.pth) of the coarser stage")
    add("--pretrained_syncnet_path", default="", type=str, help="checkpoint (.pth) of a trained SyncNet")
    add("--pretrained_frame_DINet_path", default="", type=str, help="checkpoint (.pth) of the frame-trained DINet")
    add("--D_num_blocks", type=integer(1), default=4, help="num of down blocks in discriminator")
    add("--D_block_expansion", type=integer(1), default=64, help="block expansion in discriminator")
    add("--D_max_features", type=integer(1), default=256, help="max channels in discriminator")
    add_generator_flags(parser)
    group = add_running_flags(parser)
    group.add_argument("--vgg19_weights", default="imagenet",
                       help="VGG19 for the perception loss: imagenet (torchvision download/cache), random, or a .pth path")
    add_validation_flags(parser)
    return parser


def add_validation_flags(parser):
    group = parser.add_argument_group("validation on held-out videos (off unless --val_data or --val_fraction)")
    group.add_argument("--val_data", default=None, help="training JSON of held-out videos (prepared as --train_data)")
    group.add_argument("--val_fraction", type=number(above=0, maximum=1), default=None,
                       help="hold out this fraction of --train_data's videos instead (whole videos, drawn by --seed)")
    group.add_argument("--val_every", type=integer(1), default=1, help="validate every N epochs (and after the last)")
    group.add_argument("--val_metric", default="lmd_mouth", choices=list(VALIDATION_METRICS),
                       help=f"the score that picks {BEST_NAME} (lmd_mouth, l1, lpips: lower is better)")
    group.add_argument("--val_patience", type=integer(0), default=0,
                       help="stop when K validations in a row did not improve --val_metric (0: train every epoch)")
    group.add_argument("--val_clips", type=integer(1), default=8, help="9-frame clips generated per held-out video")
    group.add_argument("--val_lpips_weights", default="pretrained",
                       help="LPIPS VGG16 trunk: pretrained (torchvision download/cache), random, or a VGG16 .pth path")
    group.add_argument("--val_syncnet_path", default="",
                       help="SyncNet (.pth from train_syncnet.py) for the sync score; the clip stage uses its own")


def clip_training_parser(description, result_path):
    """DINet's flags plus the clip stage's loss recipe."""
    parser = training_parser(description, result_path)
    group = parser.add_argument_group("clip-stage losses (a preset, then per-weight overrides; 0 turns a loss off)")
    group.add_argument("--loss_preset", default="dinet", choices=list(LOSS_PRESETS),
                       help="dinet: perception x10, sync x0.1; latentsync: L1 x1, sync x0.05, LPIPS x0.1, TREPA x10")
    group.add_argument("--lamb_lpips", type=number(0), default=None,
                       help="weight of LPIPS (VGG) on the lower half of the face")
    group.add_argument("--lamb_trepa", type=number(0), default=None,
                       help="weight of TREPA, the distance of frozen video-model features")
    group.add_argument("--batchnorm_stats", default="frozen", choices=["frozen", "batch"],
                       help="the generator's BatchNorm: frozen normalises with the frame stage's statistics (a clip "
                            "batch holds only --batch_size faces, whose statistics drift from them and blur the "
                            "generator); batch: DINet's, updated from every batch")
    group.add_argument("--lpips_weights", default="pretrained",
                       help="LPIPS VGG16 trunk: pretrained (torchvision download/cache), random, or a VGG16 .pth path; "
                            "the LPIPS linear layers ship with the lpips package")
    group.add_argument("--trepa_weights", default="pretrained",
                       help="TREPA video encoder (r2plus1d_18): pretrained (Kinetics-400, torchvision download/cache), "
                            "random, or a .pth path")
    return parser


def syncnet_parser(description, result_path):
    """train_syncnet.py: the generator scripts' data, schedule and running flags, and the SyncNet's own. The defaults
    are the recipe measured to learn lip sync from a few videos on a CPU (README, SyncNet): the embedding SyncNet,
    mouths read at 64 x 64, Adam at 0.0003, in-sync windows whose off-sync examples are the batch's other pairings."""
    parser = TrainingParser(description=description)
    add_data_and_schedule_flags(parser, result_path, epochs=20)
    add = parser.add_argument
    add("--mouth_region_size", type=int, default=256, help="mouth size m of the generator this SyncNet will serve")
    add("--augment_num", type=integer(1), default=1, help="times each 5-frame window is sampled per epoch")
    add("--batch_size", type=integer(1), default=16, help="windows per batch (each also meets the others' audio)")
    add("--lr", type=number(0), default=SYNCNET_LR, help="initial learning rate (Adam; 0 freezes the network)")
    add("--syncnet_path", default="",
        help="where the trained SyncNet goes (default ./asserts/syncnet_{m}mouth.pth); pass it to the clip stage "
             "as --pretrained_syncnet_path")
    group = parser.add_argument_group("SyncNet")
    group.add_argument("--syncnet_arch", default="embedding", choices=ARCHITECTURES,
                       help="embedding: cosine of embeddings + BCE (Wav2Lip, LatentSync); dinet: DINet's score map "
                            "(published layout)")
    group.add_argument("--syncnet_input_size", type=integer(FACE_STRIDE), default=None,
                       help=f"resize the m x m mouths to this before the face encoder (a multiple of 32; default "
                            f"{DEFAULT_INPUT_SIZE}, or 32 for mouths under {DEFAULT_INPUT_SIZE})")
    group.add_argument("--syncnet_centre_window", type=on_off, default="on", metavar="{on,off}",
                       help="subtract each window's mean mouth crop and audio vector first (who speaks is not "
                            "evidence of sync; off reads raw inputs, as DINet's published SyncNet does)")
    group.add_argument("--held_out_fraction", type=number(0, 1), default=0.1,
                       help="share of videos kept out of training to measure accuracy on (at least one video)")
    group.add_argument("--in_sync_fraction", type=number(0, 1), default=1.0,
                       help="share of training windows drawn in sync; pairing each window's mouths with the other "
                            "windows' audio in a batch adds B - 1 off-sync examples per window on top")
    group.add_argument("--negative_min_shift", type=integer(1), default=5,
                       help="off-sync windows from the same video have their audio at least this many frames away")
    add_running_flags(parser, image_every=500)
    return parser
