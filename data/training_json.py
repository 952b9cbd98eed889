"""Loading DINet's `training_json.json`.

Layout: {video_name: {"clip_data_list": [{"frame_path_list": [9 paths], "deep_speech_list": [9 vectors]}, ...]}}.
Files we write add per-video "audio_feature" (its name) and "audio_channel" (its width); a DINet-made
JSON has neither and is DeepSpeech (29-d). Relative frame paths are looked up beside the JSON first,
then in the current directory (where DINet's data_processing.py wrote them from).
"""
import json
import os
from dataclasses import dataclass


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


def _fail(path, problem, fix="make it with `python data_processing.py`"):
    raise SystemExit(f"{path}: {problem}; {fix}")


def _resolve(frame_path, json_dir):
    if os.path.isabs(frame_path):
        return frame_path
    beside_json = os.path.normpath(os.path.join(json_dir, frame_path))
    return beside_json if os.path.exists(beside_json) or not os.path.exists(frame_path) else frame_path


def load_training_json(path, clip_length=9, check_files=True):
    if not os.path.isfile(path):
        _fail(path, "training JSON not found", "prepare data with `python data_processing.py` or pass --train_data")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        _fail(path, f"not valid JSON ({error})")
    if not isinstance(raw, dict) or not raw:
        _fail(path, "not DINet's layout (expected {video_name: {\"clip_data_list\": [...]}})")
    json_dir = os.path.dirname(os.path.abspath(path))
    videos, widths, names = {}, set(), set()
    for video_name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("clip_data_list"), list):
            _fail(path, f"video {video_name!r} has no clip_data_list: not DINet's layout")
        clips = []
        for index, clip in enumerate(entry["clip_data_list"]):
            frames, features = (clip.get("frame_path_list"), clip.get("deep_speech_list")) if isinstance(
                clip, dict) else (None, None)
            if not isinstance(frames, list) or not isinstance(features, list):
                _fail(path, f"{video_name} clip {index} lacks frame_path_list or deep_speech_list: not DINet's layout")
            if not all(isinstance(vector, list) for vector in features):
                _fail(path, f"{video_name} clip {index}: deep_speech_list holds no per-frame vectors: "
                      f"not DINet's layout")
            if len(frames) != clip_length or len(features) != clip_length:
                _fail(path, f"{video_name} clip {index} has {len(frames)} frames and {len(features)} audio vectors, "
                      f"expected {clip_length} of each")
            widths.update(len(vector) for vector in features)
            clips.append(Clip([_resolve(p, json_dir) for p in frames], features))
        videos[video_name] = clips
        names.add(entry.get("audio_feature", "deepspeech"))
        if "audio_channel" in entry:
            widths.add(int(entry["audio_channel"]))
    if not widths:
        _fail(path, "lists no clips")
    if len(widths) != 1:
        _fail(path, f"audio feature widths disagree ({sorted(widths)}): all videos need the same feature",
              "make every video's features with one --audio_feature (`python data_processing.py "
              "--extract_audio_feature --generate_training_json --audio_feature NAME`)")
    if len(names) != 1:
        _fail(path, f"videos use different audio features ({sorted(names)})",
              "make every video's features with one --audio_feature (`python data_processing.py "
              "--extract_audio_feature --generate_training_json --audio_feature NAME`)")
    if check_files:
        for clips in videos.values():
            for clip in clips:
                for frame in clip.frame_paths:
                    if not os.path.isfile(frame):
                        _fail(path, f"lists {frame}, which does not exist",
                              "rerun `python data_processing.py --crop_face --generate_training_json`")
    return TrainingSet(path, videos, names.pop(), widths.pop())


def check_audio_channel(training_set, audio_channel):
    """The width to build the generator with: the data's, and an explicit --audio_channel must agree."""
    if audio_channel is not None and audio_channel != training_set.audio_channel:
        raise SystemExit(
            f"--audio_channel {audio_channel} disagrees with {training_set.path}, whose {training_set.audio_feature} "
            f"features are {training_set.audio_channel} wide; drop --audio_channel (it is read from the data)")
    return training_set.audio_channel
