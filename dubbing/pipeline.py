"""Dub a video: one output frame per 40 ms of driving audio, the mouth regenerated and pasted back softly.

    source video (any fps/codec) -> 25 fps frames (on disk) -> 68-point landmarks (CSV or detected)
    driving audio -> per-frame features (the checkpoint's feature) -> 5-frame windows
    frame t of the output = source frame ping-pong(t), its DINet face crop, mouth masked, generated with
    5 reference crops and audio window t, blended back with a feathered mask, encoded H.264 + AAC.

Threads overlap the work: ffmpeg decodes into a memory map in the background (media/decoder.py; on a GPU with its
hardware decoder, NVDEC, where this ffmpeg can: `decoder="auto"`), generator streams crop and run the generator
batch by batch (optimize_for_inference's copy, references encoded once; channels_last, bf16 autocast with --amp
bf16; or an ONNX export in onnxruntime, dubbing/onnx_generator.py, when the DubbingModel holds one; on a CPU two
batches at once, each on half the threads, `generator_streams`; on a GPU one, cropping the next batch while the
GPU computes this one), and a writer thread streams the frames, in order, to the encoder (media/encoder.py, x264
`veryfast`), the faces blended into them on its own thread on a CPU and a few frames ahead on `host_threads` on a
GPU, where the crops are spread over as many (and, without a landmark CSV, the search for the faces first).
Frames stay 4:2:0 YUV from decoder to encoder (media/yuv.py): only face boxes are converted to RGB and back.
`timings` (a dict) collects the seconds each stage was busy (summed over the generator streams): decode, features,
landmarks, references (their crops, once decoded), crops, generator, blend, encode (waiting on ffmpeg), total.
`batch_size` is the most frames per generator call; on CPU, large mouths get fewer (`frames_per_call`).
`dub` changes no process-wide setting. For speed on CPU, run it as inference.py does: in a process started with
OMP_WAIT_POLICY=PASSIVE (the generator's OpenMP threads then sleep, not spin, while the decoder and encoder need
the cores) and with glibc's allocator kept from mapping memory anew for every large tensor (`tune_cpu_allocator`).
"""
import os
import queue
import threading
import time
from collections import OrderedDict, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import soundfile
import torch
from tqdm import tqdm

from common.devices import usable_cores
from common.errors import UserError, permission_denied
from common.files import NotWritten
from common.geometry import (
    AUDIO_WINDOW,
    NUM_REFERENCES,
    CropGeometry,
    compute_crop_radius,
    crop_box,
    mask_mouth,
    paste_mask,
    sizing_frames,
)
from data.audio_features import FEATURE_WIDTHS, SAMPLE_RATE, compute_audio_feature, load_wav, read_array
from data.openface_csv import read_openface_csv
from data.prepare import FPS
from media.convert import extract_audio
from media.decoder import MAKE_ROOM, DecodedVideo, scratch_folder
from media.encoder import DEFAULT_PRESET, VideoEncoder
from media.ffmpeg import no_cuda_decoder, probe
from media.yuv import rgb_region
from models import DINet
from models.checkpoint import generator_config_of, load_checkpoint, load_network
from models.fast import optimize_for_inference

from .blend import FaceBlender
from .faces import MIN_CROP_RADIUS, FaceChoice, FaceTrack, describe_ranges, fade_weights, find_face, runs, turn
from .onnx_generator import OnnxGenerator

FEATURE_SLACK_S = 0.2   # --audio_feature_path rows may differ from the driving audio's length by this much
REFERENCE_SHOTS = 4     # shots whose reference state dubbing keeps at once (ping-pong comes back to the last ones)
# the crop's scale: the middle of training's [1.05, 1.15). DINet's inference took 1.05, the edge, where a model of
# ours opened the mouth half as far as in its training crops (docs/results.md)
CROP_SCALE = 1.1
# where the references sit among a shot's ranked openings: one in each fifth, leaning closed (0.05, 0.25, ..., 0.85)
REFERENCE_QUANTILES = (np.arange(NUM_REFERENCES) + 0.25) / NUM_REFERENCES
# of a shot's frames, each side of a reference's place among the ranked openings: the earliest frame this near in
# opening is taken, so that dubbing waits for the decoder to reach a shot's first frames, not frames from all of it
REFERENCE_WINDOW = 0.025


