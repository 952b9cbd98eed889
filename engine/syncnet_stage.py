"""SyncNet training, in the same loop as the generator stages.

Windows of 5 mouth crops and 9 audio vectors (data/sync_dataset.py), half in sync and half off sync, from
the training videos; each batch also pairs every window's mouths with the other windows' audio (further
off-sync examples at no extra encoder cost: on the demo data this is what lets a SyncNet learn in minutes
on a CPU). After every epoch, accuracy and loss on a fixed set from held-out videos go to the log
and TensorBoard. Checkpoints are `syncnet_model_epoch_{N}.pth` in the result folder; at the end the weights
go to --syncnet_path in DINet's SyncNet layout, `{"state_dict": {"net": ...}}`, plus the SyncNetConfig
(architecture, mouth size, input size, audio feature) the clip stage checks against its data, and the run
ends with the line `held-out accuracy: A`.
"""
import math
import os

import torch
from torch.utils.data import DataLoader

from common.errors import UserError
from config.config import SYNCNET_LR
from data.sync_dataset import SyncDataset, check_enough_data, pair_labels, split_videos, video_timelines
from data.training_json import check_audio_channel
from models.checkpoint import atomic_save, syncnet_config_of
from models.syncnet import SyncNetConfig, build_syncnet, default_input_size

from . import distributed
from .trainer import GRID_SAMPLES, Stage, adam, check_data_compatible

THRESHOLD = 0.5  # a score above it says "in sync", for both architectures
CHANCE_EPOCHS, CHANCE_STEPS = 3, 100  # at chance this many epochs in a row and steps: the log says so


def default_syncnet_path(mouth_region_size):
    """Where train_syncnet.py writes a SyncNet unless --syncnet_path says otherwise (beside DINet's published one)."""
    return f"./asserts/syncnet_{mouth_region_size}mouth.pth"


