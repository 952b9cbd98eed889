"""The training loop every stage shares, and DINet's frame stage.

A stage owns its networks, optimizers, dataset and one training step; `train()` does the rest the same
way for all of them: device and torchrun setup, seeding, the data loader, resume, DINet's learning-rate
schedule, the log line, TensorBoard, image grids and atomic checkpoints. Stages:

    FrameStage    (here)                 DINet's frame stage: generator + frame discriminator
    ClipStage     (engine/clip_stage.py)    FrameStage + clip discriminator, SyncNet and LatentSync's losses
    SyncNetStage  (engine/syncnet_stage.py) a SyncNet on in-sync / off-sync windows, held-out accuracy per epoch

What a stage provides beyond `step`: `create` (build it for this data and run, including initial weights),
`dataset`, and the hooks of the `Stage` base class below.
"""
import os
import random
from itertools import islice

import numpy as np
import torch
from torch.optim import Adam
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler
from tqdm import tqdm

from config.labs import GENERATOR_FLAGS, generator_config
from data.dataset import FrameDataset
from data.geometry import CropGeometry
from data.training_json import check_audio_channel, load_training_json
from models import DINet, Discriminator, Vgg19

from . import distributed
from .checkpoint import (atomic_save, check_generator_config, generator_config_of, load_checkpoint,
                         load_network)
from .logging import RunLog, format_log_line, image_grid
from .losses import GANLoss, PerceptualLoss

GRID_SAMPLES = 4


class Stage:
    """Hooks `train()` calls, with the generator stages' defaults."""

    checkpoint_networks = ()                 # attribute names of the trained networks, also their checkpoint keys
    checkpoint_prefix = "netG_model_epoch"   # checkpoint files are {prefix}_{epoch}.pth
    lr_label = "lr_g"                        # the log line's learning rate, read from optimizers[lr_network]
    lr_network = "net_g"
    image_tag = "masked_source|references|generated|real"

    def networks(self):
        return {name: getattr(self, name) for name in self.checkpoint_networks}

    def describe(self):
        """What is trained, for the run's first log line."""
        return ""

    def checkpoint_metadata(self):
        """What a checkpoint records beyond weights, optimizers and the loop's state."""
        return {}

    def end_epoch(self, epoch, log, global_step):
        """Called on the main process after each epoch, before its checkpoint."""

    def finish(self, log):
        """Called on the main process after the last epoch."""


class FrameStage(Stage):
    """DINet's frame stage: generator and frame discriminator; VGG19 perception x lamb_perception + LSGAN."""

    checkpoint_networks = ("net_g", "net_dI")

    def __init__(self, opt, generator_cfg, runtime):
        self.opt = opt
        self.generator_cfg = generator_cfg
        self.lab = lab_name(opt, None)
        self.net_g = distributed.wrap(DINet.from_config(generator_cfg), runtime)
        self.net_dI = distributed.wrap(
            Discriminator(opt.source_channel, opt.D_block_expansion, opt.D_num_blocks, opt.D_max_features), runtime)
        # a weight of 0 builds no VGG19 (LatentSync's recipe replaces it with LPIPS)
        self.perception = PerceptualLoss(Vgg19(opt.vgg19_weights)).to(runtime.device) if opt.lamb_perception else None
        self.gan = GANLoss()
        self.optimizers = {"net_g": Adam(self.net_g.parameters(), lr=opt.lr_g),
                           "net_dI": Adam(self.net_dI.parameters(), lr=opt.lr_dI)}

    @classmethod
    def create(cls, opt, training_set, runtime, resume):
        """The stage for this data: the lab's generator (or the resumed checkpoint's), initialised from the
        coarser stage under --coarse2fine."""
        if opt.coarse2fine and not opt.coarse_model_path:
            raise SystemExit("--coarse2fine needs --coarse_model_path PATH to the coarser stage's netG_model_epoch_N.pth")
        audio_channel = check_audio_channel(training_set, opt.audio_channel)
        if resume is not None:
            check_data_compatible(resume, opt, training_set, opt.resume, "--resume")
        generator_cfg = choose_generator_config(opt, training_set, audio_channel, resume, opt.resume, "--resume")
        stage = cls(opt, generator_cfg, runtime)
        stage.lab = lab_name(opt, resume)
        if opt.coarse2fine and resume is None:
            coarse = load_checkpoint(opt.coarse_model_path, "--coarse_model_path")
            check_generator_config(coarse, generator_cfg, opt.coarse_model_path, "--coarse_model_path")
            load_network(distributed.unwrap(stage.net_g), coarse, "net_g", opt.coarse_model_path, "--coarse_model_path")
        return stage

    def describe(self):
        return self.generator_cfg.describe()

    def checkpoint_metadata(self):
        return {"generator_config": self.generator_cfg.to_dict(), "lab": self.lab}

    def dataset(self, training_set):
        return FrameDataset(training_set, self.opt.augment_num, self.opt.mouth_region_size, self.opt.frame_cache_mb)

    def update_discriminator(self, name, fake, real):
        """One LSGAN step of discriminator `name` on detached fakes and reals; returns its loss."""
        self.optimizers[name].zero_grad(set_to_none=True)
        # fake and real in one pass (one DDP forward per backward)
        _, scores = getattr(self, name)(torch.cat([fake.detach(), real]))
        score_fake, score_real = scores.chunk(2)
        loss = (self.gan(score_fake, False) + self.gan(score_real, True)) * 0.5
        loss.backward()
        self.optimizers[name].step()
        return loss

    def adversarial(self, name, fake):
        """The generator's LSGAN term against discriminator `name`. The unwrapped discriminator, so the
        generator's backward does not enter the discriminator's DDP reducer."""
        _, score_fake = distributed.unwrap(getattr(self, name))(fake)
        return self.gan(score_fake, True)

    def update_generator(self, losses):
        """Backward the sum of the generator's terms and step; the terms are already weighted."""
        self.optimizers["net_g"].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizers["net_g"].step()

    def step(self, batch):
        """One iteration: update the discriminator, then the generator. Returns the logged losses and image rows."""
        real, reference = batch["source"], batch["reference"]
        fake = self.net_g(batch["source_masked"], reference, batch["audio"])  # (B, 3, H, W)
        loss_dI = self.update_discriminator("net_dI", fake, real)

        generator_losses = {"Loss_GI": self.adversarial("net_dI", fake)}
        if self.perception is not None:
            generator_losses["Loss_perception"] = self.perception(fake, real) * self.opt.lamb_perception
        self.update_generator(generator_losses)

        losses = {"Loss_DI": loss_dI, **generator_losses}
        rows = [[batch["source_masked"][i], *reference[i].split(3), fake[i], real[i]]
                for i in range(min(GRID_SAMPLES, real.shape[0]))]
        return {name: value.item() for name, value in losses.items()}, rows