@dataclass
class DubbingModel:
    """A trained generator with what dubbing needs to know of it: the crop size it was trained at and the audio
    feature it reads; and the videos its training held out to validate on, which evaluation reads."""
    network: DINet
    mouth_size: int
    audio_feature: str
    held_out: tuple = ()


def load_generator(path, device, mouth_size=None, flag="--pretrained_clip_DINet_path"):
    """The generator of a checkpoint, rebuilt from the checkpoint alone (architecture, mouth size, feature).

    DINet's published checkpoints carry no mouth size or feature name: then `mouth_size` must be given (no
    weight depends on the image size, so the weights cannot tell it) and a 29-wide audio input means DeepSpeech.
    Errors name `flag`, the flag that gave `path`.
    """
    checkpoint = load_checkpoint(path, flag, needs="net_g", expected="a netG_model_epoch_N.pth from "
                                                                     "train_DINet_clip.py or train_DINet_frame.py")
    config = generator_config_of(checkpoint)
    trained_size = checkpoint.get("mouth_region_size")
    if trained_size and mouth_size and trained_size != mouth_size:
        raise UserError(f"{flag} {path}: trained at mouth {trained_size}, but --mouth_region_size is {mouth_size}; "
                         f"drop --mouth_region_size (it is read from the checkpoint) or pass a {mouth_size} checkpoint")
    if not trained_size and not mouth_size:
        raise UserError(f"{flag} {path}: the checkpoint does not record its mouth size (DINet's do not) and its "
                         f"weights cannot tell it; pass --mouth_region_size: 256 for DINet's "
                         f"clip_training_DINet_256mouth.pth, else the size it was trained at")
    feature = checkpoint.get("audio_feature") or next(
        (name for name, width in FEATURE_WIDTHS.items() if width == config.audio_channel), None)
    if feature is not None and FEATURE_WIDTHS.get(feature) != config.audio_channel:
        raise UserError(f"{flag} {path}: records {feature!r} audio features, which its {config.audio_channel}-wide "
                        f"audio input cannot read; pass a checkpoint that train_DINet_clip.py or train_DINet_frame.py "
                        f"wrote")
    network = DINet.from_config(config)
    load_network(network, checkpoint, "net_g", path, flag)
    held_out = tuple((checkpoint.get("validation_split") or {}).get("videos", ()))
    return DubbingModel(network.to(device).eval(), trained_size or mouth_size, feature, held_out)


def load_audio_features(driving_audio_path, feature, feature_path, work_dir):
    """(T, C) features of the driving audio, computed here (from driving_wav(work_dir)), or read from `feature_path`
    (.npy/.txt)."""
    if feature_path:
        if not os.path.isfile(feature_path):
            raise UserError(f"--audio_feature_path {feature_path}: no such file")
        try:
            features = read_array(feature_path)
        except PermissionError:
            raise permission_denied(f"--audio_feature_path {feature_path}") from None
        except (ValueError, OSError, EOFError) as error:
            raise UserError(f"--audio_feature_path {feature_path}: cannot read it ({error}); pass "
                             f"a .npy or .txt array of (frames, channels)") from None
        width = FEATURE_WIDTHS.get(feature)
        if features.ndim != 2 or (width is not None and features.shape[1] != width):
            raise UserError(f"--audio_feature_path {feature_path}: shape {features.shape}, but the checkpoint "
                             f"expects (frames, {width}) {feature} features; pass {feature} features of the "
                             f"driving audio, 25 per second, or drop the flag")
        finite = np.isfinite(features).all(axis=1)
        if not finite.all():
            raise UserError(f"--audio_feature_path {feature_path}: row {np.flatnonzero(~finite)[0]} holds values that "
                             f"are NaN or infinite; compute the features of the driving audio again, or "
                             f"drop the flag")
        return features.astype(np.float32)
    if feature == "deepspeech" or feature is None:
        raise UserError("this checkpoint takes DeepSpeech features, which need TensorFlow: compute them for the "
                         "driving audio elsewhere and pass --audio_feature_path FILE.npy (frames x 29, 25 per second)")
    return compute_audio_feature(driving_wav(driving_audio_path, work_dir), feature)


