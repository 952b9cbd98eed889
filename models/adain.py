"""AdaIN warp (`--warp adain`, lab11): the AdaAT code modulates reference features channel by channel.

Where a lab turns AdaAT's spatial deformation off, the fused image/audio code still has to reach the
output, or the mouth would stop following the speech: each channel of the reference feature map is
instance-normalised, then scaled and shifted by amounts predicted from the code.
"""
from torch import nn


class AdaIN(nn.Module):
    """(B, C, H, W) features, (B, P) code -> (B, C, H, W)."""

    def __init__(self, para_ch, feature_ch):
        super().__init__()
        self.code_mlp = nn.Sequential(nn.Linear(para_ch, para_ch), nn.ReLU())
        self.scale = nn.Linear(para_ch, feature_ch)
        self.shift = nn.Linear(para_ch, feature_ch)
        self.norm = nn.InstanceNorm2d(feature_ch, affine=False)

    def forward(self, feature_map, para_code):
        code = self.code_mlp(para_code)                            # (B, P)
        scale = 1 + self.scale(code)[:, :, None, None]             # (B, C, 1, 1), 1 = leave the channel as is
        shift = self.shift(code)[:, :, None, None]                 # (B, C, 1, 1)
        return self.norm(feature_map) * scale + shift
