"""Cross-attention alignment (`--alignment mha`, lab3): source features attend to reference features.

DINet concatenates the source and reference feature maps on channels and lets the wide-kernel alignment
encoder find the correspondence. Here every source position queries all reference positions with
multi-head attention; the answer is added to the source features and the alignment encoder reads that
(256 channels instead of 512). Positions are fixed 2-D sinusoids computed for the map at hand, so the
module has no size-dependent weights and coarse-to-fine (mouth 64 -> 128 -> 256) loads it unchanged.
"""
import math

import torch
from torch import nn


def sinusoid_positions_2d(channels, height, width, dtype, device):
    """(H*W, C): half the channels encode the row, half the column, each as sin/cos at geometric frequencies."""
    quarter = channels // 4
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=dtype, device=device) / quarter)
    rows = torch.arange(height, dtype=dtype, device=device)[:, None] * frequencies   # (H, C/4)
    cols = torch.arange(width, dtype=dtype, device=device)[:, None] * frequencies    # (W, C/4)
    row_code = torch.cat([rows.sin(), rows.cos()], 1)[:, None, :].expand(height, width, -1)
    col_code = torch.cat([cols.sin(), cols.cos()], 1)[None, :, :].expand(height, width, -1)
    return torch.cat([row_code, col_code], 2).reshape(height * width, channels)


class CrossAttentionAlignment(nn.Module):
    """(B, C, h, w) source, (B, C, h, w) reference -> (B, C, h, w): source plus what it found in the references."""

    def __init__(self, channels=256, heads=8):
        super().__init__()
        if channels % 4:
            raise ValueError(f"CrossAttentionAlignment needs channels divisible by 4, got {channels}")
        self.source_norm = nn.LayerNorm(channels)
        self.reference_norm = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    @staticmethod
    def positions(feature_map):
        _, channels, height, width = feature_map.shape
        return sinusoid_positions_2d(channels, height, width, feature_map.dtype, feature_map.device)  # (h*w, C)

    def forward(self, source_feature, ref_feature):
        batch, channels, height, width = source_feature.shape
        source_tokens = source_feature.flatten(2).transpose(1, 2)              # (B, h*w, C)
        reference_tokens = self.reference_norm(ref_feature.flatten(2).transpose(1, 2))
        queries = self.source_norm(source_tokens) + self.positions(source_feature)
        keys = reference_tokens + self.positions(ref_feature)
        # need_weights=False: the fused scaled-dot-product kernel, which never builds the (h*w)^2 weight matrix
        attended, _ = self.attention(queries, keys, reference_tokens, need_weights=False)  # (B, h*w, C)
        return (source_tokens + attended).transpose(1, 2).reshape(batch, channels, height, width)
