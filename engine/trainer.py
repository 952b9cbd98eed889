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
import copy
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import Adam
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from common.devices import usable_cores
from common.errors import Stopped, UserError
from common.files import check_writable, remove_stale_temporaries
from common.geometry import AUDIO_WINDOW, CropGeometry
from config.config import BEST_NAME
from config.labs import GENERATOR_FLAGS, generator_config
from data.dataset import FrameDataset
from data.training_json import check_audio_channel, load_training_json
from models import DINet, Discriminator, Vgg19
from models.checkpoint import (atomic_save, check_generator_config, check_syncnet_fits, checkpoint_name,
                               checkpoints_newest_first, generator_config_of, load_checkpoint, load_network,
                               load_syncnet, newest_valid_checkpoint, prune_step_checkpoints, recorded_options)

from . import distributed
from .losses import GANLoss, PerceptualLoss, mouth_l1
from .precision import Precision
from .run_log import RunLog, format_log_line, image_grid
from .validation import Validator, format_scores, held_out_sets, timed_run

GRID_SAMPLES = 4


class Stage:
    """Hooks `train()` calls, with the generator stages' defaults."""

    checkpoint_networks = ()                 # attribute names of the trained networks, also their checkpoint keys
    checkpoint_prefix = "netG_model_epoch"   # checkpoint files are {prefix}_{epoch}.pth
    lr_label = "lr_g"                        # the log line's learning rate, read from optimizers[lr_network]
    lr_network = "net_g"
    image_tag = "masked_source|references|generated|real"
    validates = True                         # takes --val_data / --val_fraction (a generator stage)
    average = None                           # the generator's WeightAverage under --ema
    starts_trained = False                   # the generator starts from trained weights (not the stage's own resume)

    def setup_runtime(self, opt, runtime):
        """Precision and device of this stage's networks; call first in __init__."""
        self.runtime = runtime
        self.precision = Precision.of(opt, runtime.device)
        self.non_finite = []  # names of the losses that were not finite in the current step

    def build(self, module):
        """A trained network on this run's device, in its memory format, under DDP with torchrun."""
        return distributed.wrap(self.precision.prepare(module), self.runtime)

    def autocast(self):
        return self.precision.autocast()

    def optimize(self, name, loss, label=None):
        """Backward `loss` and step optimizer `name`, all queued on the device: nothing is read back. A loss that is
        not finite on any process skips the update, and so do gradients that are not finite under a finite loss (a
        NaN sampling grid, say, makes grid_sample return zeros but NaN gradients): the optimizer's fused step is
        told so on the device (its found_inf, as the gradient scaler tells it), leaving weights and its state as
        they were. Both flags go to self.non_finite (the engine counts such steps and stops after too many in a
        row). Under fp16 the gradient scaler's own overflow skips are left to it."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss_bad = (~torch.isfinite(loss.detach())).float()
        # x 1 when finite (the same gradients), x NaN when not: the gradients turn NaN, so the check below (and,
        # through DDP's averaging, every process's) skips the update
        poisoned = loss * torch.where(loss_bad.bool(), float("nan"), 1.0)
        scaler = self.scaler(name)
        scaler.scale(poisoned).backward()
        if scaler.is_enabled():
            gradients_bad = torch.zeros_like(loss_bad)
            scaler.step(optimizer)
            scaler.update()
        else:
            gradients_bad = non_finite_gradients(optimizer)
            step_unless(optimizer, gradients_bad)
        self.non_finite.append((label or name, loss_bad, gradients_bad))

    def scaler(self, name):
        """The gradient scaler of optimizer `name`, made on first use (it scales only under fp16)."""
        if not hasattr(self, "scalers"):
            self.scalers = {key: self.precision.scaler() for key in self.optimizers}
        return self.scalers[name]

    def networks(self):
        return {name: getattr(self, name) for name in self.checkpoint_networks}

    def train_mode(self):
        """Put the trained networks in training mode, at the start of each epoch."""
        for network in self.networks().values():
            network.train()

    def generator(self):
        """The generator validation scores and checkpoints hand to dubbing: the weights' moving average under --ema,
        else the trained network itself."""
        return self.average.network if self.average else distributed.unwrap(self.net_g)

    def describe(self):
        """What is trained, for the run's first log line."""
        return ""

    def checkpoint_metadata(self):
        """What a checkpoint records beyond weights, optimizers and the loop's state: at least every flag of the run."""
        return {"options": recorded_options(self.opt)}

    def end_epoch(self, epoch, log, global_step):
        """Called on the main process after each epoch, before its checkpoint."""

    def finish(self, log):
        """Called on the main process after the last epoch."""


def adam(parameters, lr):
    """The stages' optimizer: on a GPU Adam's fused kernel, which skips an update on the device when told to; on a
    CPU its loop (the CPU's fused kernel is 75x slower on channels_last weights: 5.6 s against 0.07 s)."""
    parameters = list(parameters)
    return Adam(parameters, lr=lr, fused=bool(parameters) and parameters[0].is_cuda)