def driving_wav(driving_audio_path, work_dir):
    """The driving audio as 16 kHz mono wav in work_dir, extracted on first use."""
    path = os.path.join(work_dir, "driving.wav")
    if not os.path.isfile(path):
        try:
            extract_audio(driving_audio_path, path)
        except NotWritten:  # work_dir is in the temporary folder, the user's to choose
            raise UserError(f"{driving_audio_path}: its audio could not be written as wav to the temporary folder "
                            f"{os.path.dirname(work_dir)}, which is full; {MAKE_ROOM}") from None
        if soundfile.info(path).frames == 0:  # a stream ffmpeg lists but cannot decode (its header says so)
            raise UserError(f"{driving_audio_path}: no sound of its audio stream could be decoded: a partial or "
                            f"damaged file? Pass the whole file, or re-encode it with ffmpeg")
    return path


SILENCE_LEVEL = 0.05  # a frame whose RMS is under this fraction of the loud frames' (95th percentile) is silent
SILENCE_FRAMES = 4    # silent frames in a row (160 ms) that hold the mouth closed under --close_on_silence


def silent_frames(wav, num_frames, fps=25):
    """(num_frames,) bool: frames in runs of SILENCE_FRAMES or more whose audio (16 kHz mono) is silent."""
    samples = SAMPLE_RATE // fps
    frames = np.resize(np.pad(wav, (0, max(0, num_frames * samples - len(wav)))), (num_frames, samples))
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    quiet = rms < SILENCE_LEVEL * max(np.percentile(rms, 95), 1e-4)
    silent = np.zeros(num_frames, bool)
    for start, stop in runs(quiet, np.zeros(num_frames, int)):
        silent[start:stop] = stop - start >= SILENCE_FRAMES
    return silent


LENGTHS = ("pingpong", "loop", "cut", "pad")


def ping_pong(num_source, num_output):
    """DINet's alignment of video to audio: the source forwards then backwards, repeated, cut to length."""
    cycle = np.concatenate([np.arange(num_source), np.arange(num_source)[::-1]])
    return np.resize(cycle, num_output)


def output_index(length, num_source, num_audio):
    """Source frame of each output frame under --length: the audio's length of frames, the source played forwards
    and backwards (pingpong), from the start again (loop), or holding its last frame (pad); or (cut) as many
    frames as both have, the audio cut to them."""
    if length == "pingpong":
        return ping_pong(num_source, num_audio)
    if length == "loop":
        return np.arange(num_audio) % num_source
    if length == "pad":
        return np.minimum(np.arange(num_audio), num_source - 1)
    return np.arange(min(num_source, num_audio))


def first_pasted_row(mask):
    """The first row of a generated crop that pasting with `mask` reads: the first row the mask weighs, less two
    for the bilinear resize to the face box (it reads the crop rows on both sides of a box row). The generator
    need not compute the rows above (DINet.generate's `first_row`): 22 of the 104 at mouth 64."""
    return max(0, int(np.argmax(mask.max(axis=1) > 0)) - 2)


