"""The steps of a personal model, from a plan (the footage's parts and the stages' schedule) to report.md: the
repository's commands with every flag the recipe relies on spelled out, and the work done between them.

    cut the footage            footage/train/<video>_train<k>.mp4, footage/held_out/<video>_held_out.mp4
    prepare both               data_processing.py --all, into data/train and data/held_out
    frame stages               train_DINet_frame.py 64 -> 128 -> 256 (--coarse2fine from the previous netG_best.pth,
                               or from --init), validated on the held-out parts (--val_data)
    SyncNet                    train_syncnet.py on the training parts only
    clip stage                 train_DINet_clip.py from the last frame stage's netG_best.pth
    the model                  model.pth: the generator of the clip stage's netG_best.pth, or of the last frame
                               stage's where that scored better held out (model.json says which)
    evaluate                   evaluate.py --protocol self_reconstruction on the held-out parts (their own audio)
    foreign speech             inference.py on each held-out part with another's speech, evaluate.py scores its sync
    look                       side_by_side_<video>.mp4, contact_sheet.png, report.md

Every training command takes --resume auto, so a step interrupted halfway continues where it stopped.
"""
import glob
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

from common.errors import UserError
from common.files import atomic_output, write_atomically
from common.geometry import NUM_REFERENCES
from config.config import VALIDATION_METRICS
from data.sync_dataset import check_enough_data, split_videos, video_timelines
from data.training_json import load_training_json

from . import results
from .footage import MIN_FACE_SHARE, SYNCNET_HELD_OUT, SYNCNET_SEED, Part, cut_parts, part_path
from .schedule import Footage, Stage, media_seconds, training_seconds
from .steps import Step

# train_syncnet.py's defaults are the recipe; a fifth of the parts is held out to measure it, as one person's
# footage gives few videos (the footage was checked to leave it enough with this draw)
SYNCNET = [f"--held_out_fraction={SYNCNET_HELD_OUT}", f"--seed={SYNCNET_SEED}"]
SAVE_EVERY = 100  # iterations between the checkpoints a resumed stage continues from
# what model.pth keeps of a training checkpoint beside the generator's weights: what dubbing and --init read of it,
# and the flags that made it
MODEL_KEYS = ("mouth_region_size", "audio_feature", "generator_config", "lab", "epoch", "validation_best",
              "validation_split", "audio_window", "options")


@dataclass
class Plan:
    """What a run was asked (settings: flags and the videos' sizes and times) and what it decided: the parts, the
    stages, the measured seconds per training sample and how they were had, the share of the schedule the budget
    left, the footage's figures, the architecture (--init's), --init and --speech. Kept as plan.json, so that a
    rerun trains with the same schedule whatever a new measurement would say."""
    settings: dict
    parts: list
    stages: list
    costs: dict
    costs_how: str
    factor: float
    footage: Footage
    lab: str
    init: Optional[str]
    speech: Optional[str]

    def to_json(self):
        return {**asdict(self), "costs": {f"{kind} {mouth}": value for (kind, mouth), value in self.costs.items()}}

    @classmethod
    def from_json(cls, data):
        costs = {(key.split()[0], int(key.split()[1])): value for key, value in data["costs"].items()}
        return cls(**{**data, "parts": [Part(**part) for part in data["parts"]],
                      "stages": [Stage(**stage) for stage in data["stages"]], "costs": costs,
                      "footage": Footage(**data["footage"])})


@dataclass(frozen=True)
class Layout:
    """Where a run's files go, under --result_path."""
    root: str

    def path(self, *names):
        return os.path.join(self.root, *names)

    def data(self, kind):
        return self.path("data", kind)

    def training_json(self, kind):
        return self.path("data", kind, "training_json.json")

    def run(self, stage):
        return self.path("training", stage.name)

    def best(self, stage):
        return os.path.join(self.run(stage), "netG_best.pth")

    def model(self):
        return self.path("model.pth")

    def last(self, stage):
        return os.path.join(self.run(stage), f"netG_model_epoch_{stage.epochs}.pth")

    def landmarks(self, part):
        return self.path("data", "held_out", "landmarks", part.name + ".csv")

    def dubbed_own(self, part):
        return self.path("evaluation", "videos", part.name + "_dubbed.mp4")

    def dubbed_foreign(self, part):
        return self.path("dubbed", part.name + "_facial_dubbing_add_audio.mp4")

    def side_by_side(self, part):
        return self.path(f"side_by_side_{part.name.removesuffix('_held_out')}.mp4")

    def report(self):
        return self.path("report.md")


