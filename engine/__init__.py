"""What the training scripts share: the loop, losses, checkpoints, logging and distributed setup."""
