"""Loading and checking DINet's `training_json.json`.

Layout: {video_name: {"clip_data_list": [{"frame_path_list": [9 paths], "deep_speech_list": [9 vectors]}, ...]}}.
Files we write add per-video "audio_feature" (its name) and "audio_channel" (its width); a DINet-made
JSON has neither and is DeepSpeech (29-d). Relative frame paths are looked up beside the JSON first,
then in the current directory (where DINet's data_processing.py wrote them from); they may not climb out of
that folder with `..`. Absolute paths are taken as written.

`read_training_json` finds every problem (one line each, naming the file, the video, the clip and the list);
`load_training_json` (every training command) and `data_processing.py --check` both use it.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from common.errors import UserError, permission_denied
from common.files import write_atomically
from common.geometry import CLIP_LENGTH

MAKE = "make it with `python data_processing.py --generate_training_json`"
REMAKE = "make it again with `python data_processing.py --crop_face --generate_training_json`"
FLOAT32_MAX = float(np.finfo(np.float32).max)  # training reads audio vectors as float32
ONE_FEATURE = ("make every video's features with one --audio_feature (`python data_processing.py "
               "--extract_audio_feature --generate_training_json --audio_feature NAME`)")


@dataclass
class Clip:
    frame_paths: list      # 9 face-crop image paths
    audio_features: list   # 9 per-frame audio vectors


@dataclass
class TrainingSet:
    path: str
    videos: dict            # video name -> list[Clip]
    audio_feature: str      # "deepspeech", "mel", ...
    audio_channel: int      # width of one audio vector


def climbs_out(relative_path):
    """Whether a relative path leaves the folder it is read from (`..` above its start)."""
    first = os.path.normpath(relative_path).split(os.sep)[0]
    return first == os.pardir


def _resolve(frame_path, json_dir):
    if os.path.isabs(frame_path):
        return frame_path
    beside_json = os.path.normpath(os.path.join(json_dir, frame_path))
    return beside_json if os.path.exists(beside_json) or not os.path.exists(frame_path) else frame_path


def _bad_audio_value(vectors):
    """Where deep_speech_list holds what training cannot use (a value that is not a number, NaN, inf), or None."""
    try:
        array = np.array(vectors)
        if array.dtype.kind in "fiu" and array.ndim == 2 and (np.abs(array) <= FLOAT32_MAX).all():
            return None  # the common case, without a Python loop over every value
    except (ValueError, OverflowError):
        pass
    for row, vector in enumerate(vectors):
        for column, value in enumerate(vector):
            field = f"deep_speech_list[{row}][{column}]"
            if type(value) not in (int, float):
                return f"{field}: {json.dumps(value)[:40]} is not a number"
            if not abs(value) <= FLOAT32_MAX:  # NaN too
                return f"{field}: {json.dumps(value)[:40]} is not a finite float32 number"
    return "deep_speech_list: holds values that are not plain numbers"


def _check_clip(clip, where, clip_length, json_dir, check_files, problems):
    """The Clip, with its problems appended to `problems`; None when it cannot be read as one."""
    frames, vectors = (clip.get("frame_path_list"), clip.get("deep_speech_list")) if isinstance(
        clip, dict) else (None, None)
    if not isinstance(frames, list) or not isinstance(vectors, list):
        problems.append(f"{where}: no frame_path_list or deep_speech_list")
        return None
    if not all(isinstance(vector, list) and vector for vector in vectors):
        problems.append(f"{where}: deep_speech_list holds no per-frame vectors")
        return None
    found = len(problems)
    if len(frames) != clip_length or len(vectors) != clip_length:
        problems.append(f"{where}: {len(frames)} frames and {len(vectors)} audio vectors, expected {clip_length} "
                        f"of each")
    if len({len(vector) for vector in vectors}) == 1:  # different widths are reported for the whole file
        bad_value = _bad_audio_value(vectors)
        if bad_value:
            problems.append(f"{where}, {bad_value}")
    paths = []
    for position, frame in enumerate(frames):
        field = f"{where}, frame_path_list[{position}]"
        if not isinstance(frame, str) or not frame:
            problems.append(f"{field}: {json.dumps(frame)[:40]} is not a path")
        elif not os.path.isabs(frame) and climbs_out(frame):
            problems.append(f"{field}: {frame} leaves the dataset folder (a relative frame path may not climb out "
                            f"of the JSON's folder with ..)")
        else:
            paths.append(_resolve(frame, json_dir))
            if check_files and not os.path.isfile(paths[-1]):
                moved = " (an absolute path: the data is not where it was when the JSON was made)"
                problems.append(f"{field}: {frame} does not exist{moved if os.path.isabs(frame) else ''}")
    return Clip(paths, vectors) if len(problems) == found else None


def read_training_json(path, clip_length=CLIP_LENGTH, check_files=True, flag="--train_data"):
    """(TrainingSet, []) for a training JSON that is fine to train on, else (None, every problem, one line each,
    naming `path` and the fix): DINet's layout, clip_length frames and audio vectors per clip, every audio value a
    finite number, one audio width throughout (and the declared audio_channel), one audio feature, every frame
    path inside the dataset (see climbs_out) and, with check_files, present. `flag`: how the file was given."""
    if not os.path.isfile(path):
        return None, [f"{path}: training JSON not found; prepare data with `python data_processing.py` or pass "
                      f"{flag}"]
    try:
        with open(path) as f:
            raw = json.load(f)
    except PermissionError:
        return None, [str(permission_denied(path))]
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: arrays nested thousands deep
        return None, [f"{path}: not valid JSON ({error}); {MAKE}"]
    if not isinstance(raw, dict) or not raw:
        return None, [f"{path}: not DINet's layout ({{video_name: {{\"clip_data_list\": [...]}}}}) or empty; {MAKE}"]
    json_dir = os.path.dirname(os.path.abspath(path))
    problems, videos, first_of_width, features = [], {}, {}, set()
    for video, entry in raw.items():
        clips = entry.get("clip_data_list") if isinstance(entry, dict) else None
        if not isinstance(clips, list) or not clips:
            problems.append(f"{video}: no clip_data_list, or an empty one")
            continue
        feature, declared = entry.get("audio_feature", "deepspeech"), entry.get("audio_channel")
        if not isinstance(feature, str) or not (declared is None or type(declared) is int):
            problems.append(f"{video}: audio_feature {json.dumps(feature)[:40]} and audio_channel "
                            f"{json.dumps(declared)[:40]} are not a name and a width")
            continue
        features.add(feature)
        videos[video] = []
        for index, clip in enumerate(clips):
            where = f"{video} clip {index}"
            clip = _check_clip(clip, where, clip_length, json_dir, check_files, problems)
            videos[video].append(clip)
            for width in sorted({len(vector) for vector in clip.audio_features}) if clip else ():
                first_of_width.setdefault(width, where)
                if declared is not None and width != declared:
                    problems.append(f"{where}: audio vectors {width} wide, but audio_channel says {declared}")
    lines = [f"{path}: {problem}; {REMAKE}" for problem in problems]
    if len(first_of_width) > 1:
        lines.append(f"{path}: audio feature widths disagree ({sorted(first_of_width)}): " + ", ".join(
            f"{width} first in {where}" for width, where in sorted(first_of_width.items())) + f"; {ONE_FEATURE}")
    if len(features) > 1:
        lines.append(f"{path}: videos use different audio features ({', '.join(sorted(features))}); {ONE_FEATURE}")
    if lines:
        return None, lines
    return TrainingSet(path, videos, features.pop(), first_of_width.popitem()[0]), []


def write_json_split(path, held_out, trained_path, held_out_path):
    """Write the training JSON `path` as two, beside it (relative frame paths stay valid), atomically: the videos
    named in `held_out` to `held_out_path`, the others to `trained_path`."""
    for out_path in (trained_path, held_out_path):
        if os.path.dirname(os.path.abspath(out_path)) != os.path.dirname(os.path.abspath(path)):
            raise ValueError(f"{out_path}: a part of {path} must be written beside it")
    with open(path) as f:
        raw = json.load(f)
    missing = sorted(set(held_out) - set(raw))
    if missing:
        raise UserError(f"{path}: no video {missing[0]}; pass videos of that training JSON")
    for out_path, names in ((trained_path, [name for name in raw if name not in held_out]), (held_out_path, held_out)):
        write_atomically(out_path, lambda f: json.dump({name: raw[name] for name in names}, f), mode="w")


def load_training_json(path, clip_length=CLIP_LENGTH, check_files=True):
    """The TrainingSet at `path`, or exit with its first problem in one line (read_training_json)."""
    training_set, problems = read_training_json(path, clip_length, check_files)
    if problems:
        more = len(problems) - 1
        raise UserError(problems[0] + (f" ({more} more: `python data_processing.py --check --json {path}` lists "
                                        f"them)" if more else ""))
    return training_set


def check_audio_channel(training_set, audio_channel):
    """The width to build the generator with: the data's, and an explicit --audio_channel must agree."""
    if audio_channel is not None and audio_channel != training_set.audio_channel:
        raise UserError(
            f"--audio_channel {audio_channel} disagrees with {training_set.path}, whose {training_set.audio_feature} "
            f"features are {training_set.audio_channel} wide; drop --audio_channel (it is read from the data)")
    return training_set.audio_channel
