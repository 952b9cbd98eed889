"""The whole dubbing pipeline end to end, against DINet's published inference loop on the same video and machine."""
import os
import shutil
import statistics
import subprocess
import tempfile

import imageio_ffmpeg
import numpy as np
import torch

from engine.compare import lab_config
from models import DINet

from .measure import (STAGES, generator_inputs, network_flops, out_of_time, reference_once_flops, seconds_left,
                      selected)
from .processes import ROOT, run_job
from .published import published_way

SAMPLE_CLIP = os.path.join(os.path.dirname(ROOT), "shared", "data")
# frames the published loop dubs for its row, per mouth size (its rate is per frame; at 256 it makes ~1 a second)
PUBLISHED_LOOP_FRAMES = {64: 100, 128: 40, 256: 16}


def inference_inputs(opt, folder):
    """(video, driving audio, landmark CSV, description) at --video WxH, --video_seconds long.

    The real 1080x1920 clip of ../shared/data when it is there and has that size (landmarks detected once,
    not timed, as the published figure had them given); else the demo face scaled up onto a WxH frame."""
    from data.openface_csv import read_openface_csv, write_openface_csv
    from data.procedural_faces import make_demo_data
    from media.ffmpeg import probe
    width, height = opt.video
    seconds = min(opt.video_seconds, 2.0) if opt.quick else opt.video_seconds
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error"]
    clip = os.path.join(SAMPLE_CLIP, "talking_head_a.mp4")
    speech = os.path.join(SAMPLE_CLIP, "driving_speech_a.wav")
    audio = os.path.join(folder, "speech.wav")
    if not opt.quick and os.path.isfile(clip) and os.path.isfile(speech) and (
            (probe(clip)["width"], probe(clip)["height"]) == (width, height)):
        from data.landmark_detector import detect_landmarks
        from media.decoder import read_video_frames
        video = os.path.join(folder, "source.mp4")
        subprocess.run([*ffmpeg, "-i", clip, "-t", str(seconds), "-c", "copy", video], check=True)
        frames = np.stack(list(read_video_frames(video, fps=25)))
        landmarks, found = detect_landmarks(frames)
        del frames
        csv = os.path.join(folder, "source.csv")
        write_openface_csv(csv, landmarks, found=found)
        subprocess.run([*ffmpeg, "-stream_loop", "3", "-i", speech, "-t", str(seconds), audio], check=True)
        return video, audio, csv, f"{os.path.basename(clip)} {width}x{height}, {seconds:g} s"
    make_demo_data(os.path.join(folder, "demo"), num_videos=2, seconds=seconds, seed=0)
    demo = os.path.join(folder, "demo")
    side = (min(width, height) // 2) // 2 * 2           # the 256x256 demo face scaled to half the short side
    left, top = (width - side) // 2 // 2 * 2, (height - side) // 2 // 2 * 2
    video = os.path.join(folder, "source.mp4")
    subprocess.run([*ffmpeg, "-i", os.path.join(demo, "split_video_25fps", "demo_000.mp4"), "-vf",
                    f"scale={side}:{side},pad={width}:{height}:{left}:{top}:gray", "-c:v", "libx264", "-preset",
                    "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-an", video], check=True)
    landmarks = read_openface_csv(os.path.join(demo, "split_video_25fps_landmark_openface", "demo_000.csv"))
    csv = os.path.join(folder, "source.csv")
    write_openface_csv(csv, landmarks * (side / 256) + np.array([left, top]))
    shutil.copy(os.path.join(demo, "split_video_25fps_audio", "demo_001.wav"), audio)
    return video, audio, csv, f"demo face on {width}x{height}, {seconds:g} s"


def video_psnr(path_a, path_b, boxes=None):
    """PSNR between two videos over all their pixels, or only inside each frame's box (top, bottom, left, right)."""
    from media.decoder import read_video_frames
    squared, count = 0.0, 0
    for t, (a, b) in enumerate(zip(read_video_frames(path_a), read_video_frames(path_b))):
        if boxes is not None:
            if boxes[t] is None:
                continue
            top, bottom, left, right = boxes[t]
            a, b = a[top:bottom, left:right], b[top:bottom, left:right]
        difference = a.astype(np.float32) - b.astype(np.float32)
        squared += float(np.square(difference).sum())
        count += difference.size
    mse = squared / max(count, 1)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def face_boxes(landmark_csv, video_size, frames):
    """Each output frame's face-crop box, as the pipeline places it (None where it passes the frame through)."""
    from common.geometry import crop_box
    from data.openface_csv import read_openface_csv
    from dubbing.pipeline import crop_radii, ping_pong
    landmarks = read_openface_csv(landmark_csv)
    aligned = landmarks[ping_pong(len(landmarks), frames)]
    return [None if radius is None else crop_box(points, radius)
            for points, radius in zip(aligned, crop_radii(aligned, video_size))]


class DubbingBench:
    """The inference rows of one bench run. Its inputs, random weights, fp32 outputs (the reference of the bf16
    rows' PSNR) and the published loop's rows are made once and kept in a temporary folder until `close`."""

    def __init__(self, opt):
        self.opt = opt
        self.folder = tempfile.TemporaryDirectory(prefix="bench-dub-")
        self.inputs = self.weights = None
        self.published = {}  # mouth size -> the published loop's row

    def close(self):
        self.folder.cleanup()

    def prepare(self, config):
        if self.inputs is None:
            self.inputs = inference_inputs(self.opt, self.folder.name)
            torch.manual_seed(0)
            self.weights = os.path.join(self.folder.name, "generator.pt")
            torch.save(DINet.from_config(config).state_dict(), self.weights)

    def published_row(self, job, config, lab, description, repeat):
        """The published inference loop's row for job's mouth size: run at the first call for that size and once
        more at each later `repeat`, so its runs interleave with the first dubbing row's. Returns (the row when
        new, else None; the row); its frames/s are its runs' median (runs_frames_per_s)."""
        row = self.published.get(job["mouth"])
        if row is not None and len(row["runs_frames_per_s"]) > repeat:
            return None, row
        frames = 12 if self.opt.quick else PUBLISHED_LOOP_FRAMES[job["mouth"]]
        done = run_job("published", dict(job, frames=frames), seconds=seconds_left(self.opt))
        new = None
        if row is None:
            network = published_way(DINet.from_config(config).eval())
            inputs = generator_inputs(job["mouth"], 1, config.audio_channel, torch.device("cpu"))
            flops = network_flops(network, inputs)  # per frame, the reference branch included
            new = row = self.published[job["mouth"]] = dict(
                task="inference", lab=lab, mouth=job["mouth"], batch=1, precision="fp32", channels_last=False,
                adaat="published", baseline=True, end_to_end=True, frames=done["frames"], video=description,
                gflops_per_sample=flops / 1e9, runs_frames_per_s=[])
        row["runs_frames_per_s"].append(done["frames"] / done["seconds"])
        row["frames_per_s"] = statistics.median_low(row["runs_frames_per_s"])
        row["seconds"] = row["frames"] / row["frames_per_s"]
        row["achieved_gflops_per_s"] = row["gflops_per_sample"] * row["frames_per_s"]
        return new, row

    def rows(self, opt, device, precision, lab):
        """The whole dubbing pipeline, timed end to end in its own process: decode, landmarks (given), features,
        crops, generator, blend, encode. bf16 rows also give the PSNR of their output against the fp32 output of
        the same input, over whole frames and over the face-crop boxes (where the two can differ)."""
        from media.ffmpeg import probe
        config = lab_config(lab, 80, "mel")
        self.prepare(config)
        info = probe(self.inputs[0])
        network = DINet.from_config(config).eval()
        network.load_state_dict(torch.load(self.weights, weights_only=True))
        rows = []
        mouths = (64,) if opt.quick else [mouth for mouth, _ in selected(STAGES, opt.mouths)]
        for mouth_size in mouths:
            try:
                rows += self.mouth_rows(opt, device, precision, lab, config, network, info, mouth_size)
            except subprocess.TimeoutExpired:  # the check's budget ran out in this row's run
                rows.append(dict(task="inference", lab=lab, mouth=mouth_size, precision=precision,
                                 not_measured=out_of_time(opt)))
        return rows

    def mouth_rows(self, opt, device, precision, lab, config, network, info, mouth_size):
        """The rows of one mouth size: the published loop's where it is new, then dubbing's."""
        folder = self.folder.name
        video, audio, landmarks, description = self.inputs
        rows = []
        job = dict(config=config.to_dict(), weights=self.weights, device=str(device), video=video, audio=audio,
                   landmarks=landmarks, mouth=mouth_size, batch=opt.inference_batch,
                   amp="bf16" if precision == "bf16" else "off", decoder=opt.dub_decoder,
                   output=os.path.join(folder, f"out_{mouth_size}_{precision}.mp4"))
        published, runs = None, []
        for repeat in range(opt.inference_repeats):  # the published loop and ours in turn
            if opt.published_loop == "on":
                new, published = self.published_row(job, config, lab, description, repeat)
                rows += [new] if new else []
            runs.append(dub_in_process(job, seconds_left(opt)))
        rates = [run["frames"] / run["timings"]["total"] for run in runs]
        done = runs[rates.index(statistics.median_low(rates))]  # the median run, with its stages
        seconds, frames = done["timings"]["total"], done["frames"]
        inputs = generator_inputs(mouth_size, 1, config.audio_channel, torch.device("cpu"))
        flops = reference_once_flops(network, inputs)  # per frame, the reference branch not counted
        row = dict(task="inference", lab=lab, mouth=mouth_size, batch=done["batch"], precision=precision,
                   host_threads=done["host_threads"], decoder=done["decoder"],
                   **({"hardware_failure": done["hardware_failure"]} if done["hardware_failure"] else {}),
                   frames_per_s=frames / seconds, end_to_end=True, frames=frames, video=description,
                   seconds=seconds, gflops_per_sample=flops / 1e9,
                   achieved_gflops_per_s=flops * frames / seconds / 1e9,
                   stage_seconds={stage: round(value, 3) for stage, value in done["timings"].items()},
                   runs_frames_per_s=rates)
        if published:
            row["speedup_vs_published"] = row["frames_per_s"] / published["frames_per_s"]
        if precision == "bf16":
            reference = os.path.join(folder, f"out_{mouth_size}_fp32.mp4")
            if not os.path.isfile(reference):  # no fp32 row in this run: make its output, untimed
                dub_in_process(dict(job, amp="off", output=reference), seconds_left(opt))
            row["psnr_vs_fp32"] = video_psnr(job["output"], reference)
            boxes = face_boxes(landmarks, (info["width"], info["height"]), frames)
            row["face_psnr_vs_fp32"] = video_psnr(job["output"], reference, boxes)
        rows.append(row)
        return rows


def dub_in_process(job, seconds=None):
    return run_job("dub", job, dict(os.environ, OMP_WAIT_POLICY="PASSIVE"), seconds)
