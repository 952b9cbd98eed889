"""train_person.py: a personal model from one person's footage in one command.

Bad footage is refused before any work, with one line and nothing written; the footage is cut so the held-out end of
each video is never trained on; the schedule grows with the footage, follows the device and shrinks to fit
--max_minutes; the planned commands train on the training parts and validate and evaluate on the held-out ones; and
one real run on a few seconds of procedural footage at mouth 64 (slow) writes the report, the side-by-side video and
the contact sheet, and a rerun skips what is finished.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import pytest
import soundfile
import torch

from common.errors import UserError, run_command
from conftest import ROOT, write_dinet_json
from data.procedural_faces import FPS, FaceStyle, _write_wav, mouth_openings, render_talking_face, synthesize_speech
from data.sync_dataset import MIN_TRAINING_WINDOWS, video_timelines, windows_of
from data.training_json import load_training_json
from media.decoder import read_video_frames
from media.encoder import write_video
from media.convert import extract_audio
from media.ffmpeg import probe, run
from person.footage import (Part, check_video, cut_parts, enough_for_syncnet, part_path, split_footage,
                            syncnet_share)
from person.recipe import Layout, Plan, build_steps, check_prepared
from person.schedule import Footage, fit_to_budget, plan_schedule
from person.steps import Step, progress_line

import train_person


def talking_face(seed, seconds):
    """(frames, wav) of a procedural talking face, 256 x 256 at 25 fps, whose mouth follows its speech."""
    rng = np.random.default_rng([seed, 0])
    style = FaceStyle.draw(rng)
    wav, spreads = synthesize_speech(rng, seconds)
    frames, _ = render_talking_face(style, mouth_openings(wav), spreads)
    return frames, wav


def write_footage(path, frames, wav=None):
    with tempfile.TemporaryDirectory() as scratch:
        audio = None
        if wav is not None:
            audio = os.path.join(scratch, "speech.wav")
            _write_wav(audio, wav)
        write_video(path, frames, fps=FPS, audio_path=audio)
    return path


def refusal(argv):
    """The one line train_person.py stops with for `argv` (run as the command runs it)."""
    with pytest.raises(SystemExit) as stop:
        run_command(train_person.main, argv)
    message = str(stop.value.code)
    assert "\n" not in message and stop.value.code not in (0, None)
    return message


# ------------------------------------------------------------------ bad footage, refused before any work

@pytest.mark.parametrize("case", ["short", "silent", "faceless", "two_people", "on_its_side", "upside_down"])
def test_bad_footage_is_refused_with_one_line_and_nothing_written(case, tmp_path):
    frames, wav = talking_face(0, 5 if case == "short" else 9)
    if case == "faceless":  # the face in the first 2 s only, then the empty backdrop
        frames[2 * FPS:] = frames[0, :8, :8].mean(axis=(0, 1)).astype(np.uint8)
    if case == "two_people":
        frames = np.concatenate([frames, talking_face(1, 9)[0]], axis=2)
    if case in ("on_its_side", "upside_down"):  # a quarter (half) turn clockwise, as a phone held wrong records
        frames = np.ascontiguousarray(np.rot90(frames, -1 if case == "on_its_side" else 2, axes=(1, 2)))
    video = write_footage(str(tmp_path / f"{case}.mp4"), frames, None if case == "silent" else wav)
    result = tmp_path / "run"
    message = refusal(["--videos", video, "--result_path", str(result), "--mouth_region_size", "64",
                       "--device", "cpu"])
    expected = {"short": ["5.0 s of footage", "at least 8 s"], "silent": ["no audio track", "record with sound"],
                "faceless": ["a face in", "at least half the frames"],
                "two_people": ["several faces", "crop the video to yours"],
                "on_its_side": ["the face is on its side in", "-vf transpose=cclock "],
                "upside_down": ["the face is upside down in", "-vf hflip,vflip "]}[case]
    assert message.startswith(video) and all(piece in message for piece in expected), message
    assert not result.exists()


def test_a_video_given_twice_or_missing_is_named_and_two_videos_of_one_name_are_told_to_be_renamed(tmp_path):
    video = write_footage(str(tmp_path / "me.mp4"), np.zeros((10, 64, 64, 3), np.uint8))
    (tmp_path / "other").mkdir()
    namesake = write_footage(str(tmp_path / "other" / "me.mp4"), np.zeros((10, 64, 64, 3), np.uint8))
    result = str(tmp_path / "run")
    assert refusal(["--videos", video, os.path.relpath(video), "--result_path", result]) == \
        f"--videos: {os.path.relpath(video)} is given twice; give each video once"
    assert refusal(["--videos", video, namesake, "--result_path", result]) == \
        "--videos: two videos named me, and their parts are named after them; rename one"
    # a path that leads nowhere is named first, not after the seconds the videos before it take to check
    assert refusal(["--videos", video, str(tmp_path / "gone.mp4"), "--result_path", result]) == \
        f"--videos {tmp_path / 'gone.mp4'}: no such video; check the path"
    assert not os.path.exists(result)


def test_a_bad_init_checkpoint_is_named_before_any_work(tmp_path):
    video = write_footage(str(tmp_path / "me.mp4"), *talking_face(0, 9))
    not_a_checkpoint = tmp_path / "general.pth"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    message = refusal(["--videos", video, "--init", str(not_a_checkpoint), "--result_path", str(tmp_path / "run"),
                       "--device", "cpu"])
    assert message.startswith(f"--init {not_a_checkpoint}") and not (tmp_path / "run").exists()


def test_a_result_path_holding_other_files_is_refused_and_left_as_it_was(tmp_path):
    """The footage's own folder as --result_path: a run would write its data, training and videos among them."""
    mine = tmp_path / "mine"
    mine.mkdir()
    video = write_footage(str(mine / "me.mp4"), *talking_face(0, 9))
    (mine / "notes.txt").write_text("mine")
    before = sorted(os.listdir(mine))
    message = refusal(["--videos", video, "--result_path", str(mine), "--device", "cpu"])
    assert message == f"--result_path {mine}: holds other files (me.mp4, notes.txt), not a run of train_person.py; " \
                      f"pass a new or empty folder"
    assert sorted(os.listdir(mine)) == before


