"""The record of a run: DINet's log line on screen and in log.txt, scalars in TensorBoard and
metrics.jsonl, image grids in TensorBoard and samples/*.png."""
import json
import os

import cv2
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from common.files import write_atomically


def format_log_line(epoch, iteration, num_iterations, losses, lr, lr_label="lr_g"):
    """DINet's per-iteration line, e.g.
    `===> Epoch[10](53/54):  Loss_DI: 0.2409 Loss_GI: 0.3107 Loss_perception: 5.1662 lr_g = 0.0001000 `."""
    terms = " ".join(f"{name}: {value:.4f}" for name, value in losses.items())
    return f"===> Epoch[{epoch}]({iteration}/{num_iterations}):  {terms} {lr_label} = {lr:.7f} "


def image_grid(rows, padding=2):
    """rows: list of (3, H, W) tensors per sample, e.g. masked source | 5 references | generated | real ->
    one (3, H', W') image in [0, 1], the images on black with `padding` pixels around each (torchvision's
    make_grid layout, without importing torchvision, which costs seconds in every process)."""
    height, width = rows[0][0].shape[1:]
    grid = torch.zeros(3, len(rows) * (height + padding) + padding, len(rows[0]) * (width + padding) + padding)
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            top, left = y * (height + padding) + padding, x * (width + padding) + padding
            grid[:, top:top + height, left:left + width] = image.detach().float().cpu().clamp(0, 1)
    return grid


def save_png(grid, path):
    """A (3, H, W) image in [0, 1] as an 8-bit PNG."""
    pixels = (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    if not cv2.imwrite(path, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the image")


def drop_records_from(path, resumed_at):
    """Keep the records of metrics.jsonl `path` from before `resumed_at` (global step, epoch) of a resumed run: what a
    killed run logged after its last checkpoint the resumed run logs again (and a line the kill cut short is no
    record). An epoch's validation is logged at the step that ends it, before the checkpoint after it."""
    with open(path) as f:
        lines = f.readlines()

    def before(line):
        record = json.loads(line)
        return (record["step"], record["epoch"]) < resumed_at
    kept = [line for line in lines if line.endswith("\n") and before(line)]
    if len(kept) < len(lines):
        write_atomically(path, lambda f: f.writelines(kept), mode="w")


class RunLog:
    def __init__(self, result_path, enabled=True, resumed_at=None):
        """`resumed_at`: (global step, epoch) where a resumed run starts."""
        self.enabled = enabled
        self.result_path = result_path
        if not enabled:
            return
        os.makedirs(os.path.join(result_path, "samples"), exist_ok=True)
        self.text = open(os.path.join(result_path, "log.txt"), "a")
        metrics = os.path.join(result_path, "metrics.jsonl")
        if resumed_at and os.path.exists(metrics):
            drop_records_from(metrics, resumed_at)
        self.metrics = open(metrics, "a")
        self.board = SummaryWriter(os.path.join(result_path, "tensorboard"))

    def line(self, text):
        """Printed above the progress bar (tqdm.write keeps the bar intact) and appended to log.txt."""
        if not self.enabled:
            return
        tqdm.write(text)
        self.text.write(text.rstrip() + "\n")
        self.text.flush()

    def scalars(self, step, epoch, values):
        if not self.enabled:
            return
        for name, value in values.items():
            self.board.add_scalar(name, value, step)
        self.metrics.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
        self.metrics.flush()

    def images(self, step, grid, tag="masked_source|references|generated|real", name=None):
        """To TensorBoard under `tag` and to samples/ as `name` (default step_N.png)."""
        if not self.enabled:
            return
        self.board.add_image(tag, grid, step)
        save_png(grid, os.path.join(self.result_path, "samples", name or f"step_{step:07d}.png"))

    def close(self):
        if self.enabled:
            self.text.close()
            self.metrics.close()
            self.board.close()