class SyncNetStage(Stage):
    checkpoint_networks = ("net",)
    checkpoint_prefix = "syncnet_model_epoch"
    validates = False  # its own held-out accuracy, every epoch
    lr_label = "lr"
    lr_network = "net"
    image_tag = "5 mouth crops of a window"

    def __init__(self, opt, config, runtime, training_set):
        training_names, held_out_names = split_videos(training_set, opt.held_out_fraction, opt.seed)
        self.training_timelines = video_timelines(training_set, training_names)
        check_enough_data(training_set.path, self.training_timelines, len(held_out_names))
        self.setup_runtime(opt, runtime)
        self.opt = opt
        self.config = config
        self.device = runtime.device
        self.net = self.build(build_syncnet(config))
        self.optimizers = {"net": adam(self.net.parameters(), opt.lr)}
        self.held_out = SyncDataset(video_timelines(training_set, held_out_names), config.mouth_region_size,
                                    min_shift=opt.negative_min_shift, frame_cache_mb=opt.frame_cache_mb,
                                    fixed_seed=opt.seed, input_size=config.input_size)
        self.held_out_names = held_out_names
        self.last_result = None  # (accuracy, loss) on the held-out set after the latest epoch
        # the current epoch's training steps and their summed loss, on the device, updated in place (a CUDA graph
        # replays the updates)
        self.epoch_sums = torch.zeros(2, device=runtime.device)
        self.at_chance = []  # steps of each epoch of the latest stretch at chance

    @classmethod
    def create(cls, opt, training_set, runtime, resume):
        audio_channel = check_audio_channel(training_set, opt.audio_channel)
        if resume is not None:
            check_data_compatible(resume, opt, training_set, opt.resume, "--resume")
            config = syncnet_config_of(resume)
        else:
            try:
                config = SyncNetConfig(arch=opt.syncnet_arch, audio_channel=audio_channel,
                                       audio_feature=training_set.audio_feature,
                                       mouth_region_size=opt.mouth_region_size,
                                       input_size=opt.syncnet_input_size or default_input_size(opt.mouth_region_size),
                                       centre_window=opt.syncnet_centre_window)
            except ValueError as error:
                raise UserError(str(error)) from None
        return cls(opt, config, runtime, training_set)

    def describe(self):
        return f"{self.config.describe()}; held out: {', '.join(self.held_out_names)}"

    def checkpoint_metadata(self):
        metadata = {**super().checkpoint_metadata(), "syncnet_config": self.config.to_dict()}
        if self.last_result is not None:
            metadata["held_out_accuracy"], metadata["held_out_loss"] = self.last_result
        return metadata

    def dataset(self, training_set):
        return SyncDataset(self.training_timelines, self.config.mouth_region_size, self.opt.augment_num,
                           self.opt.negative_min_shift, self.opt.frame_cache_mb, input_size=self.config.input_size,
                           in_sync_fraction=self.opt.in_sync_fraction)

    def step(self, batch):
        mouths, audio, in_sync = batch["mouths"], batch["audio"], batch["in_sync"]  # (B, 15, s, s), (B, A, 9), (B,)
        network = distributed.unwrap(self.net)
        with self.autocast():
            pairs = self.net(mouths, audio, all_pairs=True)  # (B, B, ...), through DDP so gradients are averaged
            target, weight = pair_labels(batch, self.opt.negative_min_shift)
            loss = network.loss_of(pairs.flatten(0, 1), target.flatten(), weight.flatten())
        self.optimize("net", loss, "Loss_sync")
        _, loss_bad, gradients_bad = self.non_finite[-1]
        kept = (loss_bad + gradients_bad) == 0
        self.epoch_sums.add_(torch.stack([kept.float(), torch.where(kept, loss.detach().float(), 0.0)]))
        own = torch.arange(len(in_sync), device=in_sync.device)
        accuracy = ((network.score_of(pairs[own, own].detach()) > THRESHOLD).float() == in_sync).float().mean()
        rows = [list(mouths[i].split(3)) for i in range(min(GRID_SAMPLES, mouths.shape[0]))]
        return {"Loss_sync": loss.detach(), "Acc": accuracy}, rows

    @torch.no_grad()
    def evaluate(self):
        """(accuracy, mean loss) on the held-out set."""
        network = distributed.unwrap(self.net).eval()
        # no workers: the held-out crops stay in this process's frame cache from one epoch to the next
        loader = DataLoader(self.held_out, batch_size=self.opt.batch_size, shuffle=False, num_workers=0)
        correct, loss_sum, count = 0, 0.0, 0
        for batch in loader:
            batch = {key: value.to(self.device) for key, value in batch.items()}
            in_sync = batch["in_sync"]
            output = network(batch["mouths"], batch["audio"])
            correct += ((network.score_of(output) > THRESHOLD).float() == in_sync).sum().item()
            loss_sum += network.loss_of(output, in_sync).item() * len(in_sync)
            count += len(in_sync)
        network.train()
        return correct / count, loss_sum / count

    def end_epoch(self, epoch, log, global_step):
        accuracy, loss = self.last_result = self.evaluate()
        log.line(f"===> Epoch[{epoch}] held-out ({len(self.held_out)} windows, {len(self.held_out_names)} videos): "
                 f"accuracy {accuracy:.4f} loss {loss:.4f}")
        log.scalars(global_step, epoch, {"held_out_accuracy": accuracy, "held_out_loss": loss})
        self.check_chance(accuracy, loss, log)

    def check_chance(self, accuracy, loss, log):
        """Say in the log, once per stretch, when the held-out accuracy has been at chance for CHANCE_EPOCHS epochs
        and CHANCE_STEPS steps in a row, with what to try."""
        steps, loss_sum = self.epoch_sums.tolist()
        steps = int(steps)
        training_loss = loss_sum / max(1, steps)
        self.epoch_sums.zero_()
        chance_loss = distributed.unwrap(self.net).chance_loss
        margin = max(0.05, 1 / math.sqrt(len(self.held_out)))  # two standard errors of coin flips, at least 0.05
        if abs(accuracy - 0.5) > margin or loss < 0.9 * chance_loss:
            self.at_chance = []
            return
        self.at_chance.append(steps)

        def long(stretch):
            return len(stretch) >= CHANCE_EPOCHS and sum(stretch) >= CHANCE_STEPS

        if long(self.at_chance) and not long(self.at_chance[:-1]):
            log.line(f"warning: held-out accuracy has been at chance (0.5 +- {margin:.2f}) for {len(self.at_chance)} "
                     f"epochs ({sum(self.at_chance)} steps), held-out loss {loss:.4f} and training loss "
                     f"{training_loss:.4f} against {chance_loss:.4f} for chance: "
                     + self.chance_hint())

    def chance_hint(self):
        """What to try when the held-out accuracy stays at chance."""
        opt = self.opt
        if opt.lr == 0:
            return f"--lr 0 freezes the network; pass --lr {SYNCNET_LR:g}"
        return (f"check the learning rate (--lr {opt.lr:g}; {SYNCNET_LR:g} learns the demo set), the off-sync examples "
                f"(--batch_size {opt.batch_size}: each window meets the others' audio; --in_sync_fraction "
                f"{opt.in_sync_fraction:g}; --negative_min_shift {opt.negative_min_shift}) and the data "
                f"({len(self.training_timelines)} training videos; a training loss well under chance means too few "
                f"faces and voices; each clip's audio features must belong to its frames)")

    def finish(self, log):
        if self.last_result is None:  # resumed after the last epoch: nothing trained, measure what we have
            self.last_result = self.evaluate()
        path = self.opt.syncnet_path or default_syncnet_path(self.config.mouth_region_size)
        atomic_save({"state_dict": {"net": distributed.unwrap(self.net).state_dict()},
                     **self.checkpoint_metadata(), "mouth_region_size": self.config.mouth_region_size,
                     "audio_feature": self.config.audio_feature}, path)
        log.line(f"SyncNet saved: {os.path.abspath(path)} (use it with --pretrained_syncnet_path)")
        log.line(f"held-out accuracy: {self.last_result[0]:.4f}")
