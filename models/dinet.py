"""The DINet generator, built from a `GeneratorConfig` so that every lab is a composition of flags.

With the default config it is the published DINet exactly: the same module tree, parameter names and
shapes as the released `netG` weights, and the same numerics. The forward pass reads as DINet's paper:

    masked source (B,3,H,W) --source encoder--> (B,256,H/4,W/4) --+
    5 reference frames (B,15,H,W) --reference encoder--> (B,256,H/4,W/4) --+--> alignment encoder -> image code (B,128)
    audio window (B,A,5) --audio encoder--> audio code (B,128)
    [image code, audio code] -> AdaAT code (B,256) -> deform reference features -> decoder with source features
"""
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .adaat import AdaAT
from .blocks import DownBlock, ResBlock, SameBlock, UpBlock2d

# Values each architectural choice can take today; the labs add more (DESIGN.md, "Generator and the labs").
CHOICES = {
    "alignment": ("concat",),
    "param_fusion": ("concat",),
    "audio_encoder": ("conv1d",),
    "warp": ("adaat",),
}


@dataclass(frozen=True)
class GeneratorConfig:
    source_channel: int = 3       # masked source frame, RGB
    ref_channel: int = 15         # 5 reference frames stacked on channels
    audio_channel: int = 29       # width of the per-frame audio feature (29 = DeepSpeech); read from the data
    extra_same_block: bool = False  # lab2+: one more SameBlock2d(256->256) closing both image encoders
    alignment: str = "concat"       # how source and reference features meet before the alignment encoder
    param_fusion: str = "concat"    # how image and audio codes become the AdaAT code
    audio_encoder: str = "conv1d"   # DINet's 1-D conv audio encoder
    warp: str = "adaat"             # AdaAT deformation of the reference features

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"--{name} {value!r} is not available; choose one of {', '.join(allowed)}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown generator settings {sorted(unknown)}: this checkpoint comes from a newer version")
        return cls(**values)

    def describe(self):
        """The settings that differ from DINet's, e.g. 'extra_same_block=True' (or 'DINet')."""
        default = GeneratorConfig(self.source_channel, self.ref_channel, self.audio_channel)
        diff = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                if f.name not in ("source_channel", "ref_channel", "audio_channel")
                and getattr(self, f.name) != getattr(default, f.name)]
        return ", ".join(diff) or "DINet"


def image_encoder(in_channels, extra_same_block):
    """(B, in, H, W) -> (B, 256, H/4, W/4)."""
    layers = [SameBlock(in_channels, 64, kernel_size=7, padding=3),
              DownBlock(64, 128),
              DownBlock(128, 256)]
    if extra_same_block:
        layers.append(SameBlock(256, 256))
    return nn.Sequential(*layers)


def alignment_encoder(in_channels):
    """(B, in, H/4, W/4) -> (B, 128, ~H/64, ~W/64): wide kernels see the whole face."""
    return nn.Sequential(
        SameBlock(in_channels, 128, kernel_size=3, padding=1),
        SameBlock(128, 128, kernel_size=11, padding=5),
        SameBlock(128, 128, kernel_size=11, padding=5),
        DownBlock(128, 128),
        SameBlock(128, 128, kernel_size=7, padding=3),
        SameBlock(128, 128, kernel_size=7, padding=3),
        DownBlock(128, 128),
        SameBlock(128, 128),
        DownBlock(128, 128),
        SameBlock(128, 128),
        DownBlock(128, 128),
    )


def conv1d_audio_encoder(audio_channel):
    """(B, A, T) -> (B, 128, T/4)."""
    return nn.Sequential(
        SameBlock(audio_channel, 128, kernel_size=5, padding=2, dims=1),
        ResBlock(128, 128, 3, 1, dims=1),
        DownBlock(128, 128, 3, 1, dims=1),
        ResBlock(128, 128, 3, 1, dims=1),
        DownBlock(128, 128, 3, 1, dims=1),
        SameBlock(128, 128, kernel_size=3, padding=1, dims=1),
    )


def appearance_block():
    return nn.Sequential(*[ResBlock(256, 256, 3, 1) for _ in range(4)])


class DINet(nn.Module):
    def __init__(self, source_channel=3, ref_channel=15, audio_channel=29, **choices):
        super().__init__()
        config = GeneratorConfig(source_channel, ref_channel, audio_channel, **choices)
        self.config = config
        self.source_in_conv = image_encoder(source_channel, config.extra_same_block)
        self.ref_in_conv = image_encoder(ref_channel, config.extra_same_block)
        self.trans_conv = alignment_encoder(512)
        self.audio_encoder = conv1d_audio_encoder(audio_channel)
        # Two residual stacks around the warp: one prepares reference features, one cleans up after.
        self.appearance_conv_list = nn.ModuleList([appearance_block(), appearance_block()])
        self.adaAT = AdaAT(256, 256)
        self.out_conv = nn.Sequential(
            SameBlock(512, 128),
            UpBlock2d(128, 128),
            ResBlock(128, 128, 3, 1),
            UpBlock2d(128, 128),
            nn.Conv2d(128, 3, kernel_size=7, padding=3),
            nn.Sigmoid(),
        )

    @classmethod
    def from_config(cls, config: GeneratorConfig):
        return cls(**config.to_dict())

    def forward(self, source_img, ref_img, audio_feature):
        source_feature = self.source_in_conv(source_img)           # (B, 256, H/4, W/4)
        ref_feature = self.ref_in_conv(ref_img)                    # (B, 256, H/4, W/4)
        img_para = self.trans_conv(torch.cat([source_feature, ref_feature], 1))
        img_para = img_para.mean(dim=(2, 3))                       # (B, 128)
        audio_para = self.audio_encoder(audio_feature).mean(dim=2)  # (B, 128)
        trans_para = torch.cat([img_para, audio_para], 1)          # (B, 256): the AdaAT code
        ref_trans_feature = self.appearance_conv_list[0](ref_feature)
        ref_trans_feature = self.adaAT(ref_trans_feature, trans_para)
        ref_trans_feature = self.appearance_conv_list[1](ref_trans_feature)
        merged = torch.cat([source_feature, ref_trans_feature], 1)  # (B, 512, H/4, W/4)
        return self.out_conv(merged)                               # (B, 3, H, W) in [0, 1]
