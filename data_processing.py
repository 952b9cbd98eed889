"""Turn a folder of talking-head videos into a DINet training set (DINet's flags and directory layout),
on Linux with pip-installed packages only: no OpenFace, no TensorFlow.

All steps at once, on videos of any frame rate in any container ffmpeg reads (HEVC included):

    python data_processing.py --all --source_video_dir DIR [--workers 2] [--audio_feature mel] [--debug_draw]

or one step at a time (each skips what is already done; the videos then come from --source_video_dir,
by default ./asserts/training_data/split_video_25fps):

    python data_processing.py --extract_video_frame
    python data_processing.py --extract_audio
    python data_processing.py --extract_audio_feature --audio_feature mel     # mfcc; or deepspeech --deepspeech_dir D
    python data_processing.py --detect_landmarks     # mediapipe face mesh -> 68 points; OpenFace CSVs in
                                                     # --openface_landmark_dir are used instead when present
    python data_processing.py --crop_face
    python data_processing.py --generate_training_json --audio_feature mel
    python data_processing.py --debug_draw           # images of the 68 points and the crop, to look at

A video that cannot be used (unreadable, no audio, too short, no face in too many frames, several faces,
a face beyond DINet's crop limits) is skipped, with its reason in the report printed at the end. Check a training JSON:

    python data_processing.py --check --json ./asserts/training_data/training_json.json

Or make a small procedural demo set (videos, landmarks and every step above) to try training with:

    python data_processing.py --make_demo_data --demo_dir ./asserts/demo_data --num_videos 3 --seed 0
"""
import argparse
import os

from common.errors import ArgumentParser, run_command, stopped_without
from common.files import check_writable
from common.geometry import CLIP_LENGTH
from config.ranges import SEED, integer, number
from data import prepare
from data.audio_features import FEATURE_WIDTHS
from data.training_json import read_training_json

TRAINING_DATA = "./asserts/training_data"
MAX_PROBLEM_LINES = 50  # --check: enough to see the pattern, not a wall of text


def build_parser():
    defaults = prepare.Layout.under(TRAINING_DATA)
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_argument_group("steps (DINet's, plus landmark detection)")
    steps.add_argument("--all", action="store_true", help="every step below, from videos to the training JSON")
    steps.add_argument("--extract_video_frame", action="store_true", help="videos -> 25 fps jpg frames")
    steps.add_argument("--extract_audio", action="store_true", help="videos -> mono 16 kHz wav")
    steps.add_argument("--extract_audio_feature", action="store_true", help="wav -> per-frame audio features")
    steps.add_argument("--extract_deep_speech", action="store_true",
                       help="DINet's step: same as --extract_audio_feature --audio_feature deepspeech")
    steps.add_argument("--detect_landmarks", action="store_true",
                       help="videos -> 68-point landmark CSVs (mediapipe), unless OpenFace's CSV is there")
    steps.add_argument("--crop_face", action="store_true", help="frames + landmarks -> 9-frame face-crop clips")
    steps.add_argument("--generate_training_json", action="store_true", help="crops + features -> training JSON")
    steps.add_argument("--debug_draw", action="store_true",
                       help="frames + landmarks -> images of the numbered 68 points and the crop (--debug_draw_dir)")
    steps.add_argument("--check", action="store_true", help="verify the training JSON at --json")
    steps.add_argument("--make_demo_data", action="store_true", help="draw a procedural demo set and prepare it")

    paths = parser.add_argument_group("paths")
    paths.add_argument("--source_video_dir", default=defaults.source_video_dir,
                       help="the talking-head videos (any rate and container; 25 fps .mp4s are used in place)")
    paths.add_argument("--split_video_dir", default=defaults.split_video_dir,
                       help="where videos that are not 25 fps .mp4 are resampled to")
    paths.add_argument("--openface_landmark_dir", default=defaults.openface_landmark_dir,
                       help="OpenFace CSVs (<video>.csv); used instead of detection when present")
    paths.add_argument("--landmark_dir", default=defaults.landmark_dir, help="CSVs of the bundled detector")
    paths.add_argument("--video_frame_dir", default=defaults.frame_dir)
    paths.add_argument("--audio_dir", default=defaults.audio_dir)
    paths.add_argument("--audio_feature_dir", default=None,
                       help=f"default {TRAINING_DATA}/split_video_25fps_<audio_feature>")
    paths.add_argument("--deepspeech_dir", default=None,
                       help="DeepSpeech features made elsewhere: <video>_deepspeech.npy, <video>.npy or DINet's "
                            "<video>_deepspeech.txt (default: the audio feature dir)")
    paths.add_argument("--crop_face_dir", default=defaults.crop_dir)
    paths.add_argument("--debug_draw_dir", default=defaults.debug_draw_dir)
    paths.add_argument("--json_path", "--json", default=f"{TRAINING_DATA}/training_json.json")

    options = parser.add_argument_group("options")
    options.add_argument("--audio_feature", default="mel", choices=sorted(FEATURE_WIDTHS),
                         help="per-frame audio feature (default mel)")
    options.add_argument("--workers", type=integer(1), default=1, help="videos prepared in parallel (processes)")
    options.add_argument("--min_face_fraction", type=number(0, 1), default=prepare.Settings.min_face_fraction,
                         help="skip a video with a face in fewer of its frames than this")
    options.add_argument("--clip_length", type=integer(1), default=CLIP_LENGTH, help="frames per training clip (DINet: 9)")
    options.add_argument("--seed", type=SEED, default=0, help="seed of the crop-scale jitter and the demo set")
    options.add_argument("--demo_dir", default="./asserts/demo_data", help="where --make_demo_data writes")
    options.add_argument("--num_videos", type=integer(1), default=3, help="videos in the demo set")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    opt = parser.parse_args(argv)
    if opt.extract_deep_speech:
        opt.extract_audio_feature, opt.audio_feature = True, "deepspeech"
    if opt.all:
        for step in ("extract_video_frame", "extract_audio", "extract_audio_feature", "detect_landmarks",
                     "crop_face", "generate_training_json"):
            setattr(opt, step, True)
    if opt.audio_feature_dir is None:
        opt.audio_feature_dir = os.path.join(TRAINING_DATA, f"split_video_25fps_{opt.audio_feature}")
    if not any(getattr(opt, step) for step in (*prepare.VIDEO_STEPS, "generate_training_json", "check",
                                               "make_demo_data")):
        parser.error("nothing to do: pass --all --source_video_dir DIR, or one or more steps "
                     "(--extract_video_frame, --crop_face, ...), --check --json PATH, or --make_demo_data")
    return opt