def foreign_speech(parts, layout, speech=None):
    """{held-out part name: the speech it is dubbed with}: --speech, else the next video's held-out part (its speech
    is unseen too), else with one video a procedural speech clip (speech/procedural_speech.wav)."""
    held_out = [part for part in parts if part.held_out]
    if speech:
        return {part.name: speech for part in held_out}
    if len(held_out) == 1:
        return {held_out[0].name: layout.path("speech", "procedural_speech.wav")}
    return {part.name: part_path(layout.path("footage"), held_out[(index + 1) % len(held_out)])
            for index, part in enumerate(held_out)}


def prepare_command(python, layout, kind, workers):
    data = layout.data(kind)
    return [python, "data_processing.py", "--all", f"--source_video_dir={layout.path('footage', kind)}",
            f"--split_video_dir={data}/split_video_25fps", f"--video_frame_dir={data}/frames",
            f"--audio_dir={data}/audio", "--audio_feature=mel", f"--audio_feature_dir={data}/mel",
            f"--landmark_dir={data}/landmarks", f"--openface_landmark_dir={data}/landmarks_openface",
            f"--crop_face_dir={data}/crops", f"--json_path={layout.training_json(kind)}",
            f"--min_face_fraction={MIN_FACE_SHARE}", f"--workers={workers}"]


def check_prepared(json_path, parts):
    """Each held-out part made it into the prepared data with the clips validation needs, a training part at least
    (one without a usable face, the face away or turned for its length, is left out with a line saying so), and the
    training parts hold what the SyncNet needs once it holds its share out (faces lost to the detector can leave it
    less than the footage promised): else the JSON is removed (so a rerun prepares again) and one line says why,
    now rather than after the frame stages."""
    training_set = load_training_json(json_path, check_files=False)
    clips = {part.name: len(training_set.videos.get(part.name, [])) for part in parts}
    unused = [part for part in parts if not part.held_out and not clips[part.name]]
    short = [part for part in parts if part.held_out and clips[part.name] <= NUM_REFERENCES]
    if short or (unused and len(unused) == sum(not part.held_out for part in parts)):  # nothing to validate, or train
        part = (short or unused)[0]
        os.remove(json_path)
        why = ("could not be used (data_processing.py's report above says why)" if clips[part.name] == 0 else
               f"gave {clips[part.name]} usable clips, and validation needs {NUM_REFERENCES + 1}")
        raise UserError(f"{part.video}: its part {part.describe()} {why}; use footage with your whole face in view "
                        f"throughout")
    for part in unused:
        print(f"left out: {part.video}, its part {part.describe()}, where data_processing.py found no usable face "
              f"(its report above says why)", flush=True)
    if not any(part.held_out for part in parts):
        trained, held = split_videos(training_set, SYNCNET_HELD_OUT, SYNCNET_SEED)
        try:
            check_enough_data(json_path, video_timelines(training_set, trained), len(held),
                              fix="give train_person.py more footage (--videos) and a new --result_path")
        except UserError:
            os.remove(json_path)
            raise


def schedule_flags(stage, items_per_augment):
    """The flags of DINet's schedule for a stage: its epochs (half at a fixed learning rate, half decaying), its
    iterations per epoch, enough samples per epoch for them, a checkpoint at the end and every SAVE_EVERY."""
    augment = max(1, math.ceil(stage.per_epoch * stage.batch / items_per_augment))
    fixed = math.ceil(stage.epochs / 2)
    return [f"--batch_size={stage.batch}", f"--augment_num={augment}", f"--non_decay={fixed}",
            f"--decay={stage.epochs - fixed}", f"--iterations_per_epoch={stage.per_epoch}",
            f"--checkpoint={stage.epochs}", f"--save_every_steps={min(stage.per_epoch, SAVE_EVERY)}",
            "--resume=auto"]


def remove_step_checkpoints(folder):
    """Once a stage is finished, the checkpoints kept for resuming it are not needed (hundreds of MB each)."""
    def remove():
        for path in glob.glob(os.path.join(glob.escape(folder), "*_iter_*.pth")):
            os.remove(path)
    return remove


