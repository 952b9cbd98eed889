"""Bad input to every user-facing command: one line that names the file or flag and the fix, a non-zero exit,
no traceback, and no output that looks complete.

Each case runs the script in this process (runpy, as `python SCRIPT ARGS` would, from the repository; data
preparation from a scratch folder) and expects SystemExit: its message (or, for argparse's exit 2, the last
line it printed) must be one line holding every expected piece. Any other exception is a traceback: the case
fails. Inputs are tiny and every case stops before any training step. A few cases run as real processes.
Argument strings are split on spaces, then each piece is filled from the `assets` fixture ({name}) and the
case's own scratch folder ({tmp}).
"""
import glob
import json
import os
import runpy
import shutil
import subprocess
import sys
from types import SimpleNamespace

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from common.errors import UserError
from conftest import ROOT, write_dinet_json
from data.openface_csv import write_openface_csv
from media.ffmpeg import probe
from models.checkpoint import atomic_save, load_checkpoint
from models.syncnet import SyncNetConfig, build_syncnet
from test_clip_training import clip_assets  # noqa: F401  (fixture: 29-d data, a lab2 frame checkpoint, a SyncNet)
from test_inference import checkpoint  # noqa: F401  (fixture: an untrained mel generator at mouth 64)

FRAME = ("--train_data {tiny_json} --result_path {tmp}/run --device cpu --num_workers 0 --vgg19_weights random "
         "--augment_num 2 --batch_size 2 --non_decay 1 --decay 0 --iterations_per_epoch 1")
CLIP = ("--train_data {clip_json} --mouth_region_size 64 --batch_size 1 --augment_num 1 "
        "--pretrained_frame_DINet_path {lab2_64} --pretrained_syncnet_path {syncnet_64} --result_path {tmp}/run "
        "--non_decay 1 --decay 0 --iterations_per_epoch 1 --vgg19_weights random --lpips_weights random "
        "--trepa_weights random --device cpu --num_workers 0")
SYNCNET = ("--train_data {tiny_json} --result_path {tmp}/run --syncnet_path {tmp}/s.pth --device cpu --num_workers 0 "
           "--mouth_region_size 64 --syncnet_input_size 32 --batch_size 4 --non_decay 1 --decay 0 "
           "--iterations_per_epoch 1")
INFERENCE = ("--source_video_path {grey_mp4} --driving_audio_path {speech_wav} --pretrained_clip_DINet_path "
             "{mel_generator} --res_video_dir {tmp}/out --device cpu")
EVALUATE = ("--videos {grey_mp4} --syncnet_path {syncnet_mel64} --csv {tmp}/scores.csv --device cpu "
            "--lpips_weights random")
COMMANDS = {  # script, the arguments every case starts from (a flag given again replaces them: argparse's last wins)
    "frame": ("train_DINet_frame.py", FRAME),
    "clip": ("train_DINet_clip.py", CLIP),
    "syncnet": ("train_syncnet.py", SYNCNET),
    "inference": ("inference.py", INFERENCE),
    "evaluate": ("evaluate.py", EVALUATE),
    "data": ("data_processing.py", ""),
    "compare": ("compare_labs.py", "--out_dir {tmp}/comparison"),
    "bench": ("bench.py", "--json {tmp}/bench.json"),
}