def lab_name(opt, checkpoint):
    """The lab recorded in checkpoints: the one given, else that of the checkpoint the run starts from."""
    return opt.lab or (checkpoint or {}).get("lab") or "lab1"


class SeededSampler(Sampler):
    """Pairs each index with a seed drawn in the main process, so the random picks inside the dataset
    do not depend on the number of loader workers and a resumed run replays them exactly."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for index in self.sampler:
            yield index, int(torch.randint(2 ** 62, ()).item())


def dinet_lr_lambda(non_decay, decay):
    """DINet's schedule: constant for `non_decay` epochs, then linear decay over `decay` epochs."""
    return lambda epoch: 1.0 - max(0, epoch - non_decay) / float(decay + 1)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def requested_generator_config(opt, audio_channel, audio_feature=None):
    overrides = {name: getattr(opt, name) for name in GENERATOR_FLAGS}
    return generator_config(opt.lab or "lab1", audio_channel, opt.source_channel, opt.ref_channel,
                            audio_feature=audio_feature, **overrides)


def choose_generator_config(opt, training_set, audio_channel, checkpoint, path, flag):
    """The run's architecture: the lab and flags given, or a checkpoint's (resumed, or the stage it starts
    from), which flags given explicitly must match and whose audio width must be the data's."""
    requested = requested_generator_config(opt, audio_channel, training_set.audio_feature)
    if checkpoint is None:
        return requested
    explicit = opt.lab is not None or any(getattr(opt, name) is not None for name in GENERATOR_FLAGS)
    if explicit:
        check_generator_config(checkpoint, requested, path, flag)
    found = generator_config_of(checkpoint)
    if found.audio_channel != audio_channel:
        raise SystemExit(f"{flag} {path}: its generator reads {found.audio_channel}-d audio, but {training_set.path} has "
                         f"{audio_channel}-d {training_set.audio_feature} features; pass a checkpoint trained on this data")
    return found


def check_data_compatible(checkpoint, opt, training_set, path, flag):
    """A checkpoint that records its mouth size or audio feature must have this run's."""
    for key, ours in (("mouth_region_size", opt.mouth_region_size), ("audio_feature", training_set.audio_feature)):
        theirs = checkpoint.get(key, ours)
        if theirs != ours:
            fix = f"pass --{key} {theirs}" if key == "mouth_region_size" else f"pass --train_data with {theirs} features"
            raise SystemExit(f"{flag} {path}: trained with {key}={theirs}, this run uses {ours}; "
                             f"{fix} or another checkpoint")