def build_steps(plan, layout, python="python", device_flags=(), weights=None, workers=1, write_report=None):
    """The steps of `plan`, each with its estimated seconds; `weights`: the VGG19 and LPIPS weights flags' values
    (default random); `write_report`: the action of the last step."""
    weights = weights or {"vgg19": "random", "lpips": "random"}
    device_flags = list(device_flags)
    parts, stages, costs, footage = plan.parts, plan.stages, plan.costs, plan.footage
    training = [part for part in parts if not part.held_out]
    held_out = [part for part in parts if part.held_out]
    held_paths = [part_path(layout.path("footage"), part) for part in held_out]
    data = [f"--train_data={layout.training_json('train')}"]
    validated = data + [f"--val_data={layout.training_json('held_out')}",
                        f"--val_lpips_weights={weights['lpips']}", f"--vgg19_weights={weights['vgg19']}"]
    steps = [Step("cut", "cut the footage into training and held-out parts",
                  [part_path(layout.path("footage"), part) for part in parts],
                  media_seconds("cut", footage.frames, footage),
                  action=lambda: cut_parts(parts, layout.path("footage")))]
    for kind, mine, frames in (("train", training, footage.training_frames),
                               ("held_out", held_out, footage.held_out_frames)):
        json_path = layout.training_json(kind)
        steps.append(Step(f"prepare_{kind}", f"prepare the {kind.replace('_', '-')} parts", [json_path],
                          media_seconds("prepare", frames, footage),
                          command=prepare_command(python, layout, kind, min(workers, len(mine))),
                          after=lambda json_path=json_path, mine=mine: check_prepared(json_path, mine)))

    previous = plan.init
    frame_stages = [stage for stage in stages if stage.kind == "frame"]
    for stage in frame_stages:
        command = [python, "train_DINet_frame.py", *validated, f"--mouth_region_size={stage.mouth}",
                   *schedule_flags(stage, len(training)), f"--lab={plan.lab}", f"--result_path={layout.run(stage)}"]
        if previous:
            command += ["--coarse2fine", f"--coarse_model_path={previous}"]
        steps.append(training_step(stage, f"frame stage, mouth {stage.mouth}", command + device_flags, layout,
                                   costs, footage))
        previous = layout.best(stage)

    syncnet, clip = (next(stage for stage in stages if stage.kind == kind) for kind in ("syncnet", "clip"))
    syncnet_path = layout.path("syncnet.pth")
    # a SyncNet sample is a window about a frame; held-out parts of it are drawn out of the count, so ask for more
    command = [python, "train_syncnet.py", *data, f"--mouth_region_size={syncnet.mouth}", *SYNCNET,
               *schedule_flags(syncnet, footage.training_frames / 2), f"--result_path={layout.run(syncnet)}",
               f"--syncnet_path={syncnet_path}"]
    steps.append(Step(syncnet.name, f"SyncNet for mouth {syncnet.mouth} (training parts only)", [syncnet_path],
                      training_seconds(syncnet, costs, footage), command=command + device_flags,
                      after=remove_step_checkpoints(layout.run(syncnet))))
    command = [python, "train_DINet_clip.py", *validated, f"--mouth_region_size={clip.mouth}",
               *schedule_flags(clip, len(training)), f"--pretrained_frame_DINet_path={previous}",
               f"--pretrained_syncnet_path={syncnet_path}", f"--result_path={layout.run(clip)}"]
    steps.append(training_step(clip, f"clip stage, mouth {clip.mouth}", command + device_flags, layout, costs,
                               footage))
    model = layout.model()
    steps.append(Step("choose", "the model: the clip stage's best, unless the frame stage's scored better held out",
                      [model], 1, action=lambda: choose_model(layout.best(frame_stages[-1]), layout.best(clip), model)))

    evaluation = layout.path("evaluation")
    steps.append(Step("evaluate", "evaluate.py on the held-out parts, dubbed with their own audio",
                      [os.path.join(evaluation, "self_reconstruction.md")],
                      media_seconds("evaluate", footage.held_out_frames, footage, costs, clip.mouth),
                      command=[python, "evaluate.py", "--protocol=self_reconstruction", "--videos", *held_paths,
                               f"--checkpoint={model}", f"--syncnet_path={syncnet_path}",
                               f"--lpips_weights={weights['lpips']}", f"--out_dir={evaluation}"] + device_flags))

    speech = foreign_speech(parts, layout, plan.speech)
    procedural = layout.path("speech", "procedural_speech.wav")
    if procedural in speech.values():
        steps.append(Step("speech", "write a procedural speech clip to dub with", [procedural], 1,
                          action=lambda: write_procedural_speech(procedural, held_out[0].seconds)))
    share = footage.foreign_frames / len(held_out)
    for part, path in zip(held_out, held_paths):
        steps.append(Step(f"dub_{part.name}", f"dub {part.name} with {os.path.basename(speech[part.name])}",
                          [layout.dubbed_foreign(part)], media_seconds("dub", share, footage, costs, clip.mouth),
                          command=[python, "inference.py", f"--source_video_path={path}",
                                   f"--driving_audio_path={speech[part.name]}", f"--pretrained_clip_DINet_path={model}",
                                   f"--res_video_dir={layout.path('dubbed')}"] + device_flags))
    foreign_table = os.path.join(evaluation, "foreign_speech.csv")
    steps.append(Step("score_foreign", "evaluate.py: lip sync of the held-out parts dubbed with foreign speech",
                      [foreign_table.replace(".csv", ".md")],
                      media_seconds("score", footage.foreign_frames, footage),
                      command=[python, "evaluate.py", "--videos", *(layout.dubbed_foreign(part) for part in held_out),
                               f"--syncnet_path={syncnet_path}", f"--csv={foreign_table}"] + device_flags))
    for part, path in zip(held_out, held_paths):
        steps.append(Step(f"side_by_side_{part.name}", f"side-by-side video of {part.name}",
                          [layout.side_by_side(part)], media_seconds("cut", share, footage),
                          action=lambda path=path, part=part: results.side_by_side(
                              path, layout.dubbed_foreign(part), layout.side_by_side(part))))
    sheet = layout.path("contact_sheet.png")
    steps.append(Step("contact_sheet", "contact sheet of held-out mouths", [sheet], 5,
                      action=lambda: results.contact_sheet(
                          [results.mouth_row(path, layout.dubbed_own(part), layout.landmarks(part))
                           for part, path in zip(held_out, held_paths)], sheet)))
    steps.append(Step("report", "report.md", [layout.report()], 1, action=write_report))
    return steps