CASES = [
    # ---- train_DINet_frame.py: the training JSON
    ("frame", "--train_data {tmp}/none.json", "{tmp}/none.json: training JSON not found", "pass --train_data"),
    ("frame", "--train_data {list_json}", "{list_json}: not DINet's layout", "python data_processing.py"),
    ("frame", "--train_data {no_clips_json}", "{no_clips_json}: video0: no clip_data_list",
     "python data_processing.py"),
    ("frame", "--train_data {not_json}", "{not_json}: not valid JSON", "python data_processing.py"),
    ("frame", "--train_data {nested_json}", "{nested_json}: not valid JSON (maximum recursion depth exceeded",
     "python data_processing.py"),
    ("frame", "--train_data {clips_not_dicts_json}",
     "{clips_not_dicts_json}: video0 clip 0: no frame_path_list or deep_speech_list",
     "python data_processing.py"),
    ("frame", "--train_data {missing_frame_json}", "{missing_frame_json}: video1 clip 2, frame_path_list[4]: ",
     "does not exist", "make it again with `python data_processing.py --crop_face --generate_training_json`"),
    ("frame", "--train_data {moved_json}", "{moved_json}: video0 clip 0, frame_path_list[0]: /gone/",
     "does not exist (an absolute path: the data is not where it was", "make it again with"),
    ("frame", "--train_data {widths_json}", "{widths_json}: audio feature widths disagree ([29, 80])",
     "with one --audio_feature"),
    ("frame", "--train_data {few_clips_json}", "{few_clips_json}: no video has 6 or more 9-frame clips",
     "use longer videos"),
    ("frame", "--train_data {bad_frame_json}", ": cannot read this face crop",
     "rerun `python data_processing.py --crop_face`"),
    # ---- train_DINet_frame.py: flags that disagree with the data or with DINet's geometry
    ("frame", "--audio_channel 80", "--audio_channel 80 disagrees with {tiny_json}", "drop --audio_channel"),
    ("frame", "--mouth_region_size 60", "--mouth_region_size", "60", "multiple of 8", "use 64, 128 or 256"),
    ("frame", "--batch_size 64", "--batch_size 64 is larger than the 4 samples per epoch", "lower --batch_size"),
    ("frame", "--lab lab7", "--lab lab7 trains on mel audio features", "--audio_feature mel"),
    ("frame", "--lab lab10 --alignment mha", "--lab lab10", "--alignment mha cannot be used with",
     "or --alignment concat"),
    ("frame", "--vgg19_weights {tmp}/vgg19.pth", "--vgg19_weights {tmp}/vgg19.pth: no such file", "random"),
    ("frame", "--device gpu", "--device gpu", "cuda, cuda:N or cpu"),
    ("frame", "--result_path {a_file}/run", "--result_path {a_file}/run: cannot write there",
     "pass a folder you can write to"),
    # /proc takes no new folder even from root, whose permissions pass everywhere: only trying tells
    ("frame", "--result_path /proc/dub-run", "--result_path /proc/dub-run: cannot write there (",
     "pass a folder you can write to"),
    # ---- train_DINet_frame.py: the checkpoint a run starts from
    ("frame", "--coarse2fine", "--coarse2fine needs --coarse_model_path PATH", "netG_model_epoch_N.pth"),
    ("frame", "--coarse2fine --coarse_model_path {tmp}/none.pth",
     "--coarse_model_path {tmp}/none.pth: no such checkpoint file", "check the path"),
    ("frame", "--coarse2fine --coarse_model_path {tmp}", "--coarse_model_path {tmp}: a folder, not a checkpoint file; "
     "pass the coarser stage's netG_model_epoch_N.pth in it"),
    ("frame", "--coarse2fine --coarse_model_path {truncated_pth}",
     "--coarse_model_path {truncated_pth}: cannot read this checkpoint", "use an earlier checkpoint"),
    ("frame", "--coarse2fine --coarse_model_path {no_state_pth}",
     "--coarse_model_path {no_state_pth}: not a DINet checkpoint (no 'state_dict')", "netG_model_epoch_N.pth"),
    ("frame", "--mouth_region_size 128 --coarse2fine --coarse_model_path {lab2_64}",
     "--coarse_model_path {lab2_64}: trained as [extra_same_block=True", "but this run builds [DINet",
     "pass the matching --lab"),
    ("frame", "--mouth_region_size 128 --coarse2fine --coarse_model_path {syncnet_64}",
     "--coarse_model_path {syncnet_64}: not a generator checkpoint", "netG_model_epoch_N.pth"),
    ("frame", "--resume {tmp}/none.pth", "--resume {tmp}/none.pth: no such checkpoint file", "check the path"),
    ("frame", "--result_path {a_run}", "--result_path {a_run}: already holds a run (netG_model_epoch_1.pth)",
     "continue it with --resume auto, or pass another --result_path"),
    ("frame", "--coarse2fine --coarse_model_path {lab2_128}", "--coarse_model_path {lab2_128}: trained at mouth 128, "
     "finer than this run's 64", "pass the coarser stage's checkpoint"),
    ("frame", "--resume {clip_64}", "--resume {clip_64}: a clip stage checkpoint (it holds net_dV), and this is the "
     "frame stage", "continue it with train_DINet_clip.py"),
    # ---- train_DINet_clip.py
    ("clip", "--pretrained_frame_DINet_path=", "--pretrained_frame_DINet_path is empty", "netG_model_epoch_N.pth"),
    ("clip", "--resume {lab2_64}", "--resume {lab2_64}: a frame stage checkpoint (no net_dV), and this is the clip "
     "stage", "pass it as --pretrained_frame_DINet_path instead"),
    ("clip", "--pretrained_frame_DINet_path {truncated_pth}",
     "--pretrained_frame_DINet_path {truncated_pth}: cannot read this checkpoint", "use an earlier checkpoint"),
    ("clip", "--pretrained_frame_DINet_path {syncnet_64}",
     "--pretrained_frame_DINet_path {syncnet_64}: not a generator checkpoint", "netG_model_epoch_N.pth"),
    ("clip", "--mouth_region_size 128 --lamb_syncnet_perception 0",
     "--pretrained_frame_DINet_path {lab2_64}: trained with mouth_region_size=64, this run uses 128",
     "pass --mouth_region_size 64"),
    ("clip", "--lab lab1", "--pretrained_frame_DINet_path {lab2_64}: trained as [extra_same_block=True",
     "pass the matching --lab"),
    ("clip", "--pretrained_syncnet_path=", "--pretrained_syncnet_path is empty", "python train_syncnet.py",
     "--lamb_syncnet_perception 0"),
    ("clip", "--pretrained_syncnet_path {syncnet_128}",
     "--pretrained_syncnet_path {syncnet_128}: this SyncNet was trained on mouth 128 crops",
     "train one on this data: python train_syncnet.py"),
    ("clip", "--pretrained_syncnet_path {syncnet_mel64}",
     "--pretrained_syncnet_path {syncnet_mel64}: this SyncNet reads 80-d mel audio, the training data has 29-d "
     "deepspeech features", "train one on this data: python train_syncnet.py"),
    ("clip", "--pretrained_syncnet_path {lab2_64}", "--pretrained_syncnet_path {lab2_64}: not a SyncNet checkpoint",
     "train_syncnet.py"),
    ("frame", "--val_fraction 0.5 --val_lpips_weights {tmp}/vgg16.pth", "--val_lpips_weights {tmp}/vgg16.pth: no "
     "such file", "random"),
    ("clip", "--loss_preset latentsync --lpips_weights {tmp}/vgg16.pth",
     "--lpips_weights {tmp}/vgg16.pth: no such file", "random"),
    ("frame", "--vgg19_weights {list_pth}", "--vgg19_weights {list_pth}: a list, not a state dict",
     "pass a torchvision VGG19 (ImageNet) .pth, imagenet or random"),
    ("frame", "--vgg19_weights {number_keys_pth}", "--vgg19_weights {number_keys_pth}: a dict holding more than "
     "named tensors, not a state dict", "pass a torchvision VGG19 (ImageNet) .pth"),
    ("clip", "--loss_preset latentsync --lpips_weights {odd_keys_pth}",
     "--lpips_weights {odd_keys_pth}: not a torchvision VGG16 state dict", "pass a torchvision VGG16 (ImageNet) "
     ".pth, pretrained or random"),
    # ---- train_syncnet.py
    ("syncnet", "--train_data {tmp}/none.json", "{tmp}/none.json: training JSON not found", "pass --train_data"),
    ("syncnet", "--syncnet_input_size 48", "--syncnet_input_size 48: must be a multiple of 32"),
    ("syncnet", "--mouth_region_size 60", "--mouth_region_size", "multiple of 8", "use 64, 128 or 256"),
    ("syncnet", "--train_data {one_video_json}", "{one_video_json}: SyncNet training holds out whole videos",
     "prepare at least 2 videos"),
    ("syncnet", "--audio_channel 80", "--audio_channel 80 disagrees with {tiny_json}", "drop --audio_channel"),
    ("syncnet", "--train_data {syncnet_json} --batch_size 1000", "--batch_size 1000 is larger than",
     "lower --batch_size"),
    ("syncnet", "--result_path {a_file}/run", "--result_path {a_file}/run: cannot write there",
     "pass a folder you can write to"),
    ("syncnet", "--resume {lab2_64}", "--resume {lab2_64}: not a SyncNet checkpoint", "syncnet_model_epoch_N.pth"),
    # ---- inference.py
    ("inference", "--source_video_path {tmp}/none.mp4", "--source_video_path {tmp}/none.mp4: no such file",
     "check the path"),
    ("inference", "--driving_audio_path {tmp}/none.wav", "--driving_audio_path {tmp}/none.wav: no such file",
     "check the path"),
    ("inference", "--source_video_path {not_video}", "--source_video_path {not_video}: not a readable video",
     "re-encode it with ffmpeg"),
    ("inference", "--source_video_path {speech_wav}", "--source_video_path {speech_wav}: no video stream",
     "pass a video of the face to dub"),
    ("inference", "--driving_audio_path {not_audio}", "--driving_audio_path {not_audio}: not a readable audio file",
     "re-encode it with ffmpeg"),
    ("inference", "--source_video_path {partial_mp4}", "--source_video_path {partial_mp4}: not a readable video (no "
     "picture of its video stream could be decoded: a partial or damaged file?)", "re-encode it with ffmpeg"),
    ("inference", "--driving_audio_path {partial_mp4}", "{partial_mp4}: no sound of its audio stream could be decoded",
     "Pass the whole file, or re-encode it with ffmpeg"),
    ("inference", "--driving_audio_path {silent_mp4}", "--driving_audio_path {silent_mp4}: no audio stream",
     "pass the speech to dub with"),
    ("inference", "", "{grey_mp4}: no face found in any frame", "use a video with one visible, frontal face"),
    ("inference", "--driving_audio_path {short_wav}", "{short_wav}: ", "ms of audio; dubbing needs at least 200 ms",
     "pass a longer --driving_audio_path"),
    ("inference", "--pretrained_clip_DINet_path {tmp}/none.pth",
     "--pretrained_clip_DINet_path {tmp}/none.pth: no such checkpoint file", "check the path"),
    ("inference", "--pretrained_clip_DINet_path {text_pth}",
     "--pretrained_clip_DINet_path {text_pth}: cannot read this checkpoint", "it is not a PyTorch file, pass a "),
    ("inference", "--pretrained_clip_DINet_path {syncnet_64}",
     "--pretrained_clip_DINet_path {syncnet_64}: not a generator checkpoint", "netG_model_epoch_N.pth"),
    ("inference", "--mouth_region_size 60", "--mouth_region_size 60: DINet's crop geometry needs a multiple of 8",
     "use 64, 128 or 256"),
    ("inference", "--mouth_region_size 128", "trained at mouth 64, but --mouth_region_size is 128",
     "drop --mouth_region_size"),
    ("inference", "--source_video_path {tmp}", "--source_video_path {tmp}: a folder; pass a file in it"),
    ("inference", "--source_video_path {anamorphic_mp4}", "--source_video_path {anamorphic_mp4}: its pixels are "
     "not square (SAR 2:1)", "make them square first: ffmpeg -i {anamorphic_mp4} -vf scale=iw*sar:ih,setsar=1"),
    # a VP8 stream has no SAR of its own, the webm's says 2:1; the mp4's box says 2:1 over the H.264 stream's 1:1
    ("inference", "--source_video_path {anamorphic_webm}", "--source_video_path {anamorphic_webm}: its pixels are "
     "not square (SAR 2:1)"),
    ("inference", "--source_video_path {aspect_mp4}", "--source_video_path {aspect_mp4}: its pixels are not square "
     "(SAR 2:1)"),
    ("inference", "--source_openface_landmark_path {tmp}/none.csv",
     "--source_openface_landmark_path {tmp}/none.csv: no such file", "check the path"),
    ("inference", "--source_openface_landmark_path {short_csv}",
     "--source_openface_landmark_path {short_csv}: 10 rows for 25 frames", "or drop the flag"),
    ("inference", "--source_openface_landmark_path {nan_csv}",
     "{nan_csv}: the landmarks of frame 11 (its row under the header) are not all finite numbers", "make it again"),
    ("inference", "--audio_feature_path {features_29}",
     "--audio_feature_path {features_29}: shape (50, 29), but the checkpoint expects (frames, 80) mel features",
     "or drop the flag"),
    ("inference", "--audio_feature_path {features_nan}",
     "--audio_feature_path {features_nan}: row 7 holds values that are NaN or infinite",
     "compute the features of the driving audio again, or drop the flag"),
    ("inference", "--audio_feature_path {features_2s}",
     "--audio_feature_path {features_2s}: 50 rows are 2.00 s at 25 per second, but {speech_wav} lasts 1.00 s",
     "pass the features of this audio"),
    # a header claiming 10^11 rows over a few bytes (read, numpy would allocate 30 TB first), and an .npz renamed
    ("inference", "--audio_feature_path {features_huge}", "--audio_feature_path {features_huge}: cannot read it",
     "pass a .npy or .txt array"),
    ("inference", "--audio_feature_path {features_npz}", "--audio_feature_path {features_npz}: cannot read it",
     "pass a .npy or .txt array"),
    ("inference", "--audio_feature_path {features_1s}", "{grey_mp4}: no face found in any frame"),  # they pass
    ("inference", "--audio_feature_path {not_audio}", "--audio_feature_path {not_audio}: cannot read it",
     "pass a .npy or .txt array"),
    # a few lines named as media that have ffmpeg read other files, any local one or a URL, as if they were its own
    ("inference", "--source_video_path {playlist_mp4}", "--source_video_path {playlist_mp4}: a playlist naming other "
     "files or URLs for ffmpeg to read", "which is refused; pass the video itself"),
    ("inference", "--driving_audio_path {playlist_wav}", "--driving_audio_path {playlist_wav}: a playlist naming",
     "pass the audio file itself"),
    ("inference", "--batch_size 0", "argument --batch_size: must be an integer >= 1, got 0"),
    ("inference", "--device gpu", "--device gpu: not a device", "pass cuda, cuda:N or cpu"),
    ("inference", "--res_video_dir {a_file}/out", "--res_video_dir {a_file}/out: cannot write there",
     "pass a folder you can write to"),
    ("inference", "--res_video_dir /proc/dub-out", "--res_video_dir /proc/dub-out: cannot write there (",
     "pass a folder you can write to"),
    # ---- evaluate.py
    ("evaluate", "--videos {tmp}/none.mp4", "{tmp}/none.mp4: no such video", "--videos"),
    ("evaluate", "--videos {not_video}", "{not_video}: not a readable video", "re-encode it with ffmpeg"),
    ("evaluate", "--videos {playlist_mp4}", "{playlist_mp4}: a playlist naming other files", "pass the video itself"),
    ("evaluate", "--videos {silent_mp4}", "{silent_mp4}: no audio stream",
     "-map 0:v -map 1:a -c:v copy with_audio.mp4"),
    ("evaluate", "", "{grey_mp4}: no face found in any frame", "one visible, frontal face"),
    ("evaluate", "--sources {grey_mp4} {grey_mp4}", "--sources gives 2 videos for 1 --videos", "one per video"),
    ("evaluate", "--sources {grey_96_mp4}", "{grey_mp4}: 128x128, and its source {grey_96_mp4} 96x96",
     "-vf scale=96:96 scaled.mp4"),
    ("evaluate", "--identity_weights {tmp}/backbone.pth", "--identity_weights: identity compares a face before and "
     "after dubbing", "add --sources"),
    ("evaluate", "--syncnet_path {tmp}/none.pth", "--syncnet_path {tmp}/none.pth: no such checkpoint file",
     "check the path"),
    ("evaluate", "--syncnet_path {lab2_64}", "--syncnet_path {lab2_64}: not a SyncNet checkpoint", "train_syncnet.py"),
    ("evaluate", "--syncnet_path {syncnet_64}", "--syncnet_path {syncnet_64}: it reads deepspeech audio features",
     "pass a SyncNet trained by train_syncnet.py on mel or mfcc data"),
    ("evaluate", "--sources {grey_mp4} --inception_weights {tmp}/inception.pth",
     "--inception_weights {tmp}/inception.pth: no such file", "leave the flag out"),
    ("evaluate", "--device gpu", "--device gpu: not a device", "pass cuda, cuda:N or cpu"),
    ("evaluate", "--csv {a_file}/scores.csv", "--csv {a_file}/scores.csv: cannot write there ({a_file} is a file",
     "pass a path in a folder you can write to"),
    ("evaluate", "--csv /proc/dub/scores.csv", "--csv /proc/dub/scores.csv: cannot write there (",
     "pass a path in a folder you can write to"),
    # ---- data_processing.py (run from a scratch folder: it writes under ./asserts/training_data)
    ("data", "--all --source_video_dir {tmp}/none", "{tmp}/none: directory not found", "pass --source_video_dir"),
    ("data", "--all --source_video_dir {videos_none}", "{videos_none}: no videos", "put the videos there"),
    ("data", "--all --source_video_dir {videos_silent}", "{videos_silent}/silent.mp4: no audio stream", "mux it in"),
    ("data", "--all --source_video_dir {videos_broken}", "{videos_broken}/broken.mp4: not a readable video",
     "re-encode it with ffmpeg"),
    ("data", "--all --source_video_dir {videos_anamorphic}", "its pixels are not square (SAR 2:1)",
     "make them square first"),
    ("data", "--all --source_video_dir {videos_no_face}", "a face in only 0% of frames",
     "use a video where one face stays in view"),
    ("data", "--generate_training_json --crop_face_dir {tmp}/no_crops", "{tmp}/no_crops: directory not found",
     "--crop_face"),
    ("data", "--generate_training_json --json_path {a_file}/training_json.json",
     "--json_path {a_file}/training_json.json: cannot write there", "pass a path in a folder you can write to"),
    # audio features in a prepared set from elsewhere: a pickled object array, a header claiming 10^11 rows
    ("data", "--generate_training_json --crop_face_dir {prepared}/crops --audio_feature_dir {prepared}/pickled "
     "--audio_feature mel", "{prepared}/pickled/talk_mel.npy: cannot read these audio features",
     "delete it and extract the features again"),
    ("data", "--generate_training_json --crop_face_dir {prepared}/crops --audio_feature_dir {prepared}/huge "
     "--audio_feature mel", "{prepared}/huge/talk_mel.npy: cannot read these audio features",
     "delete it and extract the features again"),
    ("data", "--check --json {tmp}/none.json", "{tmp}/none.json: training JSON not found", "pass --json"),
    ("data", "--check --json {list_json}", "{list_json}: not DINet's layout", "--generate_training_json"),
    ("data", "--check --json {clips_not_dicts_json}",
     "{clips_not_dicts_json}: video0 clip 0: no frame_path_list or deep_speech_list",
     "make it again with `python data_processing.py --crop_face --generate_training_json`"),
    ("data", "--check --json {missing_frame_json}", "{missing_frame_json}: video1 clip 2, frame_path_list[4]: ",
     "does not exist",
     "make it again with `python data_processing.py --crop_face --generate_training_json`"),
    ("data", "--all --workers 0", "error: argument --workers: must be an integer >= 1, got 0"),
    ("data", "--source_video_dir {videos_silent}", "error: nothing to do", "--all --source_video_dir DIR"),
    # ---- compare_labs.py
    ("compare", "--labs lab1,lab99", "error: argument --labs: unknown lab 'lab99'", "choose from lab1"),
    ("compare", "--labs lab1 --lab lab2", "--lab: compare_labs.py sets it for each lab", "choose labs with --labs"),
    ("compare", "--labs lab1 --train_data {tmp}/none.json", "{tmp}/none.json: training JSON not found",
     "pass --train_data"),
    ("compare", "--labs lab1 --train_data {tiny_json} --out_dir {a_file}/comparison",
     "--out_dir {a_file}/comparison: cannot write there ({a_file} is a file, not a folder)",
     "pass a folder you can write to"),
    ("compare", "--labs lab1 --train_data {tiny_json} --out_dir /proc/dub-comparison",
     "--out_dir /proc/dub-comparison: cannot write there (", "pass a folder you can write to"),
    # ---- bench.py
    ("bench", "--tasks generator,nonsense", "--tasks: nonsense unknown", "pass a comma list of generator"),
    ("bench", "--precision fp64", "--precision: fp64 unknown", "pass a comma list of fp32, bf16"),
    ("bench", "--mouths 64,65", "--mouths: 65 unknown", "pass a comma list of 64, 128, 256"),
    ("bench", "--peak_tflops bf16=fast", "--peak_tflops bf16=fast: not a number", "pass e.g. --peak_tflops 989"),
]


