"""Labs side by side: what each generator costs, and how each trains under the same seed and data.

`cost_columns` counts parameters and forward FLOPs per frame on the meta device (shapes only, no
arithmetic, so all twelve labs at mouth 256 take seconds) with `torch.utils.flop_counter.FlopCounterMode`,
which counts a multiply-add as 2 FLOPs, on the plain model (models/formulations.py): lab1 gives DINet's
22.4 / 89.7 / 358.7 GFLOPs at mouth 64 / 128 / 256. `run_comparison` trains each lab with the shared engine
(`engine.trainer.train`, frame stage), reads its metrics.jsonl, and writes comparison.md, comparison.csv and
perception_loss.png.
"""
import csv
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.devices import synchronize
from common.errors import UserError
from common.files import atomic_output
from common.geometry import AUDIO_WINDOW, CropGeometry
from config.config import VALIDATION_METRICS, training_parser
from config.labs import GENERATOR_FLAGS, generator_config, lab_audio_feature
from data.audio_features import FEATURE_WIDTHS
from data.training_json import check_audio_channel, load_training_json
from models import DINet
from models.formulations import plain_formulations

from .trainer import FrameStage, train

MOUTH_SIZES = (64, 128, 256)
# Flags that name one run; the comparison sets them per lab.
PER_RUN_FLAGS = ("--lab", "--result_path", "--resume", "--coarse2fine", "--coarse_model_path")


def meta_generator(config):
    """The generator with shapes but no storage: free to build at any size."""
    with torch.device("meta"):
        return DINet.from_config(config).eval()


def parameter_count(config):
    return sum(p.numel() for p in meta_generator(config).parameters())


def generator_gflops(config, mouth_size):
    """Forward GFLOPs for one frame of the generator `config` at `mouth_size`."""
    geometry = CropGeometry(mouth_size)
    generator = meta_generator(config)
    with torch.device("meta"):
        inputs = (torch.zeros(1, config.source_channel, geometry.height, geometry.width),
                  torch.zeros(1, config.ref_channel, geometry.height, geometry.width),
                  torch.zeros(1, config.audio_channel, AUDIO_WINDOW))
    # Gradients stay on: under no_grad nn.TransformerEncoderLayer takes a fused path the counter cannot see.
    with plain_formulations(generator), FlopCounterMode(display=False) as counter:
        generator(*inputs)
    return counter.get_total_flops() / 1e9


def lab_config(lab, audio_channel=None, audio_feature=None, **overrides):
    """The lab's GeneratorConfig; without data, at the width of the feature it names (else DINet's DeepSpeech)."""
    if audio_channel is None:
        audio_feature = lab_audio_feature(lab) or "deepspeech"
        audio_channel = FEATURE_WIDTHS[audio_feature]
    return generator_config(lab, audio_channel, audio_feature=audio_feature, **overrides)


def cost_columns(config):
    """{"parameters (M)": ..., "GFLOPs @64": ..., ...} for one generator."""
    return {"parameters (M)": f"{parameter_count(config) / 1e6:.2f}",
            **{f"GFLOPs @{size}": f"{generator_gflops(config, size):.1f}" for size in MOUTH_SIZES}}


def lab_description(lab, config):
    """config.describe(), plus the audio feature a lab needs (lab7's generator is lab5's, on mel features)."""
    needed = lab_audio_feature(lab)
    return config.describe() + (f"; audio_feature={needed}" if needed else "")


def cost_table(labs):
    """One row per lab: description, the audio width counted, parameters and GFLOPs per frame at each mouth size."""
    rows = []
    for lab in labs:
        config = lab_config(lab)
        rows.append({"lab": lab, "description": lab_description(lab, config),
                     "audio input": f"{lab_audio_feature(lab) or 'deepspeech'} {config.audio_channel}-d",
                     **cost_columns(config)})
    return rows


def markdown_table(rows):
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row.get(name, "")) for name in header) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class LabRun:
    lab: str
    description: str
    costs: dict
    skipped: Optional[str] = None                 # the reason, for a lab this data cannot train
    step_seconds: list = field(default_factory=list)
    metrics: list = field(default_factory=list)   # metrics.jsonl records: one per iteration, one per validation

    def epoch_means(self, key):
        """{epoch: mean of `key` over the epoch's records that hold it}: an iteration loss, or a validation score."""
        by_epoch = {}
        for record in self.metrics:
            if key in record:
                by_epoch.setdefault(record["epoch"], []).append(record[key])
        return {epoch: statistics.fmean(values) for epoch, values in sorted(by_epoch.items())}

    def seconds_per_iteration(self):
        # the median ignores the first iteration's warm-up and other processes' bursts on a shared machine
        return statistics.median(self.step_seconds) if self.step_seconds else None


def timed_stage(stage_class, step_seconds):
    """`stage_class` whose every step appends its wall time to `step_seconds` (waiting for the device at both ends,
    so the time is the step's, data loading excluded)."""
    class Timed(stage_class):
        def step(self, batch):
            synchronize(self.runtime.device)
            started = time.perf_counter()
            result = super().step(batch)
            synchronize(self.runtime.device)
            step_seconds.append(time.perf_counter() - started)
            return result
    Timed.__name__ = Timed.__qualname__ = stage_class.__name__
    return Timed


def flag_given(name, args):
    return any(arg == name or arg.startswith(name + "=") for arg in args)


