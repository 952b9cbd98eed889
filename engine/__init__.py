"""What the training scripts share: the loop, stages, losses, precision, the run log and distributed setup."""