def case_id(command, args):
    text = f"{command} {args or '(defaults)'}".replace("{", "").replace("}", "")
    return "".join(char if char.isalnum() or char in "-_=" else "_" for char in text)


def ffmpeg(*args):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def save_syncnet(path, **config):
    config = SyncNetConfig(input_size=32, **config)
    atomic_save({"state_dict": {"net": build_syncnet(config).state_dict()}, "syncnet_config": config.to_dict()},
                str(path))
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_json, clip_assets, checkpoint):  # noqa: F811
    """Every bad (and the few good) inputs the cases name, built once: tiny JSONs, checkpoints, 1 s media."""
    folder = tmp_path_factory.mktemp("bad_input")
    _, clip_json, lab2_64, syncnet_64 = clip_assets
    a = SimpleNamespace(tiny_json=tiny_json, clip_json=clip_json, lab2_64=lab2_64, syncnet_64=syncnet_64,
                        mel_generator=checkpoint)
    a.a_file = str(folder / "a_file")  # a regular file: nothing can be created under it (tests may run as root)
    (folder / "a_file").write_text("a file, not a folder\n")

    # training JSONs that are not DINet's layout, or point at what is not there
    a.list_json, a.no_clips_json, a.clips_not_dicts_json, a.not_json = (
        str(folder / name) for name in ("list.json", "no_clips.json", "clips_not_dicts.json", "not.json"))
    (folder / "list.json").write_text("[1, 2, 3]")
    (folder / "no_clips.json").write_text(json.dumps({"video0": {"video_clip_num": 3}}))
    (folder / "clips_not_dicts.json").write_text(json.dumps({"video0": {"clip_data_list": [["a.jpg"] * 9]}}))
    (folder / "not.json").write_text("{this is not JSON")
    a.nested_json = str(folder / "nested.json")  # valid JSON, nested deeper than Python's parser recurses
    (folder / "nested.json").write_text('{"video0": ' + "[" * 100_000 + "]" * 100_000 + "}")
    a.missing_frame_json = write_dinet_json(str(folder / "missing_frame"), videos=2, clips=6)
    with open(a.missing_frame_json) as f:
        os.remove(json.load(f)["video1"]["clip_data_list"][2]["frame_path_list"][4])
    a.moved_json = write_dinet_json(str(folder / "moved"), videos=2, clips=6)  # made where the data lay before
    with open(a.moved_json) as f:
        data = json.load(f)
    for entry in data.values():
        for clip in entry["clip_data_list"]:
            clip["frame_path_list"] = ["/gone/" + path for path in clip["frame_path_list"]]
    with open(a.moved_json, "w") as f:
        json.dump(data, f)
    a.widths_json = write_dinet_json(str(folder / "widths"), videos=2, clips=6)
    with open(a.widths_json) as f:
        data = json.load(f)
    for clip in data["video1"]["clip_data_list"]:
        clip["deep_speech_list"] = np.zeros((9, 80)).tolist()
    with open(a.widths_json, "w") as f:
        json.dump(data, f)
    a.few_clips_json = write_dinet_json(str(folder / "few_clips"), videos=2, clips=3)
    a.one_video_json = write_dinet_json(str(folder / "one_video"), videos=1, clips=6)
    a.syncnet_json = write_dinet_json(str(folder / "syncnet"), videos=3, clips=12)  # enough to train a SyncNet on
    a.bad_frame_json = write_dinet_json(str(folder / "bad_frame"), videos=2, clips=6)
    for path in glob.glob(str(folder / "bad_frame" / "crop" / "**" / "*.jpg"), recursive=True):
        with open(path, "wb") as f:
            f.write(b"not a jpeg")

    # checkpoints: unreadable, not DINet's, or of other data
    a.clip_64 = str(folder / "clip_64.pth")  # as the clip stage writes it: the frame stage's networks and net_dV
    clip = load_checkpoint(lab2_64)
    clip["state_dict"]["net_dV"] = clip["state_dict"]["net_dI"]  # stands in: the refusal reads which networks it holds
    atomic_save(clip, a.clip_64)
    a.lab2_128 = str(folder / "lab2_128.pth")  # stands in for a mouth 128 checkpoint: the refusal reads the size
    atomic_save({**load_checkpoint(lab2_64), "mouth_region_size": 128}, a.lab2_128)
    a.a_run = str(folder / "a_run")
    os.makedirs(a.a_run)
    shutil.copy(lab2_64, os.path.join(a.a_run, "netG_model_epoch_1.pth"))
    a.truncated_pth = str(folder / "truncated.pth")
    with open(lab2_64, "rb") as source, open(a.truncated_pth, "wb") as f:
        f.write(source.read(4096))
    a.list_pth, a.number_keys_pth, a.odd_keys_pth = (str(folder / name) for name in
                                                     ("list.pth", "number_keys.pth", "odd_keys.pth"))
    torch.save([torch.zeros(3)], a.list_pth)
    torch.save({0: torch.zeros(3)}, a.number_keys_pth)
    torch.save({"features.x.weight": torch.zeros(3), "features.99.weight": torch.zeros(3)}, a.odd_keys_pth)
    a.text_pth = str(folder / "text.pth")
    (folder / "text.pth").write_text("not a checkpoint\n")
    a.no_state_pth = str(folder / "no_state.pth")
    torch.save({"weights": torch.zeros(3)}, a.no_state_pth)
    torch.manual_seed(0)
    a.syncnet_128 = save_syncnet(folder / "syncnet_128.pth", audio_channel=29, audio_feature="deepspeech",
                                 mouth_region_size=128)
    a.syncnet_mel64 = save_syncnet(folder / "syncnet_mel64.pth", arch="embedding", audio_channel=80,
                                   audio_feature="mel", mouth_region_size=64)
    a.features_29 = str(folder / "features_29.npy")
    np.save(a.features_29, np.zeros((50, 29), np.float32))
    a.features_nan, a.features_2s = str(folder / "features_nan.npy"), str(folder / "features_2s.npy")
    nan = np.zeros((25, 80), np.float32)
    nan[7, 3] = np.nan
    np.save(a.features_nan, nan)
    np.save(a.features_2s, np.zeros((50, 80), np.float32))
    a.features_huge, a.features_npz = str(folder / "features_huge.npy"), str(folder / "features_npz.npy")
    with open(a.features_huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 11, 80)})
        f.write(bytes(320))
    with open(a.features_npz, "wb") as f:
        np.savez(f, features=np.zeros((25, 80), np.float32))
    a.prepared = str(folder / "prepared")  # a video's crops (none needed) and features, as data preparation lays out
    for name in ("crops/talk", "pickled", "huge"):
        os.makedirs(folder / "prepared" / name)
    np.save(folder / "prepared" / "pickled" / "talk_mel.npy", np.array([[{"a": 1}] * 80] * 25), allow_pickle=True)
    shutil.copy(a.features_huge, folder / "prepared" / "huge" / "talk_mel.npy")
    a.features_1s = str(folder / "features_1s.txt")
    np.savetxt(a.features_1s, np.ones((26, 80)))

    # media: 1 s, 128 x 128, a flat grey picture (no face) with or without a tone; files that are not media
    grey = ["-f", "lavfi", "-i", "color=c=gray:s=128x128:r=25:d=1"]
    tone = ["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000:duration={}"]
    h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    a.grey_mp4, a.silent_mp4 = str(folder / "grey.mp4"), str(folder / "silent.mp4")
    ffmpeg(*grey, *tone[:3], tone[3].format(1), *h264, "-c:a", "aac", "-shortest", a.grey_mp4)
    ffmpeg(*grey, "-an", *h264, a.silent_mp4)
    a.grey_96_mp4 = str(folder / "grey_96.mp4")  # the grey video made smaller, as some tools return a dub
    ffmpeg("-i", a.grey_mp4, "-vf", "scale=96:96", *h264, "-c:a", "copy", a.grey_96_mp4)
    a.anamorphic_mp4 = str(folder / "anamorphic.mp4")  # each pixel shown twice as wide as high
    ffmpeg(*grey, *tone[:3], tone[3].format(1), "-vf", "setsar=2/1", *h264, "-c:a", "aac", "-shortest",
           a.anamorphic_mp4)
    a.anamorphic_webm, a.aspect_mp4 = str(folder / "anamorphic.webm"), str(folder / "aspect.mp4")
    ffmpeg("-i", a.anamorphic_mp4, "-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libopus", a.anamorphic_webm)
    ffmpeg("-i", a.grey_mp4, "-c", "copy", "-aspect", "2:1", a.aspect_mp4)  # the container's label, as players read
    a.partial_mp4 = str(folder / "partial.mp4")  # cut inside its first packet, as an upload that broke off
    ffmpeg(*grey, *tone[:3], tone[3].format(1), *h264, "-c:a", "aac", "-shortest", "-movflags", "+faststart",
           a.partial_mp4)
    whole = open(a.partial_mp4, "rb").read()
    open(a.partial_mp4, "wb").write(whole[:whole.index(b"mdat") + 12])
    a.speech_wav, a.short_wav = str(folder / "speech.wav"), str(folder / "short.wav")
    ffmpeg(*tone[:3], tone[3].format(1), a.speech_wav)
    ffmpeg(*tone[:3], tone[3].format(0.1), a.short_wav)
    a.not_video, a.not_audio = str(folder / "not_video.mp4"), str(folder / "not_audio.wav")
    (folder / "not_video.mp4").write_text("a text file named like a video\n")
    (folder / "not_audio.wav").write_text("a text file named like audio\n")
    a.playlist_mp4, a.playlist_wav = str(folder / "playlist.mp4"), str(folder / "playlist.wav")
    (folder / "playlist.mp4").write_text(  # a DASH manifest naming a local video by its absolute path
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT1S" '
        'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"><Period><AdaptationSet mimeType="video/mp4">'
        f'<Representation id="1" bandwidth="1"><BaseURL>file://{a.grey_mp4}</BaseURL><SegmentBase/>'
        '</Representation></AdaptationSet></Period></MPD>\n')
    (folder / "playlist.wav").write_text("ffconcat version 1.0\nfile speech.wav\n")  # a file beside it
    a.short_csv = str(folder / "short.csv")
    write_openface_csv(a.short_csv, np.random.default_rng(0).uniform(20, 100, (10, 68, 2)))
    a.nan_csv, points = str(folder / "nan.csv"), np.random.default_rng(0).uniform(20, 100, (25, 68, 2))
    points[10, 48] = np.nan
    write_openface_csv(a.nan_csv, points)

    # video folders for data_processing.py, each with one kind of unusable video
    for name, source, target in (("videos_silent", a.silent_mp4, "silent.mp4"),
                                 ("videos_broken", a.not_video, "broken.mp4"),
                                 ("videos_no_face", a.grey_mp4, "grey.mp4"),
                                 ("videos_anamorphic", a.anamorphic_mp4, "anamorphic.mp4"),
                                 ("videos_none", a.not_video, "notes.txt")):
        os.makedirs(folder / name)
        shutil.copy(source, folder / name / target)
        setattr(a, name, str(folder / name))
    return vars(a)


