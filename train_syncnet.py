"""Train a SyncNet on the generator's training JSON (DINet ships weights but no way to train one).

One device:
    python train_syncnet.py --train_data ./asserts/training_data/training_json.json --mouth_region_size 256 \
        --result_path ./asserts/training_model_weight/syncnet_training_256
writes ./asserts/syncnet_256mouth.pth (where the clip stage's command looks; --syncnet_path to change it) and
ends with `held-out accuracy: A`. The defaults are the recipe measured to learn from a few videos on a CPU: the
Wav2Lip / LatentSync style embedding SyncNet, the m x m mouths read at 64 x 64 (the SyncNet records it; the clip
stage resizes the same way), batches of 16. DINet's own layout, which loads the published syncnet_256mouth.pth:
    python train_syncnet.py ... --syncnet_arch dinet --syncnet_input_size 256 --syncnet_centre_window off
Many GPUs (per-GPU batch size):
    torchrun --nproc_per_node=8 train_syncnet.py --mouth_region_size 256 --batch_size 32 ...
Continue an interrupted run:
    python train_syncnet.py ... --resume ./asserts/training_model_weight/syncnet_training_256/syncnet_model_epoch_10.pth
Watch it:
    tensorboard --logdir ./asserts/training_model_weight
"""
from common.errors import run_command
from config.config import syncnet_parser
from engine.syncnet_stage import SyncNetStage
from engine.trainer import train

if __name__ == "__main__":
    parser = syncnet_parser(__doc__.splitlines()[0], "./asserts/training_model_weight/syncnet_training_256")
    run_command(train, parser.parse_args(), SyncNetStage)
