"""Transformer fusion of image and audio into the 256-d AdaAT code (`--param_fusion`).

- fusion_transformer (labs 4-9): two tokens, DINet's image code and audio code, through a transformer encoder.
- hybrid_transformer (labs 10-11): a token sequence
      5 reference-frame tokens | 5 audio tokens (one per frame of the audio window) | 1 pose token
  with learned positional and modality embeddings, through a transformer encoder, pooled to the code.
  The reference tokens come from each RGB reference frame on its own (the reference encoder mixes all
  five on its first conv); the pose token from the masked source features, as a coarse 4x4 layout.
- hybrid_and_concat (lab12): the hybrid code and DINet's concat code averaged (models/dinet.py).

Both transformers are `TokenFusionTransformer`; nothing here depends on the image size, so coarse-to-fine
loads these weights at every mouth size.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock, SameBlock


class TokenFusionTransformer(nn.Module):
    """Tokens of several modalities -> one code (B, code_dim).

    token_layout: ordered {modality: (number of tokens, token width)}; `forward` takes one (B, n, width)
    tensor per modality in that order."""

    def __init__(self, token_layout, code_dim=256, model_dim=256, heads=4, layers=2):
        super().__init__()
        self.token_layout = dict(token_layout)
        self.token_projection = nn.ModuleDict({name: nn.Linear(width, model_dim)
                                               for name, (_, width) in self.token_layout.items()})
        num_tokens = sum(count for count, _ in self.token_layout.values())
        self.position_embedding = nn.Parameter(torch.randn(1, num_tokens, model_dim) * 0.02)
        self.modality_embedding = nn.Parameter(torch.randn(len(self.token_layout), model_dim) * 0.02)
        # No dropout, like the rest of DINet; pre-norm layers train stably from scratch at lr 1e-4.
        layer = nn.TransformerEncoderLayer(model_dim, heads, dim_feedforward=2 * model_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(model_dim)
        self.to_code = nn.Linear(model_dim, code_dim)

    def forward(self, *tokens):
        if len(tokens) != len(self.token_layout):
            raise ValueError(f"expected tokens for {list(self.token_layout)}, got {len(tokens)} tensors")
        embedded = [self.token_projection[name](modality_tokens) + self.modality_embedding[index]
                    for index, (name, modality_tokens) in enumerate(zip(self.token_layout, tokens))]
        sequence = torch.cat(embedded, dim=1) + self.position_embedding  # (B, N, D)
        encoded = self.output_norm(self.encoder(sequence))               # (B, N, D)
        return self.to_code(encoded.mean(dim=1))                         # (B, code_dim)


class ReferenceFrameTokens(nn.Module):
    """(B, 3F, H, W) stacked RGB references -> (B, F, width): one token per frame, by a conv tower all frames share."""

    def __init__(self, num_frames, width=128):
        super().__init__()
        self.num_frames = num_frames
        self.tower = nn.Sequential(DownBlock(3, 32), DownBlock(32, 64), DownBlock(64, 128), DownBlock(128, width))

    def forward(self, ref_img):
        batch, _, height, width = ref_img.shape
        frames = ref_img.reshape(batch * self.num_frames, 3, height, width)  # frame k = channels 3k..3k+2
        pooled = self.tower(frames).mean(dim=(2, 3))                          # (B*F, width), from H/16 x W/16
        return pooled.view(batch, self.num_frames, -1)


class PoseToken(nn.Module):
    """(B, C, h, w) masked-source features -> (B, 1, channels*grid*grid): where the face sits, on a fixed grid."""

    def __init__(self, in_channels=256, channels=32, grid=4):
        super().__init__()
        self.grid = grid
        self.reduce = SameBlock(in_channels, channels, kernel_size=1, padding=0)

    def forward(self, source_feature):
        layout = F.adaptive_avg_pool2d(self.reduce(source_feature), self.grid)  # (B, channels, grid, grid)
        return layout.flatten(1).unsqueeze(1)

    @property
    def width(self):
        return self.reduce.conv.out_channels * self.grid ** 2


class HybridTokenFusion(nn.Module):
    """References (B, 3F, H, W), source features (B, 256, h, w), audio steps (B, 128, T') -> AdaAT code (B, 256)."""

    def __init__(self, num_reference_frames, audio_window, audio_width=128, code_dim=256):
        super().__init__()
        self.audio_window = audio_window
        self.reference_tokens = ReferenceFrameTokens(num_reference_frames)
        self.pose_token = PoseToken()
        self.transformer = TokenFusionTransformer({"reference": (num_reference_frames, 128),
                                                   "audio": (audio_window, audio_width),
                                                   "pose": (1, self.pose_token.width)}, code_dim)

    def forward(self, ref_img, source_feature, audio_steps):
        if audio_steps.shape[2] != self.audio_window:
            # DINet's conv1d encoder halves the window twice (5 -> 2 steps): read it back at each audio frame
            audio_steps = F.interpolate(audio_steps, size=self.audio_window, mode="linear", align_corners=True)
        return self.transformer(self.reference_tokens(ref_img),          # (B, 5, 128)
                                audio_steps.transpose(1, 2),              # (B, 5, 128)
                                self.pose_token(source_feature))          # (B, 1, 512)