def fill(text, values):
    return [piece.format(**values) for piece in text.split()]


def assert_nothing_finished_left(tmp_path, command):
    """No output that looks complete: dubbed videos, score tables, checkpoints, training JSONs."""
    if command == "data":  # data preparation keeps finished steps of other videos by design; no JSON though
        assert not glob.glob(str(tmp_path / "**" / "training_json.json"), recursive=True)
        return
    left = [path for pattern in ("*.mp4", "*.csv", "*.pth", "*.json")
            for path in glob.glob(str(tmp_path / "**" / pattern), recursive=True)]
    assert not left, left
    if command == "inference":  # nor the empty --res_video_dir it would have written into
        assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("command,args,expected", [
    pytest.param(command, args, expected, id=case_id(command, args))
    for command, args, *expected in CASES])
def test_bad_input_is_one_line_naming_the_file_or_flag_and_the_fix(assets, command, args, expected, tmp_path,
                                                                   monkeypatch, capsys):
    script, base = COMMANDS[command]
    values = {**assets, "tmp": str(tmp_path)}
    argv = fill(base, values) + fill(args, values)
    if command == "data":
        work = tmp_path / "work"
        work.mkdir()
        monkeypatch.chdir(work)
    else:
        monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_info:  # any other exception is a traceback: the case fails
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    code = exit_info.value.code
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err, printed.err[-3000:]  # none printed and then exited either
    if isinstance(code, str):
        message = code
    else:  # argparse: exit 2 and one "SCRIPT: error: ..." line on stderr
        assert code == 2 and printed.err.startswith(f"{script}: error: "), printed.err
        message = printed.err
    assert "\n" not in message.strip(), message
    for piece in expected:
        assert piece.format(**values) in message, message
    assert_nothing_finished_left(tmp_path, command)


