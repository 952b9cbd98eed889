"""The training schedule of a personal model, sized to the footage and the device, and what it is expected to cost.

Size: each stage draws PASSES samples per training frame of footage (a frame stage's sample is one frame, a clip
stage's five, a SyncNet's a 5-frame window), at the device's batch size (BATCH: the lab's on a GPU; smaller on a CPU,
so that the model is updated more often in the hours it trains there), in EPOCHS epochs (fewer, of EPOCH_ITERATIONS
or more, for a short stage): validation after each, the learning rate fixed for the first half and then decaying to
zero, as DINet schedules it.

Cost: seconds per training sample measured on this machine (measure_costs), the rest (cutting, data preparation,
validation, dubbing, scoring) from per-frame rates measured on a 2-core CPU. A budget (--max_minutes) scales every
stage's iterations by one factor, the largest whose estimate fits (fit_to_budget).
"""
import math
import time
from dataclasses import dataclass, replace

from common.errors import UserError

MOUTHS = (64, 128, 256)
# samples per training frame: from scratch the coarse stage learns the face, each finer one refines it; from a
# general checkpoint (--init) one frame stage at the final size fine-tunes it
PASSES = {("frame", 64): 50, ("frame", 128): 20, ("frame", 256): 10, "init": 10, "syncnet": 40, "clip": 3}
EPOCHS = 10
EPOCH_ITERATIONS = 20  # at least, so a short stage does not spend its time validating
BATCH = {"cuda": {"frame": {64: 24, 128: 12, 256: 4}, "clip": {64: 12, 128: 6, 256: 3}, "syncnet": 64},
         "cpu": {"frame": {64: 8, 128: 4, 256: 2}, "clip": {64: 2, 128: 1, 256: 1}, "syncnet": 16}}

# FLOPs of a training sample relative to the frame stage's at mouth 64 (lab1, docs/performance.md: 108, 451 and 1843
# GFLOPs at 64, 128, 256; a clip sample 9764 at 256, 5.3 frame samples), for scaling one CPU measurement to the others
FLOP_RATIO = {("frame", 64): 1.0, ("frame", 128): 4.2, ("frame", 256): 17.1,
              ("clip", 64): 5.3, ("clip", 128): 22.3, ("clip", 256): 90.4}
# a SyncNet window (embedding, 64x64 mouths) against a frame-64 sample: the demo's 0.059 s and 0.55 s (2-core Zen 4)
SYNCNET_RATIO = 0.11
FORWARD_RATIO = 0.15   # the generator's forward pass on one frame against a training sample (16 of 108 GFLOPs at 64)
MEASURE_BATCH = 4      # the CPU measurement's batch: big enough to be typical, small enough to take seconds
# (seconds per frame, seconds per frame and megapixel), measured on a 2-core CPU: cutting (decode, encode), data
# preparation (frames, landmarks, crops), dubbing (decode, landmarks, blend, encode), the self-reconstruction protocol
# (a dubbing, two baselines, landmarks of four videos, PSNR/SSIM/LPIPS of three) and lip-sync scoring
PER_FRAME = {"cut": (0, 0.017), "prepare": (0, 0.02), "dub": (0.05, 0.03), "evaluate": (1.5, 0.12),
             "score": (0.05, 0.03)}
STARTUP_SECONDS = 10  # a command starting: Python, torch, the networks