def step_unless(optimizer, skip):
    """optimizer.step() unless `skip` (a 0-d 0/1 tensor): the fused kernel is told so on the device (its found_inf,
    as the gradient scaler tells it); a CPU's loop kernel takes no flag, and reading it there waits for nothing
    (putting its changes back with torch.where instead cost 3 s a step)."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = skip
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not skip.item():
        optimizer.step()


def non_finite_gradients(optimizer):
    """1.0 on the device when a gradient of `optimizer`'s parameters is not finite, else 0.0 (nothing read back)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.zeros(())
    found = torch.zeros((), device=grads[0].device)
    # GradScaler's check, with a scale of 1: the gradients keep their values
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones_like(found))
    return found


class FrameStage(Stage):
    """DINet's frame stage: generator and frame discriminator; VGG19 perception x lamb_perception + LSGAN (+ L1 x
    lamb_l1 and the mouth hole's weighted L1 x lamb_mouth, both 0 in DINet's recipe)."""

    checkpoint_networks = ("net_g", "net_dI")

    def __init__(self, opt, generator_cfg, runtime):
        self.setup_runtime(opt, runtime)
        self.opt = opt
        self.geometry = CropGeometry(opt.mouth_region_size)
        self.generator_cfg = generator_cfg
        self.lab = lab_name(opt, None)
        self.net_g = self.build(DINet.from_config(generator_cfg))
        self.net_dI = self.build(
            Discriminator(opt.source_channel, opt.D_block_expansion, opt.D_num_blocks, opt.D_max_features))
        # a weight of 0 builds no VGG19 (LatentSync's recipe replaces it with LPIPS)
        self.perception = PerceptualLoss(Vgg19(opt.vgg19_weights)).to(runtime.device) if opt.lamb_perception else None
        self.gan = GANLoss()
        self.optimizers = {"net_g": adam(self.net_g.parameters(), opt.lr_g),
                           "net_dI": adam(self.net_dI.parameters(), opt.lr_dI)}
        if self.precision.compile == "default":
            self.net_g = torch.compile(self.net_g)

    @classmethod
    def create(cls, opt, training_set, runtime, resume):
        """The stage for this data: the lab's generator (or the resumed checkpoint's), initialised from the
        coarser stage under --coarse2fine."""
        if opt.coarse2fine and not opt.coarse_model_path:
            raise UserError("--coarse2fine needs --coarse_model_path PATH to the coarser stage's netG_model_epoch_N.pth")
        audio_channel = check_audio_channel(training_set, opt.audio_channel)
        if resume is not None:
            check_data_compatible(resume, opt, training_set, opt.resume, "--resume")
        generator_cfg = choose_generator_config(opt, training_set, audio_channel, resume, opt.resume, "--resume")
        stage = cls(opt, generator_cfg, runtime)
        stage.lab = lab_name(opt, resume)
        if opt.coarse2fine and resume is None:
            coarse = load_checkpoint(opt.coarse_model_path, "--coarse_model_path", needs="net_g",
                                     expected="the coarser stage's netG_model_epoch_N.pth")
            if coarse.get("mouth_region_size", 0) > opt.mouth_region_size:
                raise UserError(f"--coarse_model_path {opt.coarse_model_path}: trained at mouth "
                                f"{coarse['mouth_region_size']}, finer than this run's {opt.mouth_region_size}; "
                                f"coarse to fine goes 64 -> 128 -> 256: pass the coarser stage's checkpoint")
            check_generator_config(coarse, generator_cfg, opt.coarse_model_path, "--coarse_model_path")
            load_network(distributed.unwrap(stage.net_g), coarse, "net_g", opt.coarse_model_path, "--coarse_model_path")
        return stage

    def describe(self):
        return f"{self.generator_cfg.describe()}; {self.precision.describe()}"

    def checkpoint_metadata(self):
        # the audio window is no flag but this code's constant: a later version's may differ
        return {**super().checkpoint_metadata(), "generator_config": self.generator_cfg.to_dict(), "lab": self.lab,
                "audio_window": AUDIO_WINDOW}

    def dataset(self, training_set):
        return FrameDataset(training_set, self.opt.augment_num, self.opt.mouth_region_size, self.opt.frame_cache_mb)

    def update_discriminator(self, name, fake, real):
        """One LSGAN step of discriminator `name` on detached fakes and reals; returns its loss."""
        with self.autocast():
            # fake and real in one pass (one DDP forward per backward)
            _, scores = getattr(self, name)(torch.cat([fake.detach(), real]))
            score_fake, score_real = scores.chunk(2)
            loss = (self.gan(score_fake, False) + self.gan(score_real, True)) * 0.5
        self.optimize(name, loss, "Loss_" + name[len("net_"):].upper())  # the logged name: Loss_DI, Loss_DV
        return loss

    def adversarial(self, name, fake):
        """The generator's LSGAN term against discriminator `name`: the unwrapped discriminator with its
        weights detached, so the generator's backward neither enters the discriminator's DDP reducer nor
        computes weight gradients that the generator's update would throw away."""
        discriminator = distributed.unwrap(getattr(self, name))
        weights = {key: value.detach() for key, value in discriminator.named_parameters()}
        _, score_fake = torch.func.functional_call(discriminator, weights, (fake,))
        return self.gan(score_fake, True)

    def update_generator(self, losses):
        """Backward the sum of the generator's terms and step; the terms are already weighted."""
        self.optimize("net_g", sum(losses.values()), "+".join(losses))

    def step(self, batch):
        """One iteration: update the discriminator, then the generator. Returns the logged losses and image rows."""
        real, reference = batch["source"], batch["reference"]
        with self.autocast():
            fake = self.net_g(batch["source_masked"], reference, batch["audio"])  # (B, 3, H, W)
        loss_dI = self.update_discriminator("net_dI", fake, real)

        # ClipStage.step (engine/clip_stage.py) repeats these terms and takes their flags: add a new one to both
        with self.autocast():
            generator_losses = {"Loss_GI": self.adversarial("net_dI", fake)}
            if self.perception is not None:
                generator_losses["Loss_perception"] = self.perception(fake, real) * self.opt.lamb_perception
            if self.opt.lamb_l1:
                generator_losses["Loss_l1"] = F.l1_loss(fake, real) * self.opt.lamb_l1
            if self.opt.lamb_mouth:
                generator_losses["Loss_mouth"] = mouth_l1(fake, real, reference, self.geometry) * self.opt.lamb_mouth
        self.update_generator(generator_losses)

        losses = {"Loss_DI": loss_dI, **generator_losses}
        rows = [[batch["source_masked"][i], *reference[i].split(3), fake[i], real[i]]
                for i in range(min(GRID_SAMPLES, real.shape[0]))]
        return {name: value.detach() for name, value in losses.items()}, rows


