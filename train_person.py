"""Train a personal model from one person's footage and dub with it, in one command.

    python train_person.py --videos me_1.mp4 me_2.mp4 --result_path ./asserts/person_me [--device cuda]
        [--mouth_region_size 64|128|256] [--init CHECKPOINT] [--max_minutes M] [--speech FOREIGN.wav]

runs the repository's commands one after another, each printed before it runs as it can be typed: data_processing.py
on the footage, train_DINet_frame.py 64 -> 128 (-> 256), train_syncnet.py, train_DINet_clip.py, evaluate.py and
inference.py; then writes report.md, a side-by-side video per held-out part and a contact sheet of held-out mouths.
"""
import argparse
import json
import os
import shlex
import sys
import textwrap
from dataclasses import replace

from common.devices import choose_device
from common.errors import ArgumentParser, UserError, run_command, stopped_without
from common.files import check_writable, write_atomically
from config.ranges import integer, number
from media.ffmpeg import probe
from person import footage as footage_checks
from person.footage import (FACE_SAMPLES, FPS, HELD_OUT_SHARE, MIN_PART_FRAMES, MIN_VIDEO_SECONDS, SEGMENT_FRAMES,
                            shortest_alone, split_footage)
from person.recipe import Layout, Plan, build_steps, foreign_speech, report
from person.schedule import (BATCH, EPOCH_ITERATIONS, EPOCHS, MOUTHS, PASSES, Footage, fit_to_budget, measure_costs,
                             plan_schedule, training_seconds, validation_frames)
from person.steps import Recipe, duration

ROOT = os.path.dirname(os.path.abspath(__file__))


def sizes(batches):
    return (f"{'/'.join(map(str, batches['frame'].values()))} (frame stages 64/128/256), "
            f"{'/'.join(map(str, batches['clip'].values()))} (clip stage), {batches['syncnet']} (SyncNet)")

PARAGRAPHS = [
    f"footage: videos with sound of one face in view, each at least {MIN_VIDEO_SECONDS} s and a video alone at least "
    f"{shortest_alone()} s, so that the SyncNet has parts of it to train on once it holds its share out (a face in "
    f"at least half of {FACE_SAMPLES} frames looked at, upright in most, several faces in fewer than a quarter; else "
    f"it stops before any work). Of "
    f"each video the last {100 * HELD_OUT_SHARE:.0f}% (at least {MIN_PART_FRAMES / FPS:.1f} s) is held out, cut off "
    f"frame-exactly and never trained on: validation keeps each stage's best epoch by it (netG_best.pth, by "
    f"lmd_mouth), and the run ends by dubbing and scoring it. The rest is trained on, in parts of about "
    f"{SEGMENT_FRAMES // FPS} s; a part where data preparation finds no usable face is left out, saying so.",
    f"schedule: sized to the training footage: per training frame, {PASSES['frame', 64]} samples at frame stage 64, "
    f"{PASSES['frame', 128]} at 128, {PASSES['frame', 256]} at 256 (with --init: one frame stage at the final size, "
    f"{PASSES['init']}), {PASSES['syncnet']} SyncNet windows and {PASSES['clip']} clip samples of 5 frames; and to the "
    f"device: batches of {sizes(BATCH['cuda'])} on a GPU, {sizes(BATCH['cpu'])} on a CPU. Each stage runs {EPOCHS} "
    f"epochs (fewer, of {EPOCH_ITERATIONS} iterations or more, when it is short), validated after each, the learning "
    f"rate fixed for the first half and decaying to 0 over the second (DINet's schedule). --schedule_scale "
    f"multiplies every stage's iterations.",
    "time: before starting it says how long it expects to take: seconds per training sample measured here (on a GPU "
    "one synthetic iteration of each stage; on a CPU of the frame stage at mouth 64, the others scaled by their "
    "FLOPs), the rest from per-frame rates of a 2-core CPU; it may be off by half. --max_minutes scales every "
    "stage's iterations by the one factor whose estimate fits, and says so (at least one iteration a stage). A CPU "
    "is not refused: at mouth 64 expect hours per minute of footage.",
    "resume: run the same command again: finished steps are skipped (a step is finished when its output exists), and "
    "an interrupted training step continues from its last checkpoint (--resume auto). The plan is kept in "
    "plan.json; the same --result_path with other flags is refused.",
    "writes, under --result_path: report.md (the evaluate.py tables, the settings, the time per step), "
    "side_by_side_<video>.mp4 (its held-out part | that part dubbed with foreign speech, with the speech), "
    "contact_sheet.png (held-out mouths, real | generated), model.pth (the model, for inference.py: the "
    "generator of the clip stage's netG_best.pth, or of the last frame stage's where that scored better held out; "
    "model.json says which), "
    "syncnet.pth, evaluation/, dubbed/, and the prepared data and checkpoints.",
]


