"""AdaAT: adaptive affine transformation of feature maps (DINet, CVPR/AAAI 2023).

Every channel of the reference feature map gets its own scale, rotation and translation,
predicted from the fused image/audio code, and is resampled with `grid_sample` on a 3-D grid.
The numerics are the published ones on purpose: the x/y grid is built with the align-corners
convention while `grid_sample` runs with its default (align_corners=False), and the z axis
(channels) goes through the same trilinear sampling, so neighbouring channels blend slightly.
Published weights were trained with exactly that, so a faithful port must keep it.
"""
import torch
import torch.nn.functional as F
from torch import nn


def coordinate_grid(depth, height, width, dtype, device):
    """x/y in [-1, 1] (align-corners style), (D, H, W, 2), and z in [-1, 1], (D, H, W)."""
    def axis(n):
        return 2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1
    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack([x, y], dim=-1), z


class AdaAT(nn.Module):
    def __init__(self, para_ch, feature_ch):
        super().__init__()
        self.para_ch = para_ch
        self.feature_ch = feature_ch
        self.commn_linear = nn.Sequential(nn.Linear(para_ch, para_ch), nn.ReLU())
        self.scale = nn.Sequential(nn.Linear(para_ch, feature_ch), nn.Sigmoid())
        self.rotation = nn.Sequential(nn.Linear(para_ch, feature_ch), nn.Tanh())
        self.translation = nn.Sequential(nn.Linear(para_ch, 2 * feature_ch), nn.Tanh())

    def forward(self, feature_map, para_code):
        batch, channels, height, width = feature_map.shape      # (B, C, H, W)
        para_code = self.commn_linear(para_code)                  # (B, P)
        scale = self.scale(para_code) * 2                         # (B, C), in (0, 2)
        angle = self.rotation(para_code) * 3.14159                # (B, C), in (-pi, pi)
        translation = self.translation(para_code).view(batch, channels, 1, 1, 2)
        grid_xy, grid_z = coordinate_grid(channels, height, width, feature_map.dtype, feature_map.device)
        cos = torch.cos(angle).view(batch, channels, 1, 1)
        sin = torch.sin(angle).view(batch, channels, 1, 1)
        x, y = grid_xy[..., 0], grid_xy[..., 1]                   # (C, H, W) each
        rotated = torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1)  # (B, C, H, W, 2)
        trans_grid = rotated * scale.view(batch, channels, 1, 1, 1) + translation
        full_grid = torch.cat([trans_grid, grid_z.expand(batch, -1, -1, -1).unsqueeze(-1)], dim=-1)
        # (B, 1, C, H, W) sampled at (B, C, H, W, 3) -> (B, C, H, W)
        return F.grid_sample(feature_map.unsqueeze(1), full_grid, align_corners=False).squeeze(1)