def crop_radii(landmarks, video_size, segment=None):
    """Per output frame, DINet's crop radius fitting its 5-frame landmark window, sized over the frames around it
    as training crops are (SIZING_WINDOW), both windows kept within the frame's `segment` (a run of usable frames
    of one shot, the window's ends held; default: one segment); None where no crop fits or the segment is -1 (no
    usable face)."""
    segment = np.zeros(len(landmarks), int) if segment is None else segment
    radii = []
    for t in range(len(landmarks)):
        if segment[t] < 0:
            radii.append(None)
            continue
        window = [u if 0 <= u < len(landmarks) and segment[u] == segment[t] else t
                  for u in range(t - AUDIO_WINDOW // 2, t + AUDIO_WINDOW // 2 + 1)]
        sizing = landmarks[sizing_frames(t, t + 1, segment, segment[t])]
        radius = compute_crop_radius(video_size, landmarks[window], random_scale=CROP_SCALE, sizing=sizing)
        if radius is None:  # the face size jumps within the window: fall back to this frame alone
            radius = compute_crop_radius(video_size, landmarks[t:t + 1], random_scale=CROP_SCALE)
        radii.append(radius)
    return radii


def segments(track):
    """(T,) per source frame the number of its run of usable frames within one shot, -1 where none."""
    segment = np.full(len(track.reason), -1)
    for number, (start, stop) in enumerate(runs(track.usable, track.shot)):
        segment[start:stop] = number
    return segment


def choose_references(landmarks, candidates):
    """NUM_REFERENCES of the output frames `candidates` (ascending; landmarks (len, 68, 2) theirs), ranked by mouth
    opening (a turned face ranks as more open): at each of REFERENCE_QUANTILES the earliest frame within
    REFERENCE_WINDOW of it, the most closed first. Training draws each reference at random from a whole video, so its
    references span the video's openings; five closed ones gave mouths that opened far less, five random ones a
    result that varied with the draw (docs/results.md)."""
    face_height = np.maximum(landmarks[:, 8, 1] - landmarks[:, 27, 1], 1e-6)
    opening = np.linalg.norm(landmarks[:, 66] - landmarks[:, 62], axis=1) / face_height
    ranked = np.asarray(candidates)[np.argsort(opening + 0.2 * turn(landmarks), kind="stable")]
    places, reach = np.round(REFERENCE_QUANTILES * (len(ranked) - 1)).astype(int), round(REFERENCE_WINDOW * len(ranked))
    return np.array([ranked[max(0, place - reach):place + reach + 1].min() for place in places])


def face_crop(frame, landmarks, radius, geometry, colour=None):
    """The DINet face crop in RGB resized to the geometry, and its box in the frame: `frame` is (H, W, 3) RGB, or
    with `colour` (media.yuv.Colour) a 4:2:0 frame's (Y, U, V) planes."""
    box = crop_box(landmarks, radius)
    top, bottom, left, right = box
    crop = frame[top:bottom, left:right] if colour is None else rgb_region(frame, colour, *box)
    return cv2.resize(crop, (geometry.width, geometry.height), interpolation=cv2.INTER_AREA), box


def to_batch(images, device=None):
    """list of (H, W, C) uint8 -> (B, C, H, W) float in [0, 1] on `device` (channels_last strides: a view of the
    stack), made float there: a quarter of the bytes to copy to a GPU."""
    return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float() / 255.0


@dataclass
class DubResult:
    output_path: str
    frames: int
    passed_through: int
    face_video_path: str = None
    batch_size: int = None       # frames per generator call, as run
    passed_through_ranges: str = ""  # describe_ranges of the output frames passed through
    faces: tuple = ()            # whom it dubbed, per shot
    shots: int = 1
    decoder: str = "software"    # what decoded the source: "cuda" (the GPU's NVDEC) or ffmpeg's "software" decoder
    hardware_failure: str = None  # why NVDEC did not decode it on a GPU: ffmpeg's message, or that ffmpeg has none
    source_frames: int = None    # frames of the source at 25 fps, as far as the speech lasts (1: a photograph)
    speech_frames: int = None    # frames the speech lasts at 25 fps
    notes: tuple = ()            # what the user should know of how it was dubbed (inference.run's "note:" lines)


# On CPU a generator call's activations should stay around this many face-crop pixels per call: past it, a
# batch of large crops runs slower per frame, as its tensors no longer fit in caches. Mouth 64 gets 12 frames
# per call, 128 gets 3, 256 gets 1.
CPU_PIXELS_PER_CALL = 100_000


def frames_per_call(batch_size, geometry, device):
    if device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_PIXELS_PER_CALL // (geometry.height * geometry.width)))


class Timings(defaultdict):
    """Seconds per stage; stages in different threads overlap, so they add up to more than the total."""

    def __init__(self):
        super().__init__(float)
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage):
        started = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:  # the generator streams add to the same stages
                self[stage] += time.perf_counter() - started


def dub(source_video_path, driving_audio_path, generator, output_path, device, landmark_csv=None,
        audio_feature_path=None, batch_size=16, face_video_path=None, amp=None, face=FaceChoice(),
        length="pingpong", strict=False, close_on_silence=False, channels_last=True, preset=DEFAULT_PRESET,
        timings=None, progress=True, decoder="auto"):
    started = time.perf_counter()
    times = Timings()
    geometry = CropGeometry(generator.mouth_size)
    batch_size = frames_per_call(batch_size, geometry, device)
    nvdec_wanted = device.type == "cuda" and decoder == "auto"
    # every --length shows the video's first frames only, as many as the speech lasts: none past them is decoded
    seconds = probe(driving_audio_path, "audio file")["duration"]
    shown = int(np.ceil((seconds + FEATURE_SLACK_S) * FPS)) + 1 if seconds else None
    with scratch_folder("work") as work_dir:
        video = DecodedVideo(source_video_path, background=True, pixel_format="yuv420p",  # decodes in the background
                             cuda_device=nvdec_device(device) if nvdec_wanted else None, max_frames=shown)
        try:
            with times("generator"):  # meanwhile: on CPU its compiled kernels load in the background
                network = (generator.network if isinstance(generator.network, OnnxGenerator)  # runs as exported
                           else optimize_for_inference(generator.network, device, amp, channels_last))
            with times("features"):
                features = load_audio_features(driving_audio_path, generator.audio_feature, audio_feature_path,
                                               work_dir)
            # features of other audio: the lips would not follow it
            if audio_feature_path and seconds and abs(len(features) / FPS - seconds) > FEATURE_SLACK_S:
                raise UserError(f"--audio_feature_path {audio_feature_path}: {len(features)} rows are "
                                 f"{len(features) / FPS:.2f} s at {FPS} per second, but {driving_audio_path} lasts "
                                 f"{seconds:.2f} s; pass the features of this audio, or drop the flag")
            if len(features) < AUDIO_WINDOW:
                heard = round(seconds * 1000) if seconds else len(features) * 40  # the features round up
                raise UserError(f"{driving_audio_path}: {heard} ms of audio; dubbing needs at least "
                                 f"{AUDIO_WINDOW * 40} ms ({AUDIO_WINDOW} video frames); pass a longer "
                                 f"--driving_audio_path")
            threads = host_threads(device)  # that find the faces, crop and blend
            track = _face_track(video, landmark_csv, source_video_path, face, times, progress, threads)
            # a photograph (one frame) is held for the speech's length whatever --length says
            index = output_index("pad" if len(track.reason) == 1 else length, len(track.reason), len(features))
            radii = crop_radii(track.landmarks[index], video.size, segments(track)[index])
            reason = track.reason[index]
            reason[[t for t, radius in enumerate(radii) if radius is None and reason[t] == "face"]] = "crop"
            dubbed = reason == "face"
            passed = np.flatnonzero(~dubbed)
            passed_ranges = describe_ranges(passed, reason[passed])
            if not dubbed.any():
                fix = (f"the face larger in the picture, {2 * MIN_CROP_RADIUS} px or more from nose to chin (a higher "
                       f"resolution, or the camera closer)" if (reason == "small").all() else
                       "one visible, upright, frontal face, the whole lower face inside the picture")
                raise UserError(f"{source_video_path}: no frame has a usable face ({passed_ranges}); use a video with "
                                 f"{fix}")
            if strict and len(passed):
                raise UserError(f"--strict: {len(passed)} of {len(index)} frames have no usable face "
                                 f"({passed_ranges}); drop --strict to pass them through")
            shot = track.shot[index]
            weight = fade_weights(dubbed, shot)
            landmarks = track.landmarks
            source = _SourceFrames(video, landmark_csv, len(track.reason))
            crop = lambda t: face_crop(source[index[t]], landmarks[index[t]], radii[t], geometry, video.colour)
            chosen = {number: choose_references(landmarks[index[candidates]], candidates)
                      for number in np.unique(shot[dubbed])  # each shot's references from its own frames
                      for candidates in [np.flatnonzero(dubbed & (shot == number))]}
            lock, kept = threading.Lock(), OrderedDict()

            def references(number):
                """(the shot's reference state, its most closed reference crop), made when a batch first needs them;
                the last REFERENCE_SHOTS kept (a long video's shots, each tens of MB at mouth 256, would not fit)."""
                with lock:
                    if number not in kept:
                        with times("references"):  # mostly waiting for the decoder to reach them
                            crops = [crop(t)[0] for t in chosen[number]]
                            batch = to_batch([np.concatenate(crops, axis=2)], device)  # (1, 15, H, W)
                        with times("generator"):
                            kept[number] = network.encode_reference(batch), to_batch([crops[0]], device)
                        while len(kept) > REFERENCE_SHOTS:
                            kept.popitem(last=False)
                    kept.move_to_end(number)
                    return kept[number]
            # under --close_on_silence, how much of the reference's closed mouth replaces the generated one
            hold = fade_weights(silent_frames(load_wav(driving_wav(driving_audio_path, work_dir)), len(index)),
                                np.zeros(len(index), int)) if close_on_silence else np.zeros(len(index))
            padded_features = np.pad(features, ((2, 2), (0, 0)), mode="edge")
            height, width = video.stored
            audio_seconds = len(index) / 25 if len(index) < len(features) else None  # --length cut
            encoders = [VideoEncoder(output_path, width, height, audio_path=driving_audio_path, preset=preset,
                                     colour=video.colour, threads=encoder_threads(device), audio_seconds=audio_seconds)]
            try:
                if face_video_path:
                    encoders.append(VideoEncoder(face_video_path, geometry.width, geometry.height,
                                                 audio_path=driving_audio_path, preset=preset,
                                                 audio_seconds=audio_seconds))
            except BaseException:
                encoders[0].abort()
                raise
            mask = paste_mask(geometry)
            writer = _Writer(source, index, FaceBlender(mask, video.colour), times, threads, *encoders)
            # on a GPU the host's crops are what the generator waits for: spread over `threads`
            cropper = ThreadPoolExecutor(threads, "dub-crop") if threads > 1 else None
            first_row = 0 if face_video_path else first_pasted_row(mask)  # the face video shows whole crops

            def generated(frames):  # in a generator stream: crops and generator calls for one batch
                batch = [t for t in frames if dubbed[t]]
                if not batch:
                    return frames, batch, (), None, ()
                with times("crops"):
                    crops, boxes = zip(*(cropper.map(crop, batch) if cropper else map(crop, batch)))
                    masked = mask_mouth(to_batch(crops, device), geometry)
                    audio = torch.from_numpy(np.stack([padded_features[t:t + AUDIO_WINDOW].T for t in batch]))
                    audio = audio.float().to(device)
                with times("generator"):
                    faces, start = [], 0
                    for number in dict.fromkeys(shot[batch]):  # one call per shot the batch spans, in order
                        stop = start + int(np.sum(shot[batch] == number))
                        # on a GPU: queued
                        state, closed_mouth = references(number)
                        out = network.generate(masked[start:stop], audio[start:stop], state, first_row)
                        held = torch.from_numpy(hold[batch[start:stop]]).to(out).view(-1, 1, 1, 1)
                        faces.append(out if not held.any() else out + held * (closed_mouth.to(out) - out))
                        start = stop
                    return frames, batch, boxes, torch.cat(faces), weight[batch]

            streams = generator_streams(device)
            pool = ThreadPoolExecutor(streams, "dub-generator", initializer=torch.set_num_threads,
                                      initargs=(max(1, torch.get_num_threads() // streams),))
            pending = deque()  # batches given to the streams, in order; the writer takes the oldest
            try:
                starts = range(0, len(index), batch_size)
                for start in tqdm(starts, desc="dubbing", unit="batch", disable=not progress):
                    pending.append(pool.submit(generated, range(start, min(start + batch_size, len(index)))))
                    if len(pending) > streams:
                        writer.put(_faces(*pending.popleft().result(), times))
                while pending:
                    writer.put(_faces(*pending.popleft().result(), times))
                source.check_count()  # before the writer finishes: a wrong landmark CSV leaves no output file
                writer.finish()
            except BaseException:
                writer.cancel()
                raise
            finally:
                pool.shutdown(cancel_futures=True)  # after an error: the batches not started are dropped
                if cropper:
                    cropper.shutdown(cancel_futures=True)
        finally:
            times["decode"] = video.decode_seconds
            video.close()
    times["total"] = time.perf_counter() - started
    if timings is not None:
        timings.update(times)
    return DubResult(output_path, len(index), len(passed), face_video_path, batch_size, passed_ranges,
                     tuple(track.chosen), int(track.shot.max()) + 1, video.decoder,
                     video.hardware_failure or (no_cuda_decoder() if nvdec_wanted else None), len(track.reason),
                     len(features))


def nvdec_device(device):
    """The CUDA device whose hardware decoder (NVDEC) decodes the source when dubbing on `device`: on a GPU, where
    this ffmpeg can decode with CUDA, the same GPU (its decoder frees the CPU cores the encoder needs); else None,
    ffmpeg's software decoder."""
    if device.type != "cuda" or no_cuda_decoder():
        return None
    return torch.cuda.current_device() if device.index is None else device.index


def encoder_threads(device):
    """x264's threads for the dubbed video: on a CPU, one per 4 generator threads (the encoder only needs to keep
    up with the generator, and each frame thread costs cores in synchronisation and duplicated analysis); on a
    GPU x264's own choice (1.5 per core), as the generator there outruns one encoder thread (docs/performance.md)."""
    return max(1, torch.get_num_threads() // 4) if device.type == "cpu" else None


def host_threads(device):
    """Threads that crop frames and blend faces beside the generator, and that find the faces before it (without a
    landmark CSV). On a CPU one: the crops stay in the generator streams and the blend in the writer, as the cores
    are the generator's (and the decoder's, which the face detector keeps pace with there). On a GPU, where the
    host's crops and blends are what dubbing waits for, a quarter of the cores (x264's threads need the rest), 2 to
    8."""
    if device.type == "cpu":
        return 1
    return max(2, min(8, usable_cores() // 4))


def generator_streams(device):
    """Batches in the generator at once. On a CPU with 2+ threads, two, each on half of them: a generator call
    spread over all cores stalls whenever the decoder, the encoder or the writer takes one of them (its threads
    meet at every layer), while two calls on a core each go on side by side. On a GPU, one: the kernels are
    queued and the host crops the next batch meanwhile."""
    return 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1


def _faces(frames, batch, boxes, out, weights, times):
    """The writer's item for a batch: (frames, {t: (face (H, W, 3) float, box, weight)}), the faces copied to the
    host (on a GPU, waiting for the generator to finish them)."""
    if not batch:
        return frames, {}
    with times("generator"):
        faces = (out.clamp(0, 1) * 255).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return frames, {t: item for t, *item in zip(batch, faces, boxes, weights)}


class _SourceFrames:
    """source[i]: frame i of the video as it decodes; a landmark CSV with more rows than the video has frames
    is the user's error, named as such (the count is only known once decoding ends)."""

    def __init__(self, video, landmark_csv, expected):
        self.video, self.landmark_csv, self.expected = video, landmark_csv, expected

    def __getitem__(self, i):
        try:
            return self.video.frame(i)
        except IndexError:
            self.check_count()
            raise

    def check_count(self):
        count = self.video.wait_all()
        whole = self.video.max_frames is None or count < self.video.max_frames  # else it stopped at the speech's end
        if self.landmark_csv and (count != self.expected if whole else count > self.expected):
            raise UserError(f"--source_openface_landmark_path {self.landmark_csv}: {self.expected} rows for {count} "
                             f"frames at 25 fps; run the landmark step on the same 25 fps video, or drop the flag")


def _face_track(video, landmark_csv, source_video_path, face, times, progress, threads):
    if landmark_csv:
        with times("landmarks"):
            return FaceTrack.whole(read_openface_csv(landmark_csv))  # rows checked against the frames as they decode
    track = find_face(video, face, times, progress, threads)
    if not (track.reason != "none").any():
        raise UserError(f"{source_video_path}: no face found in any frame; use a video with one visible, "
                         f"frontal face")
    return track


class _Writer(threading.Thread):
    """Blends generated faces into their frames and streams the frames to the encoder(s), in order, while the
    main thread generates the next batch. Items: (output frame numbers, {t: (face (H, W, 3) float, box, weight)}).
    With `threads` above 1 the frames are blended on that many threads, a few frames ahead of the encoder."""

    def __init__(self, source, index, blender, times, threads, encoder, face_encoder=None):
        super().__init__(name="dub-writer", daemon=True)
        self.source, self.index, self.blender, self.times = source, index, blender, times
        self.threads, self.encoder, self.face_encoder = threads, encoder, face_encoder
        self.blank_face = np.zeros((*blender.mask.shape, 3), np.uint8)  # the face video's frame where none was dubbed
        self.items = queue.Queue(maxsize=2)
        self.error = None
        self.cancelled = False
        self.start()

    def put(self, item):
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self):
        self.put(None)
        self.join()
        if self.error is not None:
            raise self.error

    def cancel(self):
        self.cancelled = True
        self.join()

    def run(self):
        encoders = [e for e in (self.encoder, self.face_encoder) if e is not None]
        try:
            self._write()
            for encoder in encoders:
                encoder.close()
        except BaseException as error:
            self.error = error
            for encoder in encoders:
                encoder.abort()
        finally:
            self.times["encode"] += sum(e.seconds for e in encoders)

    def _next(self):
        while True:
            if self.cancelled:
                raise RuntimeError("dubbing stopped")
            try:
                return self.items.get(timeout=0.1)
            except queue.Empty:
                continue

    def _write(self):
        pool = ThreadPoolExecutor(self.threads, "dub-blend") if self.threads > 1 else None
        pending = deque()
        try:
            while (item := self._next()) is not None:
                frames, generated = item
                for t in frames:
                    if pool is None:
                        self._send(*self._frame(t, generated.get(t)))
                        continue
                    pending.append(pool.submit(self._frame, t, generated.get(t)))
                    while len(pending) > 2 * self.threads:  # blended or being blended before the encoder takes them
                        self._send(*pending.popleft().result())
            while pending:
                self._send(*pending.popleft().result())
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)

    def _frame(self, t, generated):
        """(frame t's bands in the order of its bytes, the face for the face video or None): the frame as decoded,
        or with `generated` = (face, box, weight) blended into copies of the rows of its face box."""
        planes = self.source[self.index[t]]
        if generated is None:
            return planes, None
        with self.times("blend"):
            face, (top, bottom, left, right), weight = generated
            chroma = slice(top // 2, (bottom + 1) // 2)
            # only the rows of the face box are copied and changed
            rows = (np.array(planes[0][top:bottom]), np.array(planes[1][chroma]), np.array(planes[2][chroma]))
            self.blender.paste(rows, face, (top, bottom, left, right), weight)
            bands = [band for plane, changed, span in zip(planes, rows, (slice(top, bottom), chroma, chroma))
                     for band in (plane[:span.start], changed, plane[span.stop:])]
            return bands, face.astype(np.uint8)

    def _send(self, bands, face):
        self.encoder.write(*bands)
        if self.face_encoder is not None:
            self.face_encoder.write(face if face is not None else self.blank_face)
