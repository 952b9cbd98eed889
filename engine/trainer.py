"""The training loop every stage shares, and DINet's frame stage.

A stage owns its networks, optimizers, dataset and one training step; `train()` does the rest
the same way for all of them: device and torchrun setup, seeding, the data loader, coarse-to-fine
initialisation, resume, DINet's learning-rate schedule, the log line, TensorBoard, image grids and
atomic checkpoints. The clip stage subclasses `FrameStage` and adds its discriminator and losses.
"""
import os
import random

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


class FrameStage:
    """DINet's frame stage: generator and frame discriminator; VGG19 perception x lamb_perception + LSGAN."""

    checkpoint_networks = ("net_g", "net_dI")

    def __init__(self, opt, generator_cfg, runtime):
        self.opt = opt
        self.net_g = distributed.wrap(DINet.from_config(generator_cfg), runtime)
        self.net_dI = distributed.wrap(
            Discriminator(opt.source_channel, opt.D_block_expansion, opt.D_num_blocks, opt.D_max_features), runtime)
        self.perception = PerceptualLoss(Vgg19(opt.vgg19_weights)).to(runtime.device)
        self.gan = GANLoss()
        self.optimizers = {"net_g": Adam(self.net_g.parameters(), lr=opt.lr_g),
                           "net_dI": Adam(self.net_dI.parameters(), lr=opt.lr_dI)}

    def networks(self):
        return {name: getattr(self, name) for name in self.checkpoint_networks}

    def dataset(self, training_set):
        return FrameDataset(training_set, self.opt.augment_num, self.opt.mouth_region_size, self.opt.frame_cache_mb)

    def step(self, batch):
        """One iteration: update the discriminator, then the generator. Returns the logged losses and image rows."""
        real, reference = batch["source"], batch["reference"]
        fake = self.net_g(batch["source_masked"], reference, batch["audio"])  # (B, 3, H, W)

        # (1) discriminator: fake and real in one pass (one DDP forward per backward)
        self.optimizers["net_dI"].zero_grad(set_to_none=True)
        _, scores = self.net_dI(torch.cat([fake.detach(), real]))
        score_fake, score_real = scores.chunk(2)
        loss_dI = (self.gan(score_fake, False) + self.gan(score_real, True)) * 0.5
        loss_dI.backward()
        self.optimizers["net_dI"].step()

        # (2) generator: the unwrapped discriminator, so this backward does not enter its DDP reducer
        self.optimizers["net_g"].zero_grad(set_to_none=True)
        _, score_fake = distributed.unwrap(self.net_dI)(fake)
        loss_gI = self.gan(score_fake, True)
        loss_perception = self.perception(fake, real) * self.opt.lamb_perception
        (loss_perception + loss_gI).backward()
        self.optimizers["net_g"].step()

        losses = {"Loss_DI": loss_dI, "Loss_GI": loss_gI, "Loss_perception": loss_perception}
        rows = [[batch["source_masked"][i], *reference[i].split(3), fake[i], real[i]]
                for i in range(min(GRID_SAMPLES, real.shape[0]))]
        return {name: value.item() for name, value in losses.items()}, rows


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


def requested_generator_config(opt, audio_channel):
    overrides = {name: getattr(opt, name) for name in GENERATOR_FLAGS}
    return generator_config(opt.lab or "lab1", audio_channel, opt.source_channel, opt.ref_channel, **overrides)


def choose_generator_config(opt, audio_channel, resume_checkpoint):
    """The run's architecture: the lab and flags given, or on --resume the checkpoint's (which they must match)."""
    requested = requested_generator_config(opt, audio_channel)
    if resume_checkpoint is None:
        return requested
    explicit = opt.lab is not None or any(getattr(opt, name) is not None for name in GENERATOR_FLAGS)
    if explicit:
        check_generator_config(resume_checkpoint, requested, opt.resume, "--resume")
    return generator_config_of(resume_checkpoint)


def check_resume_compatible(checkpoint, opt, training_set):
    for key, ours in (("mouth_region_size", opt.mouth_region_size), ("audio_feature", training_set.audio_feature)):
        theirs = checkpoint.get(key, ours)
        if theirs != ours:
            raise SystemExit(f"--resume {opt.resume}: trained with {key}={theirs}, this run uses {ours}; "
                             f"pass --{key} {theirs} or start a new run")