def choose_model(frame_best, clip_best, path):
    """Write to `path` the generator of the clip stage's best checkpoint, or the last frame stage's where it scored a
    better held-out validation (a short clip stage, its SyncNet barely trained, can leave the generator worse than it
    found it); the choice and both scores go to path's .json beside it."""
    from models.checkpoint import atomic_save, load_checkpoint
    scores = {name: load_checkpoint(best, "--result_path", needs="net_g").get("validation_best")
              for name, best in (("frame", frame_best), ("clip", clip_best))}
    frame, clip = scores["frame"], scores["clip"]
    chosen = "clip"
    if frame and clip and frame["metric"] == clip["metric"]:
        higher_is_better = VALIDATION_METRICS[frame["metric"]]
        if (frame["value"] > clip["value"]) if higher_is_better else (frame["value"] < clip["value"]):
            chosen = "frame"
    source = frame_best if chosen == "frame" else clip_best
    write_atomically(path.removesuffix(".pth") + ".json", lambda file: json.dump(
        {"chosen": chosen, "checkpoint": source, "validation_best": scores}, file, indent=1), mode="w")
    # the generator and what dubbing reads of it: no discriminators, optimizer or random state (a fifth of the size)
    checkpoint = load_checkpoint(source, "--result_path", needs="net_g")
    atomic_save({"state_dict": {"net_g": checkpoint["state_dict"]["net_g"]},
                 **{key: checkpoint[key] for key in MODEL_KEYS if key in checkpoint}}, path)


def training_step(stage, label, command, layout, costs, footage):
    return Step(stage.name, label, [layout.last(stage)], training_seconds(stage, costs, footage), command=command,
                after=remove_step_checkpoints(layout.run(stage)))


