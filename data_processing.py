"""Turn talking-head videos into a DINet training set (DINet's flags and directory layout).

Put 25 fps videos with speech in ./asserts/training_data/split_video_25fps/ and their OpenFace 68-point
landmarks (FeatureExtraction's <video>.csv) in ./asserts/training_data/split_video_25fps_landmark_openface/,
then run the steps (all at once, or one at a time; each skips what is already done):

    python data_processing.py --extract_video_frame
    python data_processing.py --extract_audio
    python data_processing.py --extract_audio_feature --audio_feature mel     # or mfcc
    python data_processing.py --crop_face
    python data_processing.py --generate_training_json --audio_feature mel

Or make a small procedural demo set (videos, landmarks and every step above) to try training with:

    python data_processing.py --make_demo_data --demo_dir ./asserts/demo_data --num_videos 3 --seed 0

DeepSpeech features (DINet's 29-d default) are not computed here; see data/audio_features.py.
"""
import argparse
import os

from data import prepare
from data.audio_features import FEATURE_WIDTHS
from data.demo import make_demo_data

TRAINING_DATA = "./asserts/training_data"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_argument_group("steps (DINet's)")
    steps.add_argument("--extract_video_frame", action="store_true", help="videos -> 25 fps jpg frames")
    steps.add_argument("--extract_audio", action="store_true", help="videos -> mono 16 kHz wav")
    steps.add_argument("--extract_audio_feature", action="store_true", help="wav -> per-frame audio features")
    steps.add_argument("--extract_deep_speech", action="store_true",
                       help="DINet's step: same as --extract_audio_feature --audio_feature deepspeech")
    steps.add_argument("--crop_face", action="store_true", help="frames + landmarks -> 9-frame face-crop clips")
    steps.add_argument("--generate_training_json", action="store_true", help="crops + features -> training JSON")
    steps.add_argument("--make_demo_data", action="store_true", help="draw a procedural demo set and prepare it")

    paths = parser.add_argument_group("paths")
    paths.add_argument("--source_video_dir", default=f"{TRAINING_DATA}/split_video_25fps")
    paths.add_argument("--openface_landmark_dir", default=f"{TRAINING_DATA}/split_video_25fps_landmark_openface")
    paths.add_argument("--video_frame_dir", default=f"{TRAINING_DATA}/split_video_25fps_frame")
    paths.add_argument("--audio_dir", default=f"{TRAINING_DATA}/split_video_25fps_audio")
    paths.add_argument("--audio_feature_dir", default=None,
                       help=f"default {TRAINING_DATA}/split_video_25fps_<audio_feature>")
    paths.add_argument("--crop_face_dir", default=f"{TRAINING_DATA}/split_video_25fps_crop_face")
    paths.add_argument("--json_path", default=f"{TRAINING_DATA}/training_json.json")

    options = parser.add_argument_group("options")
    options.add_argument("--audio_feature", default="mel", choices=sorted(FEATURE_WIDTHS),
                         help="per-frame audio feature (default mel)")
    options.add_argument("--clip_length", type=int, default=9, help="frames per training clip (DINet: 9)")
    options.add_argument("--seed", type=int, default=0, help="seed of the crop-scale jitter and the demo set")
    options.add_argument("--demo_dir", default="./asserts/demo_data", help="where --make_demo_data writes")
    options.add_argument("--num_videos", type=int, default=3, help="videos in the demo set")

    opt = parser.parse_args(argv)
    if opt.extract_deep_speech:
        opt.extract_audio_feature, opt.audio_feature = True, "deepspeech"
    if opt.audio_feature_dir is None:
        opt.audio_feature_dir = os.path.join(TRAINING_DATA, f"split_video_25fps_{opt.audio_feature}")
    steps_chosen = [opt.extract_video_frame, opt.extract_audio, opt.extract_audio_feature, opt.crop_face,
                    opt.generate_training_json, opt.make_demo_data]
    if not any(steps_chosen):
        parser.error("nothing to do: choose one or more steps, e.g. --extract_video_frame --extract_audio "
                     "--extract_audio_feature --crop_face --generate_training_json, or --make_demo_data")
    return opt


def main(argv=None):
    opt = parse_args(argv)
    if opt.make_demo_data:
        json_path = make_demo_data(opt.demo_dir, num_videos=opt.num_videos, seed=opt.seed,
                                   audio_feature=opt.audio_feature)
        print(f"demo training set: {json_path}")
    if opt.extract_video_frame:
        prepare.extract_video_frames(opt.source_video_dir, opt.video_frame_dir)
    if opt.extract_audio:
        prepare.extract_audio(opt.source_video_dir, opt.audio_dir)
    if opt.extract_audio_feature:
        prepare.extract_audio_features(opt.audio_dir, opt.audio_feature_dir, opt.audio_feature)
    if opt.crop_face:
        prepare.crop_faces(opt.openface_landmark_dir, opt.video_frame_dir, opt.crop_face_dir,
                           clip_length=opt.clip_length, seed=opt.seed)
    if opt.generate_training_json:
        json_path = prepare.generate_training_json(opt.crop_face_dir, opt.audio_feature_dir, opt.audio_feature,
                                                   opt.json_path, clip_length=opt.clip_length)
        print(f"training set: {json_path}")


if __name__ == "__main__":
    main()