def train(opt, stage_class=FrameStage):
    """Train `stage_class` as `opt` says; returns the stage (its networks hold the final weights)."""
    runtime = distributed.setup(opt.device)
    torch.manual_seed(opt.seed)
    np.random.seed(opt.seed + runtime.rank)
    random.seed(opt.seed + runtime.rank)
    CropGeometry(opt.mouth_region_size)  # rejects a size DINet's crop cannot use, before any work

    training_set = load_training_json(opt.train_data)
    resume = load_checkpoint(opt.resume, "--resume") if opt.resume else None
    stage = stage_class.create(opt, training_set, runtime, resume)

    dataset = stage.dataset(training_set)
    if len(dataset) < opt.batch_size * runtime.world_size:
        raise SystemExit(f"--batch_size {opt.batch_size} is larger than the {len(dataset)} samples per epoch of "
                         f"{opt.train_data} (videos x --augment_num); lower --batch_size or raise --augment_num")
    order = (DistributedSampler(dataset, seed=opt.seed) if runtime.distributed else RandomSampler(dataset))
    loader = DataLoader(dataset, batch_size=opt.batch_size, sampler=SeededSampler(order), drop_last=True,
                        num_workers=opt.num_workers, persistent_workers=opt.num_workers > 0,
                        pin_memory=runtime.device.type == "cuda")
    iterations = min(len(loader), opt.iterations_per_epoch or len(loader))

    schedule = dinet_lr_lambda(opt.non_decay, opt.decay)
    schedulers = {name: LambdaLR(optimizer, schedule) for name, optimizer in stage.optimizers.items()}
    start_epoch, global_step = opt.start_epoch, 0
    if resume is not None:
        for name, network in stage.networks().items():
            load_network(distributed.unwrap(network), resume, name, opt.resume, "--resume")
        for name, optimizer in stage.optimizers.items():
            optimizer.load_state_dict(resume["optimizer"][name])
        for name, scheduler in schedulers.items():
            if "scheduler" in resume:
                scheduler.load_state_dict(resume["scheduler"][name])
        if "rng" in resume:
            set_rng_state(resume["rng"])
        start_epoch, global_step = resume["epoch"], resume.get("global_step", 0)

    log = RunLog(opt.result_path, enabled=runtime.is_main)
    log.line(f"training {stage_class.__name__} [{stage.describe()}] at mouth {opt.mouth_region_size} on "
             f"{runtime.device} x{runtime.world_size}: {len(training_set.videos)} videos, "
             f"{training_set.audio_feature} audio ({training_set.audio_channel}-d), {iterations} iterations per epoch")
    last_epoch = opt.non_decay + opt.decay
    for epoch in range(start_epoch, last_epoch + 1):
        if runtime.distributed:
            order.set_epoch(epoch)
        for network in stage.networks().values():
            network.train()
        progress = tqdm(islice(loader, iterations), total=iterations, desc=f"epoch {epoch}/{last_epoch}",
                        leave=False, dynamic_ncols=True, disable=not runtime.is_main)
        for iteration, batch in enumerate(progress):
            batch = {key: value.to(runtime.device, non_blocking=True) for key, value in batch.items()}
            losses, rows = stage.step(batch)
            lr = stage.optimizers[stage.lr_network].param_groups[0]["lr"]
            log.line(format_log_line(epoch, iteration, iterations, losses, lr, stage.lr_label))
            log.scalars(global_step, epoch, {**losses, stage.lr_label: lr})
            if rows and global_step % opt.image_every == 0:
                log.images(global_step, image_grid(rows), stage.image_tag)
            global_step += 1
        for scheduler in schedulers.values():
            scheduler.step()
        if runtime.is_main:
            stage.end_epoch(epoch, log, global_step)
        if epoch % opt.checkpoint == 0 and runtime.is_main:
            path = os.path.join(opt.result_path, f"{stage.checkpoint_prefix}_{epoch}.pth")
            atomic_save({
                "epoch": epoch + 1,
                "state_dict": {name: distributed.unwrap(net).state_dict() for name, net in stage.networks().items()},
                "optimizer": {name: optimizer.state_dict() for name, optimizer in stage.optimizers.items()},
                "scheduler": {name: scheduler.state_dict() for name, scheduler in schedulers.items()},
                "rng": rng_state(),
                "global_step": global_step,
                "mouth_region_size": opt.mouth_region_size,
                "audio_feature": training_set.audio_feature,
                **stage.checkpoint_metadata(),
            }, path)
            log.line(f"checkpoint saved: {path}")
    if runtime.is_main:
        stage.finish(log)
    log.close()
    distributed.cleanup()
    return stage