def build_parser():
    how = "\n".join(textwrap.fill(text, 116, subsequent_indent="  ") for text in PARAGRAPHS)
    parser = ArgumentParser(description=__doc__, epilog=how,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--videos", nargs="+", required=True, help="the person's footage: talking-head videos with their speech")
    add("--result_path", default="./asserts/person", help="folder of the run (default ./asserts/person)")
    add("--mouth_region_size", type=int, choices=MOUTHS, default=128,
        help="the model's mouth size: frame stages 64 up to it (default 128)")
    add("--init", default=None, help="a general generator checkpoint (mel features) to fine-tune instead of training "
                                     "from scratch")
    add("--max_minutes", type=number(above=0), default=None, help="cap the whole run at about this many minutes")
    add("--speech", default=None, help="speech to dub the held-out parts with (default: another video's held-out "
                                       "part, or with one video a procedural speech clip)")
    add("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    add("--schedule_scale", type=number(above=0), default=1.0,
        help="multiply every stage's iterations (above 1 trains longer; --max_minutes still caps)")
    add("--workers", type=integer(1), default=min(4, os.cpu_count() or 1), help="data preparation processes")
    return parser


def pretrained_weights():
    """The perception and LPIPS networks' ImageNet weights where torchvision's cache holds them, else random."""
    import torch
    from torchvision import models
    cached = {name: os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url)))
              for name, enum in (("vgg19", models.VGG19_Weights.IMAGENET1K_V1),
                                 ("lpips", models.VGG16_Weights.IMAGENET1K_V1))}
    return {"vgg19": "imagenet" if cached["vgg19"] else "random",
            "lpips": "pretrained" if cached["lpips"] else "random"}


def file_identity(path):
    """A file as the plan records it: its absolute path, size and modification time (a changed file is another)."""
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, int(stat.st_mtime)]


def settings_of(opt, device):
    return {"videos": [file_identity(path) if os.path.isfile(path) else [os.path.abspath(path)] for path in opt.videos],
            "mouth_region_size": opt.mouth_region_size, "init": opt.init and os.path.abspath(opt.init),
            "max_minutes": opt.max_minutes, "speech": opt.speech and os.path.abspath(opt.speech),
            "device": str(device), "schedule_scale": opt.schedule_scale}


def check_init(path):
    """The architecture (lab) of --init, a generator checkpoint trained on mel features; one line if it is not."""
    from models.checkpoint import load_checkpoint
    expected = "a generator checkpoint (netG_best.pth or netG_model_epoch_N.pth) trained on mel features"
    checkpoint = load_checkpoint(path, "--init", needs="net_g", expected=expected)
    feature = checkpoint.get("audio_feature")
    if feature != "mel":
        raise UserError(f"--init {path}: trained on {feature or 'DeepSpeech'} audio features, and this recipe "
                        f"prepares mel; pass a generator checkpoint trained on mel features")
    return checkpoint.get("lab") or "lab1"


def check_speech(path):
    if not os.path.isfile(path):
        raise UserError(f"--speech {path}: no such file; check the path")
    if not probe(path, "audio file")["has_audio"]:
        raise UserError(f"--speech {path}: no audio stream; pass speech to dub with (wav, mp3, or a video with sound)")
    return path


def make_plan(opt, settings, device, layout):
    """Check every input, cut the footage into parts on paper, size the schedule, measure, fit the budget."""
    infos = footage_checks.check_footage(opt.videos)
    lab = check_init(opt.init) if opt.init else "lab1"
    speech = check_speech(os.path.abspath(opt.speech)) if opt.speech else None
    parts = split_footage({os.path.abspath(path): info["frames"] for path, info in infos.items()})
    footage_checks.check_syncnet_footage(parts)
    held_out = [part for part in parts if part.held_out]
    training_frames = sum(part.stop - part.start for part in parts if not part.held_out)
    held_out_frames = sum(part.stop - part.start for part in held_out)
    if speech:
        foreign = len(held_out) * round(probe(speech)["duration"] * FPS)
    else:
        foreign = held_out_frames if len(held_out) == 1 else sum(
            held_out[(index + 1) % len(held_out)].stop - held_out[(index + 1) % len(held_out)].start
            for index in range(len(held_out)))
    footage = Footage(frames=training_frames + held_out_frames, training_frames=training_frames,
                      held_out_frames=held_out_frames,
                      validation_frames=sum(validation_frames(part.stop - part.start) for part in held_out),
                      megapixels=max(info["width"] * info["height"] for info in infos.values()) / 1e6,
                      foreign_frames=foreign)
    stages = plan_schedule(training_frames, opt.mouth_region_size, device.type, init=bool(opt.init),
                           scale=opt.schedule_scale)
    print(f"measuring training speed on {device} ...", flush=True)
    costs, how = measure_costs(device, stages, lab)
    plan = Plan(settings, parts, stages, costs, how, 1.0, footage, lab, opt.init and os.path.abspath(opt.init), speech)
    budget = opt.max_minutes and opt.max_minutes * 60
    plan.stages, plan.factor = fit_to_budget(stages, budget, lambda stages: estimate(plan, layout, stages))
    return plan