def lab_name(opt, checkpoint):
    """The lab recorded in checkpoints: the one given, else that of the checkpoint the run starts from."""
    return opt.lab or (checkpoint or {}).get("lab") or "lab1"


class EpochOrder(Sampler):
    """The epoch's order of samples, each paired with the seed of the random picks inside the dataset; both
    depend on (seed, epoch) alone. So the number of loader workers changes nothing, a run resumed in the
    middle of an epoch skips exactly the batches it had trained on, and under torchrun each global batch
    (batch_size x world_size samples) is the one a single process would see with the same global batch:
    process r takes the r-th slice of it."""

    def __init__(self, size, batch_size, seed, rank=0, world_size=1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches = size // (batch_size * world_size)  # whole global batches; the rest is dropped, as DINet does
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip_batches=0):
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self):
        return max(0, self.batches - self.skip) * self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        seeds = torch.randint(2 ** 62, (self.size,), generator=generator).tolist()
        global_batch = self.batch_size * self.world_size
        for batch in range(self.skip, self.batches):
            first = batch * global_batch + self.rank * self.batch_size
            for position in range(first, first + self.batch_size):
                yield order[position], seeds[position]


class StopRequest:
    """SIGINT / SIGTERM ask the loop to stop after the current iteration and write a checkpoint; a second
    SIGINT interrupts at once. Ctrl-C and schedulers signal the whole process group (Slurm, torchrun's agent):
    the loader workers ignore both (`ignore_stop_signals`), so the main process alone decides."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce=True):
        self.signal = None
        self.previous = {}
        self.announce = announce  # under torchrun rank 0 alone says it

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self.handle) for number in self.SIGNALS}
        return self

    def handle(self, number, frame):
        if self.signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None and self.announce:  # a scheduler and torchrun's agent may both send SIGTERM: one notice
            tqdm.write(f"{signal.Signals(number).name}: stopping after this iteration, with a checkpoint "
                       f"(press Ctrl-C again to stop at once, without one)")
        self.signal = number

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def ignore_stop_signals(worker_id):
    """The loader workers' worker_init_fn: SIGINT and SIGTERM, blocked since before they started
    (`epoch_batches`), are ignored from here on; a pending one is dropped."""
    for number in StopRequest.SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, StopRequest.SIGNALS)


def epoch_batches(loader, count):
    """The first `count` batches of the loader's next epoch. Its workers (started here, once: they persist) are
    forked with SIGINT and SIGTERM blocked, so a signal to the group at that instant cannot kill them before
    they ignore it; the main process receives its own as soon as they are started."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, StopRequest.SIGNALS)
    try:
        iterator = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return islice(iterator, count)


@contextmanager
def workers_shut_down(loader):
    """Shut the loader's persistent workers down on leaving, however the loop ends (as PyTorch Lightning does):
    a loader still referenced at interpreter exit (by a kept traceback) is left to multiprocessing's SIGTERM,
    which they ignore, and the exit would wait for them forever."""
    try:
        yield
    finally:
        iterator = getattr(loader, "_iterator", None)
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None