@dataclass(frozen=True)
class Stage:
    kind: str        # "frame", "syncnet" or "clip"
    mouth: int
    batch: int
    iterations: int  # asked for; whole epochs round it up

    @property
    def name(self):
        return f"{self.kind}_{self.mouth}"

    @property
    def epochs(self):
        return max(1, min(EPOCHS, self.iterations // EPOCH_ITERATIONS))

    @property
    def per_epoch(self):
        return math.ceil(self.iterations / self.epochs)

    @property
    def samples(self):
        return self.epochs * self.per_epoch * self.batch


@dataclass(frozen=True)
class Footage:
    """What the cost of the steps other than training depends on."""
    frames: int           # all the footage, at 25 fps
    training_frames: int
    held_out_frames: int
    validation_frames: int  # generated per validation, over the held-out parts (validation_frames)
    megapixels: float       # of the largest video's frames
    foreign_frames: int   # of the foreign speech the held-out parts are dubbed with, in all


def validation_frames(held_out_frames):
    """Frames a validation generates from a held-out part of `held_out_frames` frames: 5 of each 9-frame clip that
    is not one of the NUM_REFERENCES clips giving the references, of at most --val_clips (8) clips."""
    from common.geometry import CLIP_LENGTH, NUM_REFERENCES
    return 5 * min(8, max(1, held_out_frames // CLIP_LENGTH - NUM_REFERENCES))


def plan_schedule(training_frames, mouth, device_type, init=False, scale=1.0):
    """The stages for `training_frames` frames of footage: frame stages 64 -> ... -> `mouth` (one at `mouth` from
    --init), the SyncNet, the clip stage; iterations = scale x passes x frames / batch, at least 1."""
    batches = BATCH["cuda" if device_type == "cuda" else "cpu"]

    def stage(kind, size, passes, batch):
        return Stage(kind, size, batch, max(1, math.ceil(scale * passes * training_frames / batch)))
    if init:
        frames = [stage("frame", mouth, PASSES["init"], batches["frame"][mouth])]
    else:
        frames = [stage("frame", size, PASSES["frame", size], batches["frame"][size])
                  for size in MOUTHS if size <= mouth]
    return frames + [stage("syncnet", mouth, PASSES["syncnet"], batches["syncnet"]),
                     stage("clip", mouth, PASSES["clip"], batches["clip"][mouth])]


def scaled(stages, factor):
    return [replace(stage, iterations=max(1, math.floor(stage.iterations * factor))) for stage in stages]


def training_seconds(stage, costs, footage):
    """A training command: start-up, its samples, and for the generator stages a validation after every epoch."""
    seconds = STARTUP_SECONDS + stage.samples * costs[stage.kind, stage.mouth]
    if stage.kind != "syncnet":
        per_frame = FORWARD_RATIO * costs["frame", stage.mouth] + sum(PER_FRAME["dub"])  # the crops' landmarks too
        seconds += stage.epochs * footage.validation_frames * per_frame
    return seconds


def media_seconds(kind, frames, footage, costs=None, mouth=None):
    """A command that goes over `frames` frames of footage: start-up and its per-frame rate (plus the generator's
    forward pass per frame for dubbing and the protocol)."""
    per_frame, per_megapixel = PER_FRAME[kind]
    seconds = STARTUP_SECONDS + frames * (per_frame + footage.megapixels * per_megapixel)
    if kind in ("dub", "evaluate"):
        seconds += frames * FORWARD_RATIO * costs["frame", mouth]
    return seconds


def fit_to_budget(stages, budget_seconds, estimate):
    """(stages, factor): `stages` scaled by the largest factor up to 1 for which estimate(stages) <= budget_seconds;
    when even one iteration per stage does not fit, that smallest schedule and factor 0."""
    if budget_seconds is None or estimate(stages) <= budget_seconds:
        return stages, 1.0
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if estimate(scaled(stages, middle)) <= budget_seconds else (low, middle)
    return scaled(stages, low), low


def measure_costs(device, stages, lab="lab1"):
    """({(kind, mouth): seconds per training sample}, how they were had): on a GPU one synthetic iteration of each
    generator stage at its batch size, timed after a warm-up; on a CPU the frame stage at mouth 64 only, at
    MEASURE_BATCH, the others scaled by FLOP_RATIO. The SyncNet is SYNCNET_RATIO of a frame-64 sample."""
    import torch

    from benchmark.measure import timed
    from benchmark.training import training_stage
    from common.devices import resolve_amp
    precision = {"off": "fp32"}.get(resolve_amp("auto", device, training=True), "bf16")  # what --amp auto trains in

    def per_sample(kind, mouth, batch, iterations):
        try:
            stage, data = training_stage(f"train_{kind}", mouth, batch, device, precision, True, lab)
            return timed(lambda: stage.step(data), device, iterations, warmup=1) / batch
        except torch.cuda.OutOfMemoryError:
            raise UserError(f"--device {device}: the {kind} stage at mouth {mouth} does not fit in its memory at "
                            f"batch {batch}; pass a smaller --mouth_region_size") from None

    started = time.perf_counter()
    if device.type == "cuda":
        costs = {(stage.kind, stage.mouth): per_sample(stage.kind, stage.mouth, stage.batch, 3)
                 for stage in stages if stage.kind != "syncnet"}
        frame_64 = costs.get(("frame", 64)) or per_sample("frame", 64, BATCH["cuda"]["frame"][64], 3)
        how = "one synthetic iteration of each stage at its batch size"
    else:
        frame_64 = per_sample("frame", 64, MEASURE_BATCH, 1)
        costs = {key: frame_64 * ratio for key, ratio in FLOP_RATIO.items()}
        how = (f"one synthetic frame-stage iteration at mouth 64, batch {MEASURE_BATCH}: {frame_64:.2f} s a sample; "
               f"the other stages scaled by their FLOPs per sample")
    for stage in stages:
        if stage.kind == "syncnet":
            costs[stage.kind, stage.mouth] = frame_64 * SYNCNET_RATIO
    return costs, f"{how} ({time.perf_counter() - started:.0f} s to measure)"