def estimate(plan, layout, stages=None):
    """Seconds the whole run is expected to take with `stages` (default the plan's): its steps' estimates."""
    return sum(step.seconds for step in build_steps(replace(plan, stages=stages or plan.stages), layout))


def load_or_make_plan(opt, layout, device):
    settings = settings_of(opt, device)
    path = layout.path("plan.json")
    if os.path.isfile(path):
        with open(path) as f:
            plan = Plan.from_json(json.load(f))
        if plan.settings == settings:
            print(f"continuing the run in {layout.root} (its plan: {path})")
            return plan
        flag = next(key for key, value in settings.items() if plan.settings.get(key) != value)
        differs = ("other videos, or the same changed since" if flag == "videos" else
                   f"{plan.settings.get(flag)} there, {settings[flag]} now")
        raise UserError(f"--result_path {opt.result_path}: holds a run with other settings (--{flag}: {differs}); "
                        f"repeat that run's command to continue it, or pass another --result_path")
    plan = make_plan(opt, settings, device, layout)
    write_atomically(path, lambda f: json.dump(plan.to_json(), f, indent=1), mode="w")
    return plan


def describe(plan, opt, layout):
    """What the run will do and how long it is expected to take, printed before it starts."""
    lines = ["footage:"] + [f"  {part.describe()}: {'held out' if part.held_out else 'trained on'}"
                            for part in plan.parts]
    lines.append(f"schedule for {plan.footage.training_frames / FPS:.1f} s of training footage on "
                 f"{plan.settings['device']}:")
    for stage in plan.stages:
        lines.append(f"  {stage.name}: {stage.epochs} epochs x {stage.per_epoch} iterations of batch {stage.batch} "
                     f"({stage.samples} samples), about {duration(training_seconds(stage, plan.costs, plan.footage))}")
    if plan.factor < 1:
        full = plan_schedule(plan.footage.training_frames, opt.mouth_region_size, plan.settings["device"].split(":")[0],
                             init=bool(plan.init), scale=opt.schedule_scale)
        lines.append(f"--max_minutes {opt.max_minutes:g}: the full schedule would take about "
                     f"{duration(estimate(plan, layout, full))} here; every stage's iterations scaled to "
                     f"{100 * plan.factor:.1f}% of it" if plan.factor > 0 else
                     f"--max_minutes {opt.max_minutes:g}: even one iteration per stage takes about "
                     f"{duration(estimate(plan, layout))} here; running that, the smallest schedule")
    lines.append(f"expected to take about {duration(estimate(plan, layout))} in all on {plan.settings['device']} "
                 f"(training speed measured here: {plan.costs_how}; the rest from per-frame rates of a 2-core CPU; "
                 f"it may be off by half)")
    print("\n".join(lines), flush=True)


def check_own_folder(layout, given):
    """Refuse a --result_path that holds other files than a run of this command: a run writes (and a rerun
    replaces) its own files throughout that folder."""
    if os.path.isfile(layout.path("plan.json")) or not os.path.isdir(layout.root):
        return
    others = sorted(name for name in os.listdir(layout.root) if not name.startswith("."))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UserError(f"--result_path {given}: holds other files ({shown}), not a run of train_person.py; pass a "
                        f"new or empty folder")


def main(argv=None):
    opt = build_parser().parse_args(argv)
    layout = Layout(os.path.abspath(opt.result_path))
    check_writable(layout.root, "--result_path")
    check_own_folder(layout, opt.result_path)
    device = choose_device(opt.device)
    with stopped_without(layout.path("plan.json")):  # the footage checks and the speed measurement take a while
        plan = load_or_make_plan(opt, layout, device)
    describe(plan, opt, layout)
    weights = pretrained_weights()
    device_flags = [f"--device={opt.device}"] if opt.device else []
    command_line = shlex.join(["python", "train_person.py", *(sys.argv[1:] if argv is None else argv)])
    recipe = None

    def write_report():
        text = report(plan, layout, command_line, recipe.times, weights)
        write_atomically(layout.report(), lambda f: f.write(text), mode="w")

    steps = build_steps(plan, layout, sys.executable, device_flags, weights, opt.workers, write_report)
    recipe = Recipe(steps, layout.path("steps.json"), ROOT)
    seconds = recipe.run()
    speech = foreign_speech(plan.parts, layout, plan.speech)
    total = sum(recipe.times.values())  # the steps' seconds, across the runs that continued one another
    before = f" ({duration(total)} in all, with the runs before)" if total > seconds + 1 else ""
    print(f"\ndone in {duration(seconds)}{before}: {layout.report()}, the model {layout.model()}, "
          f"{len(speech)} side-by-side video(s) and {layout.path('contact_sheet.png')}")


if __name__ == "__main__":
    run_command(main)