def check(json_path, clip_length):
    problems = read_training_json(json_path, clip_length, flag="--json")[1]
    if problems:
        shown = problems[:MAX_PROBLEM_LINES]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more problems")
        raise SystemExit("\n".join(shown))
    print(f"{json_path}: OK")


def prepare_all(opt):
    """The steps of `opt` but --check: the demo set, the per-video steps, the training JSON."""
    if opt.make_demo_data:
        from data.procedural_faces import make_demo_data
        json_path = make_demo_data(opt.demo_dir, num_videos=opt.num_videos, seed=opt.seed,
                                   audio_feature=opt.audio_feature)
        print(f"demo training set: {json_path}")
    video_steps = [step for step in prepare.VIDEO_STEPS if getattr(opt, step)]
    if video_steps:
        layout = prepare.Layout(
            source_video_dir=opt.source_video_dir, split_video_dir=opt.split_video_dir,
            frame_dir=opt.video_frame_dir, audio_dir=opt.audio_dir, feature_dir=opt.audio_feature_dir,
            openface_landmark_dir=opt.openface_landmark_dir, landmark_dir=opt.landmark_dir,
            crop_dir=opt.crop_face_dir, debug_draw_dir=opt.debug_draw_dir, deepspeech_dir=opt.deepspeech_dir)
        settings = prepare.Settings(audio_feature=opt.audio_feature, clip_length=opt.clip_length, seed=opt.seed,
                                    min_face_fraction=opt.min_face_fraction)
        reports = prepare.prepare_videos(layout, settings, video_steps, workers=opt.workers)
        print(prepare.format_report(reports))
        if all(report.skipped for report in reports):
            if len(reports) == 1:
                raise SystemExit(reports[0].skipped)
            raise SystemExit(f"{opt.source_video_dir}: none of its {len(reports)} videos can be used (each one's "
                             f"reason is above); the first: {reports[0].skipped}")
        if opt.debug_draw:
            print(f"landmark drawings: {opt.debug_draw_dir}/<video>/*.jpg")
    if opt.generate_training_json:
        json_path = prepare.generate_training_json(opt.crop_face_dir, opt.audio_feature_dir, opt.audio_feature,
                                                   opt.json_path, clip_length=opt.clip_length)
        print(f"training set: {json_path}")


def main(argv=None):
    opt = parse_args(argv)
    # outputs checked before any work, so a long run does not fail at its end
    if opt.make_demo_data:
        check_writable(opt.demo_dir, "--demo_dir")
    if opt.generate_training_json:
        check_writable(os.path.dirname(os.path.abspath(opt.json_path)), "--json_path", shown=opt.json_path)
    # each output is written under another name first: what a stopped run finished is kept, and a rerun goes on
    with stopped_without(opt.json_path if opt.generate_training_json else "the unfinished outputs",
                         then="what was finished is kept: run the same command again to go on"):
        prepare_all(opt)
    if opt.check:
        check(opt.json_path, opt.clip_length)


if __name__ == "__main__":
    run_command(main)