def dinet_lr_lambda(non_decay, decay):
    """DINet's schedule: constant for `non_decay` epochs, then linear decay over `decay` epochs."""
    return lambda epoch: 1.0 - max(0, epoch - non_decay) / float(decay + 1)


def rng_state():
    """The RNG states in types a weights_only load takes: numpy's key array as a list of ints."""
    name, keys, *position = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, keys.tolist(), *position], "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    """Restore rng_state(), or that of earlier versions (numpy's state as a tuple holding an array)."""
    random.setstate(state["python"])
    np.random.set_state(tuple(state["numpy"]))
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
        raise UserError(f"{flag} {path}: its generator reads {found.audio_channel}-d audio, but {training_set.path} has "
                         f"{audio_channel}-d {training_set.audio_feature} features; pass a checkpoint trained on this data")
    return found


# what a resumed run takes from its checkpoint whatever the flags say (given, the architecture must match)
TAKEN_FROM_CHECKPOINT = ("resume", "start_epoch", "lab", *GENERATOR_FLAGS, "coarse2fine", "coarse_model_path",
                         "pretrained_frame_DINet_path")


def changed_flags(recorded, opt):
    """'--batch_size 24 -> 12, ...': the flags `opt` gives other values than a checkpoint's `recorded` options."""
    return ", ".join(f"--{name} {recorded[name]} -> {value}" for name, value in recorded_options(opt).items()
                     if name in recorded and name not in TAKEN_FROM_CHECKPOINT and recorded[name] != value)


def check_data_compatible(checkpoint, opt, training_set, path, flag):
    """A checkpoint that records its mouth size or audio feature must have this run's."""
    for key, ours in (("mouth_region_size", opt.mouth_region_size), ("audio_feature", training_set.audio_feature)):
        theirs = checkpoint.get(key, ours)
        if theirs != ours:
            fix = f"pass --{key} {theirs}" if key == "mouth_region_size" else f"pass --train_data with {theirs} features"
            raise UserError(f"{flag} {path}: trained with {key}={theirs}, this run uses {ours}; "
                             f"{fix} or another checkpoint")


def find_resume(opt, stage_class, runtime):
    """(path, checkpoint) to resume from: --resume PATH, or with --resume auto the newest checkpoint in
    --result_path that loads and passes its checksum (None, None when there is none yet: a fresh start)."""
    if not opt.resume:
        earlier = checkpoints_newest_first(opt.result_path, stage_class.checkpoint_prefix)
        if earlier:  # a fresh run would mix its log and checkpoints with that run's
            raise UserError(f"--result_path {opt.result_path}: already holds a run ({os.path.basename(earlier[0][1])});"
                            f" continue it with --resume auto, or pass another --result_path")
        return None, None
    if opt.resume != "auto":
        path, checkpoint = opt.resume, load_checkpoint(opt.resume, "--resume", needs=stage_class.checkpoint_networks[0],
                                                       expected=f"a {stage_class.checkpoint_prefix}_N.pth of this kind "
                                                                f"of run")
    else:
        path, checkpoint = newest_valid_checkpoint(opt.result_path, stage_class.checkpoint_prefix,
                                                   report=print if runtime.is_main else lambda text: None)
        if runtime.is_main:
            print(f"--resume auto: continuing from {path}" if path else
                  f"--resume auto: no checkpoint in {opt.result_path} yet, starting from the beginning")
        opt.resume = path or ""  # what the stages check the data and architecture against
    if checkpoint is not None:
        check_same_stage(checkpoint, path, stage_class)
    return path, checkpoint


def check_same_stage(checkpoint, path, stage_class):
    """The frame and clip stages name their checkpoints alike; one stage's does not continue the other's run."""
    clip_run, clip_checkpoint = ("net_dV" in names for names in (stage_class.checkpoint_networks,
                                                                  checkpoint["state_dict"]))
    if "net_g" not in stage_class.checkpoint_networks or clip_run == clip_checkpoint:
        return
    if clip_run:
        raise UserError(f"--resume {path}: a frame stage checkpoint (no net_dV), and this is the clip stage; to "
                        f"start the clip stage from it, pass it as --pretrained_frame_DINet_path instead")
    raise UserError(f"--resume {path}: a clip stage checkpoint (it holds net_dV), and this is the frame stage; "
                    f"continue it with train_DINet_clip.py, or pass a frame stage checkpoint")


def train_step(stage, batch, counters, runtime):
    """One iteration, queued on the device with nothing read back: the stage's step and, when it was not finite on
    any process, its networks' buffers (BatchNorm statistics) put back. `counters`: (steps skipped in all, in a row)
    on the device. Returns (names, values, counters, rows): values = the losses `names` (averaged over the
    processes), then per update of the step whether its loss and whether its gradients were not finite (> 0: on
    some process), then the new counters."""
    groups = {}  # the buffers by dtype, each group saved as one flat tensor (a few kernels, not one per buffer)
    for network in stage.networks().values():
        for buffer in network.buffers():
            groups.setdefault(buffer.dtype, []).append(buffer)
    saved = [torch.cat([buffer.flatten() for buffer in group]) for group in groups.values()]
    stage.non_finite = []
    losses, rows = stage.step(batch)
    flags = [flag for _, loss_bad, gradients_bad in stage.non_finite for flag in (loss_bad, gradients_bad)]
    values = distributed.average(torch.stack([value.float() for value in [*losses.values(), *flags]]), runtime)
    skipped = (values[len(losses):].amax() > 0) if flags else torch.zeros((), dtype=torch.bool, device=values.device)
    for group, before in zip(groups.values(), saved):
        restored = torch.where(skipped, before, torch.cat([buffer.flatten() for buffer in group]))
        torch._foreach_copy_(group, [part.view_as(buffer) for part, buffer in
                                     zip(restored.split([buffer.numel() for buffer in group]), group)])
    counters = torch.stack([counters[0] + skipped, torch.where(skipped, counters[1] + 1, 0)])
    return list(losses), torch.cat([values, counters]), counters, rows


class StepLog:
    """Each step's log line, written a step late: a step's values are copied to the host without waiting (pinned
    memory on a GPU) while the next step is queued, and read then, so the device never waits for the host. Too
    many non-finite steps in a row stop the run when the last one's line is read."""

    def __init__(self, opt, stage, log, iterations):
        self.opt, self.stage, self.log, self.iterations = opt, stage, log, iterations
        self.pending = None
        self.skipped = 0  # steps skipped so far, as last read

    def add(self, values, names, labels, rows, **where):
        """Queue the copy of this step's values (train_step's); write the line of the step before."""
        queued = distributed.HostCopy(values)
        self.flush()
        self.pending = (queued, names, labels, rows, where)

    def flush(self):
        """Write the pending step's line (before a checkpoint, at the end of an epoch, when stopping)."""
        if self.pending is None:
            return
        queued, names, labels, rows, where = self.pending
        self.pending = None
        values = queued.read().tolist()
        losses = dict(zip(names, values))
        flags = values[len(names):len(names) + 2 * len(labels)]
        self.skipped, consecutive = int(values[-2]), int(values[-1])
        epoch, iteration, step, lr = where["epoch"], where["iteration"], where["global_step"], where["lr"]
        bad = [label if loss_bad else f"{label} (gradients)"
               for label, loss_bad, gradients_bad in zip(labels, flags[0::2], flags[1::2]) if loss_bad or gradients_bad]
        if not bad:
            self.log.line(format_log_line(epoch, iteration, self.iterations, losses, lr, self.stage.lr_label))
            self.log.scalars(step, epoch, {**losses, self.stage.lr_label: lr})
            if rows:
                self.log.images(step, image_grid(rows), self.stage.image_tag)
            return
        text = " ".join(f"{name}={value:.4g}" for name, value in losses.items())
        self.log.line(f"non-finite at epoch {epoch} iteration {iteration} (step {step}): {text}; "
                      f"{', '.join(bad)} not finite, update skipped ({self.skipped} skipped so far)")
        if consecutive >= self.opt.max_non_finite:
            self.log.close()
            raise UserError(
                f"stopping: {consecutive} non-finite steps in a row, the last at epoch {epoch} iteration {iteration} "
                f"(step {step}, {text}; {', '.join(bad)} not finite); the checkpoints in {self.opt.result_path} are "
                f"from before it: resume with a lower --lr_g/--lr_dI, or --amp off")


class WeightAverage:
    """An exponential moving average of a network's weights (--ema): steadier than any one step's weights under the
    GAN's noise. BatchNorm statistics are averaged alike (by themselves they follow the last ~10 batches, and the
    held-out frames' colours swing with them). While few steps are averaged the decay is lower ((1 + n) / (10 + n)),
    so the average does not hold on to the random initialisation; a generator that starts trained gets no such
    warm-up (an average following a fresh optimizer's first, large steps would lose what was trained)."""

    def __init__(self, network, decay, warm_up=True):
        self.decay, self.warm_up = decay, warm_up
        self.network = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network, steps):
        """Average in `network`'s weights after its `steps`-th update."""
        decay = min(self.decay, (1 + steps) / (10 + steps)) if self.warm_up else self.decay
        averaged = list(zip(self.network.parameters(), network.parameters()))
        for mine, theirs in zip(self.network.buffers(), network.buffers()):
            if mine.is_floating_point():
                averaged.append((mine, theirs))
            else:
                mine.copy_(theirs)  # BatchNorm's batch count
        torch._foreach_lerp_([mine for mine, _ in averaged], [theirs for _, theirs in averaged], 1 - decay)