def train(opt, stage_class=FrameStage):
    runtime = distributed.setup(opt.device)
    torch.manual_seed(opt.seed)
    np.random.seed(opt.seed + runtime.rank)
    random.seed(opt.seed + runtime.rank)
    CropGeometry(opt.mouth_region_size)  # rejects a size DINet's crop cannot use, before any work
    if opt.coarse2fine and not opt.coarse_model_path:
        raise SystemExit("--coarse2fine needs --coarse_model_path PATH to the coarser stage's netG_model_epoch_N.pth")

    training_set = load_training_json(opt.train_data)
    audio_channel = check_audio_channel(training_set, opt.audio_channel)
    resume = load_checkpoint(opt.resume, "--resume") if opt.resume else None
    if resume is not None:
        check_resume_compatible(resume, opt, training_set)
    generator_cfg = choose_generator_config(opt, audio_channel, resume)

    stage = stage_class(opt, generator_cfg, runtime)
    if opt.coarse2fine and resume is None:
        coarse = load_checkpoint(opt.coarse_model_path, "--coarse_model_path")
        check_generator_config(coarse, generator_cfg, opt.coarse_model_path, "--coarse_model_path")
        load_network(distributed.unwrap(stage.net_g), coarse, "net_g", opt.coarse_model_path, "--coarse_model_path")

    dataset = stage.dataset(training_set)
    if len(dataset) < opt.batch_size * runtime.world_size:
        raise SystemExit(f"--batch_size {opt.batch_size} is larger than the {len(dataset)} samples per epoch of "
                         f"{opt.train_data} (videos x --augment_num); lower --batch_size or raise --augment_num")
    order = (DistributedSampler(dataset, seed=opt.seed) if runtime.distributed else RandomSampler(dataset))
    loader = DataLoader(dataset, batch_size=opt.batch_size, sampler=SeededSampler(order), drop_last=True,
                        num_workers=opt.num_workers, persistent_workers=opt.num_workers > 0,
                        pin_memory=runtime.device.type == "cuda")

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
    log.line(f"training {stage_class.__name__} [{generator_cfg.describe()}] at mouth {opt.mouth_region_size} on "
             f"{runtime.device} x{runtime.world_size}: {len(training_set.videos)} videos, "
             f"{training_set.audio_feature} audio ({audio_channel}-d), {len(loader)} iterations per epoch")
    last_epoch = opt.non_decay + opt.decay
    for epoch in range(start_epoch, last_epoch + 1):
        if runtime.distributed:
            order.set_epoch(epoch)
        for network in stage.networks().values():
            network.train()
        progress = tqdm(loader, desc=f"epoch {epoch}/{last_epoch}", leave=False, dynamic_ncols=True,
                        disable=not runtime.is_main)
        for iteration, batch in enumerate(progress):
            batch = {key: value.to(runtime.device, non_blocking=True) for key, value in batch.items()}
            losses, rows = stage.step(batch)
            lr = stage.optimizers["net_g"].param_groups[0]["lr"]
            log.line(format_log_line(epoch, iteration, len(loader), losses, lr))
            log.scalars(global_step, epoch, {**losses, "lr_g": lr})
            if global_step % opt.image_every == 0:
                log.images(global_step, image_grid(rows))
            global_step += 1
        for scheduler in schedulers.values():
            scheduler.step()
        if epoch % opt.checkpoint == 0 and runtime.is_main:
            path = os.path.join(opt.result_path, f"netG_model_epoch_{epoch}.pth")
            atomic_save({
                "epoch": epoch + 1,
                "state_dict": {name: distributed.unwrap(net).state_dict() for name, net in stage.networks().items()},
                "optimizer": {name: optimizer.state_dict() for name, optimizer in stage.optimizers.items()},
                "scheduler": {name: scheduler.state_dict() for name, scheduler in schedulers.items()},
                "rng": rng_state(),
                "global_step": global_step,
                "generator_config": generator_cfg.to_dict(),
                "lab": opt.lab or "lab1",
                "mouth_region_size": opt.mouth_region_size,
                "audio_feature": training_set.audio_feature,
            }, path)
            log.line(f"checkpoint saved: {path}")
    log.close()
    distributed.cleanup()