def test_refusal_as_a_process_is_one_line_without_traceback(tmp_path):
    frames, wav = talking_face(0, 5)
    video = write_footage(str(tmp_path / "short.mp4"), frames, wav)
    done = subprocess.run([sys.executable, "train_person.py", "--videos", video, "--result_path",
                           str(tmp_path / "run"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "at least 8 s" in done.stderr


# ------------------------------------------------------------------ the held-out cut

def test_the_last_tenth_of_each_video_is_held_out_and_the_rest_trained_on():
    parts = split_footage({"a.mp4": 1000, "b.mp4": 400})
    for video, frames, held in (("a.mp4", 1000, 100), ("b.mp4", 400, 64)):  # b: 10% is shorter than 2.6 s
        mine = [part for part in parts if part.video == video]
        assert [part.held_out for part in mine] == [False] * (len(mine) - 1) + [True]
        assert mine[0].start == 0 and mine[-1].stop == frames
        assert all(earlier.stop == later.start for earlier, later in zip(mine, mine[1:]))
        assert mine[-1].stop - mine[-1].start == held


def test_one_video_alone_leaves_the_syncnet_two_training_parts_once_it_holds_one_out():
    parts = split_footage({"me.mp4": 15 * FPS})
    trained, held, windows = syncnet_share(parts)
    assert sum(not part.held_out for part in parts) == 3 and len(trained) == 2 and len(held) == 1
    assert windows >= MIN_TRAINING_WINDOWS


def test_two_ten_second_videos_leave_the_syncnet_enough_whatever_their_names():
    """The SyncNet's draw of the part it holds out follows the parts' names: whichever it draws, the parts left
    must give it enough, so that renaming a video does not decide whether the footage is refused."""
    for first, second in [("late_audio2", "me_2"), ("rot_ok", "me_2")] + [(f"take{k}", "me") for k in range(10)]:
        parts = split_footage({f"{first}.mp4": 250, f"{second}.mp4": 252})
        assert enough_for_syncnet(parts), (first, second, [(part.name, part.stop - part.start) for part in parts])


def test_the_windows_foreseen_from_a_parts_frames_are_those_its_prepared_clips_give(tmp_path):
    for clips in (1, 5, 12):
        json_path = write_dinet_json(str(tmp_path / str(clips)), videos=1, clips=clips)
        timeline, = video_timelines(load_training_json(json_path, check_files=False), ["video0"])
        assert windows_of(9 * clips + 8) == len(timeline.windows())  # the frames short of a clip give none


def test_footage_that_would_leave_the_syncnet_too_little_is_refused_before_any_work(tmp_path):
    """A video alone of 12 s passes every check of a video, but once the SyncNet holds one of its three training
    parts out, the two left give it fewer windows than it learns from: refused now, not after the frame stages."""
    video = write_footage(str(tmp_path / "me.mp4"), *talking_face(0, 12))
    result = tmp_path / "run"
    message = refusal(["--videos", video, "--result_path", str(result), "--mouth_region_size", "64",
                       "--device", "cpu"])
    assert message.startswith("--videos: 12.0 s of footage in all leaves the SyncNet 2 training part(s)"), message
    assert "one video of at least 15 s" in message
    assert not result.exists()


def test_footage_whose_sound_outlasts_its_picture_is_measured_by_the_picture(tmp_path):
    """A phone whose sound ran on after the picture stopped (or started late): the footage is the picture's 5 s, not
    the file's 9 s, which would cut parts past the picture's end, where there is no frame to cut."""
    video = write_footage(str(tmp_path / "me.mp4"), talking_face(0, 5)[0], talking_face(0, 9)[1])
    assert probe(video)["duration"] >= 9
    with pytest.raises(UserError) as refused:
        check_video(video)
    assert str(refused.value).startswith(f"{video}: 5.0 s of footage"), refused.value


def test_prepared_parts_that_leave_the_syncnet_too_little_stop_the_run_before_the_frame_stages(tmp_path):
    """Faces lost to the detector can leave fewer windows than the footage promised: the check after preparing
    the training parts finds it, removes the JSON (a rerun prepares again) and names what to give."""
    for clips, enough in ((5, False), (12, True)):
        json_path = write_dinet_json(str(tmp_path / str(clips)), videos=3, clips=clips)
        parts = [Part("me.mp4", f"video{k}", 0, 9 * clips, False) for k in range(3)]
        if enough:
            check_prepared(json_path, parts)
            assert os.path.exists(json_path)
            continue
        with pytest.raises(UserError) as refused:
            check_prepared(json_path, parts)
        assert "too small to train a SyncNet on: 2 training video(s) with 42 windows" in str(refused.value)
        assert str(refused.value).endswith("give train_person.py more footage (--videos) and a new --result_path")
        assert not os.path.exists(json_path)


def test_a_training_part_without_a_usable_face_is_left_out_saying_so_unless_none_is_left(tmp_path, capsys):
    """A stretch where the face is away (or turned) for a whole training part gives it no clips: the run trains on
    the other parts, and says which it left out; with no part left it stops, the JSON removed."""
    json_path = write_dinet_json(str(tmp_path / "data"), videos=3, clips=12)
    parts = [Part("me.mp4", f"video{k}", 108 * k, 108 * (k + 1), False) for k in range(4)]  # video3: not prepared
    check_prepared(json_path, parts)
    assert capsys.readouterr().out == ("left out: me.mp4, its part me.mp4 13.0-17.3 s, where data_processing.py "
                                       "found no usable face (its report above says why)\n")
    assert os.path.exists(json_path)
    with pytest.raises(UserError, match="its part me.mp4 0.0-4.3 s could not be used"):
        check_prepared(json_path, [Part("me.mp4", "away", 0, 108, False)])
    assert not os.path.exists(json_path)


def test_cut_parts_hold_every_frame_of_the_video_exactly_once_with_the_sound_of_its_time(tmp_path):
    """The sound starts a second late, as a phone's may: each part keeps it at the time it plays, the first part
    silent for that second, so the lips are trained on the speech they made."""
    count, late = 90, 1.0
    colours = [((index * 37) % 256, (index * 11) % 256, index % 256) for index in range(count)]
    frames = np.array([np.full((64, 96, 3), colour, np.uint8) for colour in colours])
    silent = write_footage(str(tmp_path / "silent.mp4"), frames)
    tone = str(tmp_path / "tone.wav")
    _write_wav(tone, 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(count / FPS * 16000)) / 16000))
    video = str(tmp_path / "colours.mp4")
    run(["-i", silent, "-itsoffset", str(late), "-i", tone, "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a",
         "aac", video], video, video)
    parts = [Part(video, "colours_train0", 0, 40, False), Part(video, "colours_train1", 40, 71, False),
             Part(video, "colours_held_out", 71, 90, True)]
    cut_parts(parts, str(tmp_path / "footage"))
    seen = []
    for part in parts:
        path = part_path(str(tmp_path / "footage"), part)
        for frame in read_video_frames(path):  # which source frame it is: the nearest colour
            seen.append(int(np.argmin(np.abs(np.array(colours) - frame.reshape(-1, 3).mean(0)).sum(1))))
        extract_audio(path, str(tmp_path / "heard.wav"))
        heard, rate = soundfile.read(str(tmp_path / "heard.wav"))
        loud = np.abs(heard[:len(heard) // (rate // FPS) * (rate // FPS)]).reshape(-1, rate // FPS).max(axis=1) > 0.1
        assert abs(len(loud) - (part.stop - part.start)) <= 1, part
        quiet = max(0, round(late * FPS) - part.start)  # the frames before the sound starts (a frame spared)
        assert not loud[:max(0, quiet - 1)].any() and loud[quiet + 1:-1].all(), (part, loud.astype(int))
    assert seen == list(range(count))


# ------------------------------------------------------------------ the schedule

def test_schedule_grows_with_the_footage_and_holds_the_stages_the_mouth_size_needs():
    short, long = plan_schedule(500, 128, "cpu"), plan_schedule(1000, 128, "cpu")
    assert [stage.name for stage in short] == ["frame_64", "frame_128", "syncnet_128", "clip_128"]
    assert all(abs(b.iterations - 2 * a.iterations) <= 1 for a, b in zip(short, long))
    assert [stage.name for stage in plan_schedule(500, 256, "cpu")][:3] == ["frame_64", "frame_128", "frame_256"]
    assert [stage.name for stage in plan_schedule(500, 256, "cpu", init=True)] == ["frame_256", "syncnet_256",
                                                                                  "clip_256"]


def test_a_gpu_trains_in_larger_batches_on_as_many_samples():
    cpu, gpu = plan_schedule(1000, 128, "cpu"), plan_schedule(1000, 128, "cuda")
    for on_cpu, on_gpu in zip(cpu, gpu):
        assert on_gpu.batch > on_cpu.batch and on_gpu.iterations < on_cpu.iterations
        assert abs(on_gpu.iterations * on_gpu.batch - on_cpu.iterations * on_cpu.batch) <= on_gpu.batch


def test_max_minutes_scales_every_stage_by_one_factor_to_fit():
    stages = plan_schedule(1000, 128, "cpu")
    cost = {"frame": 1.0, "syncnet": 0.1, "clip": 5.0}

    def estimate(planned):  # a minute of fixed work and each sample's cost
        return 60 + sum(stage.iterations * stage.batch * cost[stage.kind] for stage in planned)
    full = estimate(stages)
    fitted, factor = fit_to_budget(stages, full / 4, estimate)
    assert 0 < factor < 1 and full / 4 * 0.98 <= estimate(fitted) <= full / 4
    assert all(abs(new.iterations / old.iterations - factor) < 0.01 for old, new in zip(stages, fitted))
    assert fit_to_budget(stages, full * 2, estimate) == (stages, 1.0)
    smallest, factor = fit_to_budget(stages, 30, estimate)  # below the fixed minute: one iteration a stage
    assert factor == 0 and all(stage.iterations == 1 for stage in smallest)


def test_the_time_left_follows_how_long_the_steps_that_ran_took():
    steps = [Step(f"s{index}", f"step {index}", [], 600) for index in range(4)]
    on_time = progress_line(2, steps, 1200, (1200, 1200))
    twice_as_long = progress_line(2, steps, 2400, (2400, 1200))
    assert "about 20 min left" in on_time and "about 40 min left" in twice_as_long
    assert "step 3/4" in on_time and "[" + "#" * 12 in on_time


# ------------------------------------------------------------------ the planned commands

def planned_commands(tmp_path, mouth=128, videos=("a.mp4", "b.mp4"), init=None):
    parts = split_footage({os.path.join(str(tmp_path), name): 500 for name in videos})
    stages = plan_schedule(900, mouth, "cpu", init=bool(init))
    costs = {(stage.kind, stage.mouth): 1.0 for stage in stages} | {("frame", mouth): 1.0}
    footage = Footage(frames=1000, training_frames=900, held_out_frames=100, validation_frames=20, megapixels=2.0,
                      foreign_frames=100)
    plan = Plan({}, parts, stages, costs, "", 1.0, footage, "lab1", init, None)
    layout = Layout(str(tmp_path / "run"))
    steps = build_steps(plan, layout, "python", [], {"vgg19": "random", "lpips": "random"}, 2, lambda: None)
    return {step.name: dict(flag.split("=", 1) if flag.startswith("--") and "=" in flag else (flag, True)
                            for flag in step.command) if step.command else None for step in steps}, layout, parts


def test_planned_commands_train_on_the_training_parts_and_validate_on_the_held_out_ones(tmp_path):
    commands, layout, parts = planned_commands(tmp_path)
    train_json, held_json = layout.training_json("train"), layout.training_json("held_out")
    assert commands["prepare_train"]["--source_video_dir"] == layout.path("footage", "train")
    assert commands["prepare_held_out"]["--source_video_dir"] == layout.path("footage", "held_out")
    for name in ("frame_64", "frame_128", "clip_128"):
        assert commands[name]["--train_data"] == train_json and commands[name]["--val_data"] == held_json
        assert commands[name]["--resume"] == "auto"
    assert commands["syncnet_128"]["--train_data"] == train_json and "--val_data" not in commands["syncnet_128"]
    assert commands["frame_128"]["--coarse_model_path"] == os.path.join(layout.path("training", "frame_64"),
                                                                       "netG_best.pth")
    assert commands["clip_128"]["--pretrained_frame_DINet_path"] == os.path.join(layout.path("training", "frame_128"),
                                                                                 "netG_best.pth")
    held_out_videos = [part_path(layout.path("footage"), part) for part in parts if part.held_out]
    assert all(path in commands["evaluate"] for path in held_out_videos)
    assert commands["evaluate"]["--checkpoint"] == layout.model()  # the chosen of the frame and clip stages' best
    # each held-out part is dubbed with the other video's speech, never its own
    dubbed = {command["--source_video_path"]: command["--driving_audio_path"] for name, command in commands.items()
              if name.startswith("dub_")}
    assert dubbed == dict(zip(held_out_videos, held_out_videos[::-1]))


@pytest.mark.parametrize("frame_score, clip_score, chosen", [(0.05, 0.08, "frame"), (0.05, 0.04, "clip")])
def test_the_model_is_the_clip_stages_best_unless_the_frame_stage_scored_better(tmp_path, frame_score, clip_score,
                                                                                  chosen):
    from models import DINet
    from models.checkpoint import atomic_save, load_checkpoint
    from person.recipe import choose_model
    paths = {}
    for name, score in (("frame", frame_score), ("clip", clip_score)):
        paths[name] = str(tmp_path / f"{name}.pth")
        torch.manual_seed(len(name))
        atomic_save({"state_dict": {"net_g": DINet(3, 15, 80).state_dict(), "net_dI": {"w": torch.ones(2)}},
                     "optimizer": {"net_g": {"state": {}}},
                     "validation_best": {"metric": "lmd_mouth", "value": score, "epoch": 3},
                     "options": {"lamb_perception": 10.0, "seed": len(name)}}, paths[name])
    model = str(tmp_path / "model.pth")
    choose_model(paths["frame"], paths["clip"], model)
    kept, original = load_checkpoint(model), load_checkpoint(paths[chosen])
    assert all(torch.equal(kept["state_dict"]["net_g"][key], value)
               for key, value in original["state_dict"]["net_g"].items())
    assert list(kept["state_dict"]) == ["net_g"] and "optimizer" not in kept  # the generator alone
    assert kept["validation_best"] == original["validation_best"] and kept["options"] == original["options"]
    with open(tmp_path / "model.json") as file:
        assert json.load(file)["chosen"] == chosen


def test_from_init_one_frame_stage_fine_tunes_it(tmp_path):
    commands, _, _ = planned_commands(tmp_path, mouth=256, init="/models/general.pth")
    frames = [name for name in commands if name.startswith("frame_")]
    assert frames == ["frame_256"] and commands["frame_256"]["--coarse_model_path"] == "/models/general.pth"


# ------------------------------------------------------------------ one real run (minutes on a 2-core CPU)

@pytest.fixture(scope="module")
def person_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("person")
    video = write_footage(str(folder / "me.mp4"), *talking_face(3, 15))
    argv = ["--videos", video, "--result_path", str(folder / "run"), "--mouth_region_size", "64",
            "--schedule_scale", "0.00001", "--device", "cpu", "--workers", "1"]
    done = subprocess.run([sys.executable, "train_person.py", *argv], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder / "run", argv, done.stdout


@pytest.mark.slow
def test_a_run_writes_the_report_the_side_by_side_video_and_the_contact_sheet(person_run):
    run, argv, output = person_run
    assert f"$ {sys.executable} data_processing.py" in output and "train_DINet_clip.py" in output
    report = (run / "report.md").read_text()
    assert "| me_held_out.mp4 | dubbed" in report and "reference copy" in report and "lmd_mouth" in report
    assert "me_held_out_facial_dubbing_add_audio.mp4" in report  # the foreign-speech sync table
    side_by_side = probe(str(run / "side_by_side_me.mp4"))
    assert side_by_side["has_audio"] and side_by_side["width"] == 2 * side_by_side["height"]
    sheet = cv2.imread(str(run / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] > 4 * sheet.shape[0]


@pytest.mark.slow
def test_a_rerun_skips_finished_steps_and_redoes_an_unfinished_one(person_run):
    run, argv, _ = person_run
    final = run / "training" / "clip_64" / "netG_model_epoch_1.pth"
    final.unlink()
    done = subprocess.run([sys.executable, "train_person.py", *argv], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ran = [line for line in done.stdout.splitlines() if line.startswith("$ ")]
    assert len(ran) == 1 and "train_DINet_clip.py" in ran[0] and "--resume=auto" in shlex.split(ran[0])
    assert final.exists() and done.stdout.count("done already") == done.stdout.count("] step ") - 1


@pytest.mark.slow
def test_the_same_result_path_with_other_settings_is_refused(person_run):
    run, argv, _ = person_run
    message = refusal([*argv[:argv.index("--mouth_region_size") + 1], "128",
                       *argv[argv.index("--mouth_region_size") + 2:]])
    assert "--mouth_region_size: 64 there, 128 now" in message and "another --result_path" in message



STOPPING_RECIPE = """
import os, signal, sys, time
from common.errors import run_command
from person.steps import Recipe, Step
folder = sys.argv[1]
# a training stage that writes its checkpoint and ends well on SIGTERM, as one does when the signal comes at its end
stage = ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: None); "
         "pathlib.Path(sys.argv[1], 'started').touch(); time.sleep(3); pathlib.Path(sys.argv[1], 'stage').touch()")
steps = [Step("stage", "the stage", [os.path.join(folder, "stage")], 1, command=[sys.executable, "-c", stage, folder]),
         Step("next", "the next stage", [os.path.join(folder, "next")], 1,
              action=lambda: open(os.path.join(folder, "next"), "w").close())]
run_command(Recipe(steps, os.path.join(folder, "times.json"), folder).run)
"""


def test_a_signal_that_comes_as_a_step_ends_well_still_stops_the_run_after_it(tmp_path):
    """SIGTERM (or Ctrl-C) reaching the run while a step's command finishes its work: the step is done, and the run
    stops there with the line saying how to go on, instead of going on to the next step."""
    process = subprocess.Popen([sys.executable, "-c", STOPPING_RECIPE, str(tmp_path)], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while not (tmp_path / "started").exists():
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.02)
    process.terminate()
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + 15, output
    assert "stopped after the stage: run the same command again to continue from there" in output
    assert (tmp_path / "stage").exists() and not (tmp_path / "next").exists()


def test_a_run_started_with_nohup_goes_on_through_its_steps_when_its_terminal_closes(tmp_path):
    """nohup starts the run with SIGHUP ignored: it stays ignored, neither stopping the run nor passed on to a step."""
    process = subprocess.Popen([sys.executable, "-c", STOPPING_RECIPE, str(tmp_path)], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # as nohup does
    while not (tmp_path / "started").exists():
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.02)
    process.send_signal(signal.SIGHUP)  # the terminal closed
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert (tmp_path / "stage").exists() and (tmp_path / "next").exists()
