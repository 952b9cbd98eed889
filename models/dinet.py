"""The DINet generator, built from a `GeneratorConfig` so that every lab is a composition of flags.

With the default config it is the published DINet exactly: the same module tree, parameter names and
shapes as the released `netG` weights, and the same numerics. The forward pass reads as DINet's paper:

    masked source (B,3,H,W) --source encoder--> (B,256,H/4,W/4) --+
    5 reference frames (B,15,H,W) --reference encoder--> (B,256,H/4,W/4) --+--> alignment encoder -> image code (B,128)
    audio window (B,A,5) --audio encoder--> audio steps (B,128,T') --mean--> audio code (B,128)
    [image code, audio code] -> AdaAT code (B,256) -> deform reference features -> decoder with source features

It runs in two parts, `encode_reference` (what depends on the reference frames alone) and `generate`;
`forward` is the two in turn, and dubbing encodes a video's references once for all its frames.

The lab flags swap one stage each:
    extra_same_block  one more SameBlock(256->256) closing both image encoders
    alignment         concat (DINet) | mha: source features cross-attend to reference features (models/attention.py)
    param_fusion      concat (DINet) | fusion_transformer | hybrid_transformer | hybrid_and_concat (models/fusion.py)
    audio_encoder     conv1d (DINet) | conv1d_alt | audio_attention (models/audio_encoders.py)
    warp              adaat (DINet) | adain: channel-wise modulation by the same code (models/adain.py)
DINet's modules keep their published names; a module a lab adds or swaps in has a name of its own, so
a checkpoint of one lab never half-loads into another.
"""
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from common.geometry import AUDIO_WINDOW

from .adaat import AdaAT
from .adain import AdaIN
from .attention import CrossAttentionAlignment
from .audio_encoders import AltConv1dAudioEncoder, AudioAttentionEncoder, conv1d_audio_encoder
from .blocks import DownBlock, ResBlock, SameBlock, UpBlock2d, decode_rows
from .fusion import HybridTokenFusion, TokenFusionTransformer

# The attribute each choice's module lives under (DINet's names for DINet's modules).
AUDIO_ENCODERS = {"conv1d": ("audio_encoder", conv1d_audio_encoder),
                  "conv1d_alt": ("audio_encoder_alt", AltConv1dAudioEncoder),
                  "audio_attention": ("audio_attention", AudioAttentionEncoder)}
WARPS = {"adaat": ("adaAT", AdaAT), "adain": ("adaIN", AdaIN)}

# Values each architectural choice can take, the first DINet's: the flags' choices. A new value also goes in
# README's table of ingredients and the docstring above.
CHOICES = {
    "alignment": ("concat", "mha"),
    "param_fusion": ("concat", "fusion_transformer", "hybrid_transformer", "hybrid_and_concat"),
    "audio_encoder": tuple(AUDIO_ENCODERS),
    "warp": tuple(WARPS),
}
HYBRID_FUSIONS = ("hybrid_transformer", "hybrid_and_concat")


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
        if self.param_fusion == "hybrid_transformer" and self.alignment != "concat":
            raise ValueError(f"--alignment {self.alignment} cannot be used with --param_fusion hybrid_transformer: "
                             f"its tokens replace the alignment encoder; use --param_fusion hybrid_and_concat "
                             f"or --alignment concat")
        if self.param_fusion in HYBRID_FUSIONS and self.ref_channel % 3:
            raise ValueError(f"--ref_channel {self.ref_channel} cannot be used with --param_fusion "
                             f"{self.param_fusion}: it makes one token per RGB reference frame, "
                             f"so it needs a multiple of 3")

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


@dataclass
class ReferenceState:
    """What the generator reads of the reference frames, from `DINet.encode_reference`: R = B sets (one per sample,
    as training gives) or R = 1 set for a whole batch (broadcast: dubbing's 5 frames of a video)."""
    frames: torch.Tensor                      # (R, 15, H, W) the reference frames: the hybrid fusions' tokens read them
    feature: torch.Tensor                     # (R, 256, H/4, W/4) reference encoder's output: the alignment reads it
    prepared: torch.Tensor                    # (R, 256, H/4, W/4) after the first appearance block: what is warped
    alignment: Optional[torch.Tensor] = None  # the first alignment layer's part of the references (SplitFirstLayer)


class SplitFirstLayer(nn.Module):
    """A first layer of the alignment encoder that reads [source features; reference features] as two inputs:
    `reference_part(ref_feature)` once per ReferenceState (kept as its `alignment`), then forward(source_feature,
    part) per batch. DINet's own first layer reads the two stacked on channels; models/fast/split.py makes one of
    it that computes the reference half of its convolution once."""

    def reference_part(self, ref_feature):
        raise NotImplementedError


def broadcast(tensor, batch):
    """A state tensor (R, ...) for a batch of `batch`: as it is when R = batch; R = 1 repeated in memory (modules
    view and reshape it), in the tensor's own memory layout."""
    if tensor.shape[0] == batch:
        return tensor
    channels_last = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return tensor.expand(batch, *tensor.shape[1:]).contiguous(memory_format=layout)


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