def write_procedural_speech(path, seconds, seed=0):
    """The demo set's speech-like sound (data/procedural_faces.py) as a 16 kHz wav."""
    import numpy as np
    from scipy.io import wavfile

    from data.procedural_faces import SAMPLE_RATE, synthesize_speech
    wav, _ = synthesize_speech(np.random.default_rng(seed), seconds)
    with atomic_output(path) as partial:
        wavfile.write(partial, SAMPLE_RATE, (wav * 32767).astype(np.int16))


def model_origin(layout):
    """How the model was chosen, from model.json."""
    with open(layout.model().removesuffix(".pth") + ".json") as file:
        choice = json.load(file)
    scores = choice["validation_best"]
    said = {name: f"{score['metric']} {score['value']:.4f} at epoch {score['epoch']}" if score else "not validated"
            for name, score in scores.items()}
    if choice["chosen"] == "frame":
        return (f"the frame stage's best epoch (held out: {said['frame']}), since the clip stage left it worse "
                f"({said['clip']})")
    return f"the clip stage's best epoch (held out: {said['clip']}; the frame stage's: {said['frame']})"


def report(plan, layout, command_line, times, weights):
    """report.md: what the run did and measured, for a person to read."""
    held_out = [part for part in plan.parts if part.held_out]
    speech = foreign_speech(plan.parts, layout, plan.speech)
    footage = [f"- {part.describe()}: {'held out' if part.held_out else 'trained on'} ({part.name})"
               for part in plan.parts]
    stages = [f"| {stage.name} | {stage.batch} | {stage.epochs} x {stage.per_epoch} | {stage.samples} | "
              f"{times.get(stage.name, float('nan')) / 60:.1f} |" for stage in plan.stages]
    steps = [f"| {name} | {seconds / 60:.1f} |" for name, seconds in times.items()]
    budget = ("the full schedule" if plan.factor >= 1 else
              f"--max_minutes {plan.settings['max_minutes']}: the schedule scaled to {100 * plan.factor:.1f}% of the "
              f"full one" if plan.factor > 0 else
              f"--max_minutes {plan.settings['max_minutes']}: one iteration per stage, the smallest schedule (even "
              f"that takes longer)")
    lines = [
        f"# Personal model: {layout.root}", "",
        f"Command: `{command_line}`", "",
        f"The model: `{layout.model()}`, {model_origin(layout)} (dub with it: "
        f"`python inference.py --pretrained_clip_DINet_path MODEL --source_video_path ... --driving_audio_path ...`). "
        f"Every figure below comes from the held-out parts, the end of each video, never trained on (neither by "
        f"the model nor by the SyncNet that scores lip sync).", "",
        "## Held-out parts dubbed with their own audio (evaluate.py --protocol self_reconstruction)", "",
        results.table_of(layout.path("evaluation", "self_reconstruction.md")), "",
        "## Held-out parts dubbed with foreign speech (lip sync by this run's SyncNet)", "",
        *(f"- {part.name}: {os.path.basename(speech[part.name])}" for part in held_out), "",
        results.table_of(layout.path("evaluation", "foreign_speech.md")), "",
        "To look at: " + ", ".join(f"`{os.path.basename(layout.side_by_side(part))}`" for part in held_out)
        + " (source | dubbed with foreign speech, with that speech), `contact_sheet.png` (held-out mouths, real | "
          "generated with their own audio).", "",
        "## Settings", "",
        f"- device: {plan.settings['device']}; mouth {plan.settings['mouth_region_size']}; architecture {plan.lab}"
        + (f", from --init {plan.init}" if plan.init else ", from scratch"),
        f"- VGG19 perception weights: {weights['vgg19']}; LPIPS trunk: {weights['lpips']}"
        + (" (random: not comparable with other runs)" if "random" in weights.values() else ""),
        f"- schedule: {budget}; seconds per training sample from {plan.costs_how}",
        f"- footage: {plan.footage.training_frames / 25:.1f} s trained on, {plan.footage.held_out_frames / 25:.1f} s "
        f"held out", *footage, "",
        "| stage | batch | epochs x iterations | samples | minutes |", "|---|---|---|---|---|", *stages, "",
        "## Time per step", "", "| step | minutes |", "|---|---|", *steps,
        f"| in all | {sum(times.values()) / 60:.1f} |", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    return "\n".join(lines)

