"""The lab presets: each lab lists only what differs from DINet (lab1). See DESIGN.md, "Generator and the labs".

A preset is a starting point; any generator flag given on the command line overrides it
(`--lab lab2 --extra_same_block off` is lab1 again).
"""
from models.dinet import CHOICES, GeneratorConfig

LAB_PRESETS = {
    "lab1": dict(),                         # DINet as published; perception 5.17 at epoch 10, ~2.1 after 250
    "lab2": dict(extra_same_block=True),    # one more SameBlock in both image encoders; 4.91, kept
}

GENERATOR_FLAGS = ("extra_same_block",) + tuple(CHOICES)


def generator_config(lab, audio_channel, source_channel=3, ref_channel=15, **overrides):
    """The GeneratorConfig of `lab` with every override that is not None applied."""
    if lab not in LAB_PRESETS:
        raise ValueError(f"--lab {lab}: unknown lab; choose one of {', '.join(LAB_PRESETS)}")
    settings = dict(LAB_PRESETS[lab])
    settings.update({name: value for name, value in overrides.items() if value is not None})
    return GeneratorConfig(source_channel=source_channel, ref_channel=ref_channel,
                           audio_channel=audio_channel, **settings)
