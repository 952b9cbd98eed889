"""Frame-stage training of DINet, coarse to fine (mouth 64 -> 128 -> 256).

One device (the lab's commands, unchanged):
    python train_DINet_frame.py --augment_num=32 --mouth_region_size=64 --batch_size=24 \
        --result_path=./asserts/training_model_weight/frame_training_64
    python train_DINet_frame.py --augment_num=100 --mouth_region_size=128 --batch_size=12 --coarse2fine \
        --coarse_model_path=./asserts/training_model_weight/frame_training_64/netG_model_epoch_2.pth \
        --result_path=./asserts/training_model_weight/frame_training_128
Many GPUs (per-GPU batch size):
    torchrun --nproc_per_node=8 train_DINet_frame.py --mouth_region_size=64 --batch_size=24 ...
Continue an interrupted run:
    python train_DINet_frame.py ... --resume ./asserts/training_model_weight/frame_training_64/netG_model_epoch_10.pth
Watch it:
    tensorboard --logdir ./asserts/training_model_weight
"""
from common.errors import run_command
from config.config import training_parser
from engine.trainer import FrameStage, train

if __name__ == "__main__":
    parser = training_parser(__doc__.splitlines()[0], "./asserts/training_model_weight/frame_training_64")
    run_command(train, parser.parse_args(), FrameStage)
