"""The lab presets: each lab lists only what differs from DINet (lab1); models/dinet.py describes each choice.

A preset is a starting point; any generator flag given on the command line overrides it
(`--lab lab2 --extra_same_block off` is lab1 again, `--lab lab12 --warp adain` mixes lab11 in).
The numbers are the lab's notes: perception loss at epoch 10 of stage 1.

`audio_feature` is not a generator setting but the data a lab needs: lab7 replaced the whole audio
extractor, so it trains on mel features (`python data_processing.py --extract_audio_feature --audio_feature mel`)
where lab6 used DINet's DeepSpeech; building it for data of another width is a one-line error.
"""
from common.errors import UserError
from data.audio_features import FEATURE_WIDTHS
from models.dinet import CHOICES, GeneratorConfig

# A new lab also needs its line in LAB_NOTES of tests/test_labs.py (what it changes from DINet) and its row in
# README's lab table (figures: python compare_labs.py --table_only)
LAB_PRESETS = {
    "lab1": dict(),                                   # DINet as published; 5.17, ~2.1 after 250 epochs
    "lab2": dict(extra_same_block=True),              # one more SameBlock in both image encoders; 4.91, kept
    "lab3": dict(alignment="mha"),                    # cross-attention instead of concat; 12.59, unstable, dropped
    "lab4": dict(param_fusion="fusion_transformer", extra_same_block=True),  # 5.84
    "lab5": dict(param_fusion="fusion_transformer"),  # transformer over image and audio codes; 5.62
    "lab6": dict(param_fusion="fusion_transformer", audio_encoder="conv1d_alt"),  # 6.00
    "lab7": dict(param_fusion="fusion_transformer", audio_feature="mel"),  # lab5 on mel, extractor replaced; 6.04
    "lab8": dict(param_fusion="fusion_transformer", audio_encoder="audio_attention"),  # 5.87
    "lab9": dict(param_fusion="fusion_transformer", audio_encoder="audio_attention", extra_same_block=True),  # 5.80
    "lab10": dict(param_fusion="hybrid_transformer", audio_encoder="audio_attention", extra_same_block=True,
                  warp="adaat"),                      # token transformer; 5.54
    "lab11": dict(param_fusion="hybrid_transformer", extra_same_block=True, warp="adain"),  # AdaAT off; 4.92
    "lab12": dict(param_fusion="hybrid_and_concat", extra_same_block=True, warp="adaat"),  # best; ~2.2 after 400
}

GENERATOR_FLAGS = ("extra_same_block",) + tuple(CHOICES)


def lab_audio_feature(lab):
    """The audio feature a lab's preset needs, or None when it trains on whatever the data has."""
    return LAB_PRESETS[lab].get("audio_feature")


def check_lab_data(lab, audio_channel, audio_feature=None):
    """Exit with the fix when `lab` needs another audio feature than the data's (known by name, else by width)."""
    needed = lab_audio_feature(lab)
    if needed is None:
        return
    found = audio_feature if audio_feature is not None else f"{audio_channel}-d"
    if (audio_feature is not None and audio_feature != needed) or FEATURE_WIDTHS[needed] != audio_channel:
        raise UserError(f"--lab {lab} trains on {needed} audio features ({FEATURE_WIDTHS[needed]}-d) but the "
                         f"training data has {found} features; make them with `python data_processing.py "
                         f"--extract_audio_feature --generate_training_json --audio_feature {needed}` "
                         f"and pass that JSON")


def generator_config(lab, audio_channel, source_channel=3, ref_channel=15, audio_feature=None, **overrides):
    """The GeneratorConfig of `lab` with every override that is not None applied; a combination that
    cannot work, or data without the lab's audio feature, exits with a one-line reason."""
    if lab not in LAB_PRESETS:
        raise ValueError(f"--lab {lab}: unknown lab; choose one of {', '.join(LAB_PRESETS)}")
    check_lab_data(lab, audio_channel, audio_feature)
    settings = {name: value for name, value in LAB_PRESETS[lab].items() if name != "audio_feature"}
    settings.update({name: value for name, value in overrides.items() if value is not None})
    try:
        return GeneratorConfig(source_channel=source_channel, ref_channel=ref_channel,
                               audio_channel=audio_channel, **settings)
    except ValueError as error:
        raise UserError(f"--lab {lab}: {error}") from None


def lab_of(config):
    """'labN (settings)' for a generator configuration (every lab whose preset builds it), or its settings."""
    labs = []
    for lab, preset in LAB_PRESETS.items():
        try:
            if generator_config(lab, config.audio_channel, config.source_channel, config.ref_channel,
                                preset.get("audio_feature")) == config:
                labs.append(lab)
        except UserError:  # a lab that needs other audio features
            continue
    return f"{'/'.join(labs)} ({config.describe()})" if labs else config.describe()