# ---------------------------------------------------------------- as real processes

@pytest.mark.parametrize("command,args,expected,cwd", [
    pytest.param("inference", "--source_video_path {not_video}",
                 "--source_video_path {not_video}: not a readable video", ROOT, id="inference_not_a_video"),
    pytest.param("syncnet", "--syncnet_input_size 48", "--syncnet_input_size 48: must be a multiple of 32", ROOT,
                 id="train_syncnet_input_size"),
    pytest.param("data", "--all --source_video_dir {videos_silent}", "{videos_silent}/silent.mp4: no audio stream",
                 None, id="data_processing_silent_video"),
    # a face crop that cannot be read, found by a DataLoader worker process (the default --num_workers 2)
    pytest.param("frame", "--train_data {bad_frame_json} --num_workers 1", ": cannot read this face crop", ROOT,
                 id="frame_unreadable_crop_in_a_loader_worker"),
])
def test_bad_input_from_the_shell_exits_nonzero_with_the_message_last_and_no_traceback(assets, command, args, expected,
                                                                                        cwd, tmp_path):
    script, base = COMMANDS[command]
    values = {**assets, "tmp": str(tmp_path)}
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *fill(base, values), *fill(args, values)],
                            cwd=cwd or tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert expected.format(**values) in result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
    assert_nothing_finished_left(tmp_path, command)