def read_metrics(result_path):
    with open(os.path.join(result_path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def prepare_runs(labs, training_args, epochs, out_dir):
    """Check everything before the first lab trains: flags, data, folders. Returns (base options, args per lab)."""
    for name in PER_RUN_FLAGS:
        if flag_given(name, training_args):
            raise UserError(f"{name}: compare_labs.py sets it for each lab; choose labs with --labs and the "
                             f"folder with --out_dir")
    if not (flag_given("--non_decay", training_args) or flag_given("--decay", training_args)):
        training_args = [*training_args, "--non_decay", str(epochs), "--decay", "0"]
    parser = training_parser("compare_labs", out_dir)
    base = parser.parse_args(training_args)  # a wrong flag stops here, before any training
    for lab in labs:
        if os.path.exists(os.path.join(out_dir, lab, "metrics.jsonl")):
            raise UserError(f"{os.path.join(out_dir, lab)} already holds a run; pass another --out_dir or remove it")
    return base, training_args


def run_comparison(labs, training_args, epochs, out_dir):
    """Train every lab in `labs` with the same flags, seed and data; write the comparison into `out_dir`."""
    base, training_args = prepare_runs(labs, training_args, epochs, out_dir)
    training_set = load_training_json(base.train_data)
    audio_channel = check_audio_channel(training_set, base.audio_channel)
    overrides = {name: getattr(base, name) for name in GENERATOR_FLAGS}
    runs = []
    for lab in labs:
        try:
            config = generator_config(lab, audio_channel, base.source_channel, base.ref_channel,
                                      audio_feature=training_set.audio_feature, **overrides)
        except UserError as reason:  # this data lacks the lab's audio feature, or an override does not fit it
            own = lab_config(lab)
            runs.append(LabRun(lab, lab_description(lab, own), cost_columns(own), skipped=str(reason)))
            print(f"skipping {lab}: {reason}")
            continue
        run = LabRun(lab, lab_description(lab, config), cost_columns(config))
        result_path = os.path.join(out_dir, lab)
        opt = training_parser("compare_labs", result_path).parse_args(
            [*training_args, "--lab", lab, "--result_path", result_path])
        train(opt, timed_stage(FrameStage, run.step_seconds))
        run.metrics = read_metrics(result_path)
        runs.append(run)
    write_comparison(runs, base, training_set, out_dir)
    return runs


def epoch_columns(runs, key, label):
    """Per run, {"LABEL epoch E": its epoch mean of `key`} over every epoch any run has one for."""
    means = [run.epoch_means(key) for run in runs]
    epochs = sorted({epoch for mean in means for epoch in mean})
    return [{f"{label} epoch {epoch}": f"{mean[epoch]:.4f}" if epoch in mean else "" for epoch in epochs}
            for mean in means]


def comparison_rows(runs, val_metric):
    """One row per lab: costs, seconds per iteration, the perception loss and the held-out `val_metric` per epoch."""
    rows = []
    for run, perception, held_out in zip(runs, epoch_columns(runs, "Loss_perception", "perception"),
                                         epoch_columns(runs, f"val/{val_metric}", f"held-out {val_metric}")):
        seconds = run.seconds_per_iteration()
        rows.append({"lab": run.lab, "description": run.description, **run.costs,
                     "s/iteration": f"{seconds:.3f}" if seconds is not None else "", **perception, **held_out,
                     "note": f"skipped: {run.skipped}" if run.skipped else ""})
    return rows


def write_comparison(runs, base, training_set, out_dir):
    rows = comparison_rows(runs, base.val_metric)
    held_out = base.val_data or base.val_fraction and f"{base.val_fraction:g} of the videos"
    summary = (f"Data: {training_set.path} ({len(training_set.videos)} videos, {training_set.audio_feature} "
               f"{training_set.audio_channel}-d); mouth {base.mouth_region_size}, batch {base.batch_size}, "
               f"augment_num {base.augment_num}, seed {base.seed}, epochs {base.non_decay + base.decay}, "
               f"device {base.device or 'default'}, VGG19 {base.vgg19_weights}. Perception loss: mean over each "
               f"epoch's iterations; s/iteration: median wall time of one generator + discriminator step."
               + (f" Held out: {held_out}, scored by {base.val_metric} "
                  f"({'higher' if VALIDATION_METRICS[base.val_metric] else 'lower'} is better)." if held_out else ""))
    with atomic_output(os.path.join(out_dir, "comparison.md")) as partial:
        with open(partial, "w") as f:
            f.write(f"# Lab comparison\n\n{summary}\n\n{markdown_table(rows)}\n")
    with atomic_output(os.path.join(out_dir, "comparison.csv")) as partial:
        with open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    plot_perception(runs, os.path.join(out_dir, "perception_loss.png"))
    print(f"\n{markdown_table(rows)}\n\nwritten: {os.path.join(out_dir, 'comparison.md')}, comparison.csv, "
          f"perception_loss.png")


def plot_perception(runs, path):
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5))
    # tab20 pairs each hue with its light shade: its ten hues first, so that labs side by side differ in hue
    paired = plt.get_cmap("tab20").colors
    colours = [*paired[0::2], *paired[1::2]]
    for index, run in enumerate(runs):
        steps = [m for m in run.metrics if "Loss_perception" in m]  # not the validation records
        if steps:
            axes.plot([m["step"] + 1 for m in steps], [m["Loss_perception"] for m in steps],
                      label=f"{run.lab} ({run.description})", linewidth=1.2, color=colours[index % len(colours)])
    axes.xaxis.get_major_locator().set_params(integer=True)  # no iteration 1.5 on a short run
    axes.set_xlabel("iteration")
    axes.set_ylabel("Loss_perception")
    axes.set_title("Frame-stage perception loss, same seed and data")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)
    with atomic_output(path) as partial:
        figure.savefig(partial, dpi=120, bbox_inches="tight")
    plt.close(figure)