def appearance_block():
    return nn.Sequential(*[ResBlock(256, 256, 3, 1) for _ in range(4)])


class DINet(nn.Module):
    def __init__(self, source_channel=3, ref_channel=15, audio_channel=29, **choices):
        super().__init__()
        config = GeneratorConfig(source_channel, ref_channel, audio_channel, **choices)
        self.config = config
        self.source_in_conv = image_encoder(source_channel, config.extra_same_block)
        self.ref_in_conv = image_encoder(ref_channel, config.extra_same_block)
        if config.param_fusion != "hybrid_transformer":  # the hybrid's tokens replace the alignment encoder
            if config.alignment == "mha":
                self.alignment_attention = CrossAttentionAlignment(256)
            self.trans_conv = alignment_encoder(256 if config.alignment == "mha" else 512)
        self.audio_module_name, build_audio_encoder = AUDIO_ENCODERS[config.audio_encoder]
        self.add_module(self.audio_module_name, build_audio_encoder(audio_channel))
        if config.param_fusion == "fusion_transformer":
            self.param_fusion_transformer = TokenFusionTransformer({"image": (1, 128), "audio": (1, 128)})
        if config.param_fusion in HYBRID_FUSIONS:
            self.hybrid_transformer = HybridTokenFusion(ref_channel // 3, AUDIO_WINDOW)
        # Two residual stacks around the warp: one prepares reference features, one cleans up after.
        self.appearance_conv_list = nn.ModuleList([appearance_block(), appearance_block()])
        self.warp_module_name, build_warp = WARPS[config.warp]
        self.add_module(self.warp_module_name, build_warp(256, 256))
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

    def encode_reference(self, reference):
        """(R, 15, H, W) reference frames -> ReferenceState: everything the generator computes from them alone."""
        feature = self.ref_in_conv(reference)                                  # (R, 256, H/4, W/4)
        prepared = self.appearance_conv_list[0](feature)                       # (R, 256, H/4, W/4)
        first = self.trans_conv[0] if hasattr(self, "trans_conv") else None
        alignment = first.reference_part(feature) if isinstance(first, SplitFirstLayer) else None
        return ReferenceState(reference, feature, prepared, alignment)

    def image_code(self, source_feature, state):
        """(B, 256, h, w) source features and the references' state -> (B, 128): what the alignment encoder reads
        of source and references together."""
        if state.alignment is not None:  # the first layer's reference part, computed by encode_reference
            first = self.trans_conv[0](source_feature, state.alignment)
            return self.trans_conv[1:](first).mean(dim=(2, 3))
        ref_feature = broadcast(state.feature, source_feature.shape[0])
        if self.config.alignment == "mha":
            met = self.alignment_attention(source_feature, ref_feature)  # (B, 256, h, w)
        else:
            met = torch.cat([source_feature, ref_feature], 1)            # (B, 512, h, w)
        return self.trans_conv(met).mean(dim=(2, 3))

    def adaptation_code(self, source_feature, state, audio_steps):
        """The 256-d code that drives the warp, from image and audio as `param_fusion` says."""
        fusion = self.config.param_fusion
        hybrid = lambda: self.hybrid_transformer(broadcast(state.frames, source_feature.shape[0]), source_feature,
                                                 audio_steps)
        if fusion == "hybrid_transformer":
            return hybrid()
        img_para = self.image_code(source_feature, state)                # (B, 128)
        audio_para = audio_steps.mean(dim=2)                             # (B, 128)
        if fusion == "fusion_transformer":
            return self.param_fusion_transformer(img_para.unsqueeze(1), audio_para.unsqueeze(1))
        trans_para = torch.cat([img_para, audio_para], 1)                # (B, 256): DINet's AdaAT code
        if fusion == "hybrid_and_concat":
            trans_para = (trans_para + hybrid()) / 2
        return trans_para

    def generate(self, masked_source, audio_feature, state, first_row=0):
        """(B, 3, H, W) masked source frames, (B, A, 5) audio windows and the references' ReferenceState ->
        (B, 3, H, W) faces in [0, 1]. With `first_row` only the rows from it on are computed (each decoder layer on
        the rows they depend on, `decode_rows`) and the rows above are zeros: dubbing pastes only the mouth and the
        band around it."""
        batch = masked_source.shape[0]
        source_feature = self.source_in_conv(masked_source)                    # (B, 256, H/4, W/4)
        audio_steps = getattr(self, self.audio_module_name)(audio_feature)     # (B, 128, T')
        trans_para = self.adaptation_code(source_feature, state, audio_steps)  # (B, 256)
        warped = getattr(self, self.warp_module_name)(broadcast(state.prepared, batch), trans_para)
        warped = self.appearance_conv_list[1](warped)
        merged = torch.cat([source_feature, warped], 1)                        # (B, 512, H/4, W/4)
        if not first_row:
            return self.out_conv(merged)                                       # (B, 3, H, W) in [0, 1]
        return F.pad(decode_rows(self.out_conv, merged, first_row), (0, 0, first_row, 0))  # zeros above

    def forward(self, source_img, ref_img, audio_feature):
        return self.generate(source_img, audio_feature, self.encode_reference(ref_img))