DAC = "-dac_override,-dac_read_search"  # the capabilities by which root reads and writes any file


@pytest.mark.parametrize("command, flag, asset", [
    ("inference", "--source_video_path", "grey_mp4"),
    ("inference", "--driving_audio_path", "speech_wav"),
    ("inference", "--pretrained_clip_DINet_path", "mel_generator"),
    ("frame", "--train_data", "tiny_json"),
])
def test_a_file_this_user_may_not_read_is_named_with_the_fix(assets, command, flag, asset, tmp_path):
    """A file without read permission for the user is one line saying so and how to fix it, not a complaint about
    its contents (an unreadable video, a damaged checkpoint). Root reads any file: as root, the command runs without
    the capabilities that let it (util-linux's setpriv), so that permissions hold for it as for a user."""
    locked = str(tmp_path / os.path.basename(assets[asset]))
    shutil.copy(assets[asset], locked)
    os.chmod(locked, 0)
    wrap = []
    if os.geteuid() == 0:
        wrap = [shutil.which("setpriv") or "setpriv", f"--bounding-set={DAC}", f"--inh-caps={DAC}"]
        try:
            reads = subprocess.run([*wrap, "cat", locked], capture_output=True).returncode == 0
        except OSError:
            reads = True
        if reads:
            pytest.skip("running as root, and setpriv (util-linux) cannot drop root's right to read any file here")
    script, base = COMMANDS[command]
    values = {**assets, "tmp": str(tmp_path)}
    result = subprocess.run([*wrap, sys.executable, os.path.join(ROOT, script), *fill(base, values), flag, locked],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    named = f"{flag} {locked}" if command == "inference" else locked
    assert result.stderr.strip().splitlines()[-1] == (f"{named}: permission denied for this user; change its "
                                                      f"permissions (chmod, chown) or use another path")
    assert_nothing_finished_left(tmp_path / "out", command)


def test_a_video_resized_by_ffmpeg_is_not_refused_as_anamorphic(assets, tmp_path):
    """ffmpeg's `scale=-2:H` rounds the width to even and labels the pixels by the rounding (SAR 512:513 here): a
    squeeze no face crop can tell, so the video is taken as it is (SAR 2:1, a case above, is refused)."""
    import inference
    resized = str(tmp_path / "resized.mp4")
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=160x90:r=25:d=1", "-vf", "scale=-2:64", "-c:v", "libx264", resized)
    assert probe(resized)["sar"] == "512:513"
    inference.check_inputs(inference.build_parser().parse_args(fill(INFERENCE, {**assets, "tmp": str(tmp_path)})
                                                               + ["--source_video_path", resized]))


def test_a_permission_error_anywhere_in_a_command_is_its_one_line():
    """Whatever file a command reads or writes, a permission refused on it ends the command with the one line, not
    a traceback; an error that names no file stays a bug's traceback."""
    from common.errors import run_command

    def refused(filename):
        raise PermissionError(13, "Permission denied", filename)
    with pytest.raises(SystemExit, match=r"^/data/clip\.mp4: permission denied for this user; change its perm"):
        run_command(refused, "/data/clip.mp4")
    with pytest.raises(PermissionError):
        run_command(refused, None)


@pytest.mark.parametrize("content", ["huge", "npz", "empty", "complex"])
def test_deepspeech_features_that_are_not_a_plain_array_are_one_line(tmp_path, content):
    """DeepSpeech features come from elsewhere (--deepspeech_dir): a header claiming more rows than the file holds, an
    .npz named .npy, an empty file or complex values are named with the fix, not read into memory, cast or a
    traceback."""
    from data.audio_features import read_deepspeech
    path = tmp_path / "talk_deepspeech.npy"
    with open(path, "wb") as f:
        if content == "huge":
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 11, 29)})
            f.write(bytes(116))
        elif content == "npz":
            np.savez(f, features=np.zeros((25, 29), np.float32))
        elif content == "complex":
            np.save(f, np.ones((25, 29), np.complex64) * 1j)
    with pytest.raises(UserError, match=f"^{path}: cannot read DeepSpeech features \\(.+\\); make the file again$"):
        read_deepspeech(str(tmp_path), "talk")


def test_a_file_named_as_a_url_begins_is_read_as_that_file_not_as_what_the_url_names(tmp_path, monkeypatch):
    """`concat:speech.wav` given from its folder is a file by that name, not ffmpeg's concatenation of speech.wav."""
    from media.ffmpeg import probe
    monkeypatch.chdir(tmp_path)
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.2", "speech.wav")
    ffmpeg("-f", "lavfi", "-i", "color=s=32x32:d=0.2", "-f", "mp4", "file:concat:speech.wav")
    assert probe("concat:speech.wav")["width"] == 32