TRAINING_SUFFIX = "_training"  # under --ema a checkpoint's net_g is the average; the trained weights sit beside it


class Checkpointer:
    """Writes the run's checkpoints (rank 0 only): DINet's every --checkpoint epochs, and with
    --save_every_steps K one every K iterations, of which the newest --keep_step_checkpoints stay."""

    def __init__(self, opt, stage, schedulers, training_set, runtime, log, validator=None):
        self.opt, self.stage, self.schedulers, self.log = opt, stage, schedulers, log
        self.audio_feature = training_set.audio_feature
        self.enabled = runtime.is_main
        self.validator = validator

    def save(self, epoch, iteration, global_step, whole_epoch, name=None):
        """After `iteration` iterations of `epoch` (a whole epoch: the next one starts at its first); `name`: a
        file name other than the epoch's."""
        if not self.enabled:
            return None
        stage, prefix = self.stage, self.stage.checkpoint_prefix
        path = os.path.join(self.opt.result_path,
                            name or checkpoint_name(prefix, epoch, None if whole_epoch else iteration))
        atomic_save({
            "epoch": epoch + 1 if whole_epoch else epoch,
            "iteration": 0 if whole_epoch else iteration,
            "state_dict": weights(stage),
            "optimizer": {name: optimizer.state_dict() for name, optimizer in stage.optimizers.items()},
            "scheduler": {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
            "scaler": {name: scaler.state_dict() for name, scaler in getattr(stage, "scalers", {}).items()},
            "rng": rng_state(),
            "global_step": global_step,
            "mouth_region_size": self.opt.mouth_region_size,
            "audio_feature": self.audio_feature,
            **stage.checkpoint_metadata(),
            **(self.validator.state() if self.validator else {}),
        }, path)
        if not whole_epoch and not name:
            prune_step_checkpoints(self.opt.result_path, prefix, self.opt.keep_step_checkpoints, path)
        self.log.line(f"checkpoint saved: {path}")
        return path


def weights(stage):
    """A checkpoint's state_dict: every trained network's weights, with the generator's average in place of its
    own under --ema (what dubbing, evaluation and the next stage load), its own kept for resuming."""
    state = {name: distributed.unwrap(net).state_dict() for name, net in stage.networks().items()}
    if stage.average:
        state["net_g" + TRAINING_SUFFIX], state["net_g"] = state["net_g"], stage.average.network.state_dict()
    return state


def restore(stage, schedulers, resume, path):
    """Load a checkpoint's networks, optimizers, schedulers, scalers and RNG; returns (epoch, iteration, step)."""
    saved = resume["state_dict"]
    for name, network in stage.networks().items():
        trained = name + TRAINING_SUFFIX
        load_network(distributed.unwrap(network), resume, trained if trained in saved else name, path, "--resume")
    if stage.average:  # the checkpoint's average, or its weights where it kept none
        load_network(stage.average.network, resume, "net_g", path, "--resume")
    run_rates = {name: list(scheduler.base_lrs) for name, scheduler in schedulers.items()}  # --lr_g, --lr_dI, --lr
    for name, optimizer in stage.optimizers.items():
        load_optimizer(optimizer, resume["optimizer"][name])
    for name, scheduler in schedulers.items():
        if "scheduler" in resume:
            scheduler.load_state_dict(resume["scheduler"][name])
            # this run's learning rates (a resume with a lower one is how a diverging run goes on), where the
            # checkpoint's schedule got to
            scheduler.base_lrs = run_rates[name]
            for group, rate, factor in zip(scheduler.optimizer.param_groups, run_rates[name], scheduler.lr_lambdas):
                group["initial_lr"], group["lr"] = rate, rate * factor(scheduler.last_epoch)
    for name, state in resume.get("scaler", {}).items():
        if state:  # a disabled (non-fp16) scaler saves {}: nothing to restore, even when resuming under fp16
            stage.scaler(name).load_state_dict(state)
    if "rng" in resume:
        set_rng_state(resume["rng"])
    return resume["epoch"], resume.get("iteration", 0), resume.get("global_step", 0)


OPTIMIZER_KERNEL = ("fused", "foreach", "capturable")  # how Adam computes: this run's choice, not the checkpoint's


def load_optimizer(optimizer, state):
    """A checkpoint's optimizer state, run with this run's kernel: a GPU run's (fused, captured in a CUDA graph)
    resumed on a CPU runs the CPU's loop, a CPU run's resumed on a GPU the fused kernel that step_unless relies on;
    the step counts are placed where this run's kernel keeps them."""
    groups = state["param_groups"]
    if len(groups) == len(optimizer.param_groups):  # else load_state_dict names the mismatch
        groups = [{**saved, **{key: ours[key] for key in OPTIMIZER_KERNEL if key in ours}}
                  for saved, ours in zip(groups, optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def make_validator(opt, stage, training_set, held_out, split, runtime, resume):
    """The main process's Validator when the run holds videos out, else None."""
    if held_out is None or not runtime.is_main:
        return None
    syncnet = getattr(stage, "syncnet", None)
    if syncnet is None and opt.val_syncnet_path:
        syncnet, config = load_syncnet(opt.val_syncnet_path, "--val_syncnet_path")
        check_syncnet_fits(config, opt.val_syncnet_path, opt.mouth_region_size, training_set.audio_feature,
                           training_set.audio_channel, "--val_syncnet_path")
        syncnet = syncnet.to(runtime.device).eval()
    if opt.val_metric == "sync" and syncnet is None:
        raise UserError("--val_metric sync needs a SyncNet: pass --val_syncnet_path PATH (the clip stage uses its own), "
                        "or pick another --val_metric")
    validator = Validator(opt, held_out, split, runtime, syncnet)
    validator.restore(resume)
    return validator


def validate(validator, stage, checkpointer, log, epoch, iterations, global_step, epoch_seconds):
    """Score the generator on the held-out clips: one log line, scalars, an image grid, and the best checkpoint."""
    scores, grid, seconds = timed_run(validator, stage)
    improved = validator.improved(scores, epoch)
    log.line(format_scores(epoch, scores, validator.best, seconds, epoch_seconds))
    log.scalars(global_step, epoch, {f"val/{name}": value for name, value in scores.items()})
    log.images(global_step, grid, "validation: masked|generated|real", name=f"validation_epoch_{epoch:04d}.png")
    if improved:
        checkpointer.save(epoch, iterations, global_step, whole_epoch=True, name=BEST_NAME)


def stalled(opt, validator, epoch):
    """Why to stop early for want of progress on the held-out videos (--val_patience), or None."""
    if not (validator and opt.val_patience and validator.best) or math.isnan(validator.best["value"]):
        return None  # nothing measured yet: no sign of progress to wait for
    since = (epoch - validator.best["epoch"]) // opt.val_every
    if since < opt.val_patience:
        return None
    return (f"{opt.val_metric} has not improved for {since} validations (--val_patience {opt.val_patience}); the best "
            f"is epoch {validator.best['epoch']}'s, {validator.best['value']:.4g}, in {BEST_NAME}")


def loader_workers(requested, device):
    """--num_workers, or by default: 2 on a CPU (its training step is ~100x slower than the loader); on a GPU this
    process's share of the CPU cores less one for its own loop, 2 to 8 (each worker keeps its own crop cache)."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 2
    return max(2, min(8, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


def train(opt, stage_class=FrameStage):
    """Train `stage_class` as `opt` says; returns the stage (its networks hold the final weights)."""
    runtime = distributed.setup(opt.device)
    torch.manual_seed(opt.seed)
    np.random.seed((opt.seed + runtime.rank) % 2 ** 32)  # --seed may be numpy's largest
    random.seed(opt.seed + runtime.rank)
    CropGeometry.checked(opt.mouth_region_size)  # rejects a size DINet's crop cannot use, before any work
    check_writable(opt.result_path, "--result_path")
    if runtime.is_main:
        remove_stale_temporaries(opt.result_path)

    training_set = load_training_json(opt.train_data)
    resume_path, resume = find_resume(opt, stage_class, runtime)
    held_out = split = None
    if stage_class.validates:
        training_set, held_out, split = held_out_sets(opt, training_set, resume)
    stage = stage_class.create(opt, training_set, runtime, resume)
    if getattr(opt, "ema", 0):
        stage.average = WeightAverage(stage.generator(), opt.ema, warm_up=not stage.starts_trained)
    validator = make_validator(opt, stage, training_set, held_out, split, runtime, resume)

    dataset = stage.dataset(training_set)
    if len(dataset) < opt.batch_size * runtime.world_size:
        raise UserError(f"--batch_size {opt.batch_size} is larger than the {len(dataset)} samples per epoch of "
                         f"{opt.train_data} (videos x --augment_num); lower --batch_size or raise --augment_num")
    order = EpochOrder(len(dataset), opt.batch_size, opt.seed, runtime.rank, runtime.world_size)
    # its own generator: making loader iterators must not draw from the RNG that a resume restores
    workers = loader_workers(opt.num_workers, runtime.device)
    loader = DataLoader(dataset, batch_size=opt.batch_size, sampler=order, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=runtime.device.type == "cuda",
                        worker_init_fn=ignore_stop_signals, generator=torch.Generator())
    iterations = min(order.batches, opt.iterations_per_epoch or order.batches)

    schedule = dinet_lr_lambda(opt.non_decay, opt.decay)
    schedulers = {name: LambdaLR(optimizer, schedule) for name, optimizer in stage.optimizers.items()}
    start_epoch, start_iteration, global_step = opt.start_epoch, 0, 0
    if resume is not None:
        start_epoch, start_iteration, global_step = restore(stage, schedulers, resume, resume_path)

    log = RunLog(opt.result_path, enabled=runtime.is_main,
                 resumed_at=(global_step, start_epoch) if resume is not None else None)
    log.line(f"training {stage_class.__name__} [{stage.describe()}] at mouth {opt.mouth_region_size} on "
             f"{runtime.device} x{runtime.world_size}: {len(training_set.videos)} videos, "
             f"{training_set.audio_feature} audio ({training_set.audio_channel}-d), {iterations} iterations per epoch, "
             f"{workers} loader workers")
    if resume is not None:
        log.line(f"resumed from {resume_path}: epoch {start_epoch}, iteration {start_iteration}, step {global_step}")
        changed = changed_flags(resume.get("options", {}), opt)
        if changed:
            log.line(f"flags changed since that checkpoint: {changed}; this run goes on with the new values")
    if validator:
        validator.write_split(opt.result_path)
        log.line(f"validation every {opt.val_every} epoch(s) on {len(validator.videos)} held-out video(s) "
                 f"({sum(len(video['real']) for video in validator.videos)} frames): {', '.join(split['videos'][:5])}"
                 f"{' ...' if len(split['videos']) > 5 else ''}; best by {opt.val_metric} kept as {BEST_NAME}")
    checkpointer = Checkpointer(opt, stage, schedulers, training_set, runtime, log, validator)
    last_epoch = opt.non_decay + opt.decay
    from .graphs import StepRunner  # it runs train_step, defined here
    run_step = StepRunner(stage, runtime, stage.precision.compile, log.line)
    step_log = StepLog(opt, stage, log, iterations)
    counters = torch.zeros(2, device=runtime.device)  # steps skipped in all, and in a row
    run_started = time.perf_counter()
    stop_vote = distributed.LateVote(runtime)

    def stop_now(epoch, done):
        """Stop on a signal (to any process) after `done` iterations of `epoch`, with a step checkpoint."""
        step_log.flush()
        path = checkpointer.save(epoch, done, global_step, whole_epoch=False)
        name = signal.Signals(stop.signal).name if stop.signal else "a signal on another process"
        log.line(f"stopped by {name} at epoch {epoch} iteration {done}: {path} holds the run; "
                 f"continue with the same command and --resume auto")
        log.close()
        distributed.cleanup()
        raise Stopped(128 + (stop.signal or signal.SIGTERM))

    with StopRequest(announce=runtime.is_main) as stop, workers_shut_down(loader):
        for epoch in range(start_epoch, last_epoch + 1):
            first = start_iteration if epoch == start_epoch else 0
            epoch_started = time.perf_counter()
            order.set_epoch(epoch, skip_batches=first)
            stage.train_mode()
            progress = tqdm(epoch_batches(loader, max(0, iterations - first)), total=iterations, initial=first,
                            desc=f"epoch {epoch}/{last_epoch}", leave=False, dynamic_ncols=True,
                            disable=not runtime.is_main)
            for iteration, batch in enumerate(progress, start=first):
                batch = stage.precision.inputs(batch, runtime.device)
                names, values, counters, rows = run_step(batch, counters)
                # copied: a CUDA graph's outputs are overwritten by its next replay
                kept = [[image.detach().clone() for image in row] for row in rows] \
                    if rows and global_step % opt.image_every == 0 else None
                step_log.add(values, names, [label for label, *_ in stage.non_finite], kept,
                             epoch=epoch, iteration=iteration, global_step=global_step,
                             lr=stage.optimizers[stage.lr_network].param_groups[0]["lr"])
                global_step += 1
                if stage.average:
                    stage.average.update(distributed.unwrap(stage.net_g), global_step)
                if stop_vote(stop.signal is not None):
                    stop_now(epoch, iteration + 1)
                if opt.save_every_steps and global_step % opt.save_every_steps == 0:
                    step_log.flush()
                    checkpointer.save(epoch, iteration + 1, global_step, whole_epoch=False)
            if stop_vote.settle():  # a signal during the epoch's last iteration (under torchrun: the vote not yet read)
                stop_now(epoch, iterations)
            step_log.flush()
            for scheduler in schedulers.values():
                scheduler.step()
            if runtime.is_main:
                stage.end_epoch(epoch, log, global_step)
            now = time.perf_counter()
            # a whole epoch's seconds, from the iterations this one ran (fewer where it was resumed part way)
            epoch_seconds = (now - epoch_started) * iterations / (iterations - first) if iterations > first else 0.0
            # another epoch like this one (validation included) would end past the budget
            out_of_time = opt.max_minutes is not None and distributed.any_rank(
                (now - run_started) + epoch_seconds > opt.max_minutes * 60, runtime)
            if validator and (epoch % opt.val_every == 0 or epoch == last_epoch or out_of_time):
                validate(validator, stage, checkpointer, log, epoch, iterations, global_step, epoch_seconds)
            why = (f"--max_minutes {opt.max_minutes:g} would be over before another epoch ended" if out_of_time
                   else stalled(opt, validator, epoch))
            # `why` from patience is the main process's (it alone validates): every process stops with it
            stop_early = epoch < last_epoch and distributed.any_rank(why, runtime)
            if epoch % opt.checkpoint == 0 or stop_early or epoch == last_epoch:
                checkpointer.save(epoch, iterations, global_step, whole_epoch=True)
            if stop_early:
                log.line(f"stopped after epoch {epoch} of {last_epoch} ({(time.perf_counter() - run_started) / 60:.1f} "
                         f"min): {why or 'on another process'}")
                break
    if step_log.skipped:
        log.line(f"{step_log.skipped} step(s) had a non-finite loss or gradients and were skipped")
    if runtime.is_main:
        stage.finish(log)
    log.close()
    distributed.cleanup()
    return stage
