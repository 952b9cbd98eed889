"""Clip-stage training of DINet: 5-frame clips, clip discriminator and SyncNet loss, after the frame stage.

One device (the lab's fourth command, unchanged):
    python train_DINet_clip.py --augment_num=3 --mouth_region_size=256 --batch_size=3 \
        --pretrained_syncnet_path=./asserts/syncnet_256mouth.pth \
        --pretrained_frame_DINet_path=./asserts/training_model_weight/frame_training_256/netG_model_epoch_2.pth \
        --result_path=./asserts/training_model_weight/clip_training_256
LatentSync's loss weighting (L1 x1, SyncNet x0.05, LPIPS on the lower face x0.1, TREPA x10), any weight overridable:
    python train_DINet_clip.py ... --loss_preset latentsync [--lamb_trepa 0] [--lamb_perception 10]
Offline (no torchvision downloads): --vgg19_weights, --lpips_weights and --trepa_weights take random or a path.
Many GPUs (per-GPU batch size):
    torchrun --nproc_per_node=8 train_DINet_clip.py --mouth_region_size=256 --batch_size=3 ...
Continue an interrupted run:
    python train_DINet_clip.py ... --resume ./asserts/training_model_weight/clip_training_256/netG_model_epoch_10.pth
Watch it:
    tensorboard --logdir ./asserts/training_model_weight
"""
from common.errors import run_command
from config.config import clip_training_parser
from engine.clip_stage import ClipStage
from engine.trainer import train

if __name__ == "__main__":
    parser = clip_training_parser(__doc__.splitlines()[0], "./asserts/training_model_weight/clip_training_256")
    run_command(train, parser.parse_args(), ClipStage)
