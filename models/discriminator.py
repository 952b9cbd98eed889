"""DINet's patch discriminator (frame: 3 channels; clip: 5 stacked frames, 15 channels)."""
import torch.nn.functional as F
from torch import nn


class DownBlock2d(nn.Module):
    """Unpadded 4x4 conv -> LeakyReLU(0.2), then 2x2 average pooling except in the last block."""

    def __init__(self, in_features, out_features, kernel_size=4, pool=False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size)
        self.pool = pool

    def forward(self, x):
        out = F.leaky_relu(self.conv(x), 0.2)
        return F.avg_pool2d(out, (2, 2)) if self.pool else out


class Discriminator(nn.Module):
    def __init__(self, num_channels, block_expansion=64, num_blocks=4, max_features=512):
        super().__init__()
        widths = [num_channels] + [min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(
            DownBlock2d(widths[i], widths[i + 1], pool=i != num_blocks - 1) for i in range(num_blocks))
        self.conv = nn.Conv2d(widths[-1], 1, kernel_size=1)

    def forward(self, x):
        """Returns the feature map of every block and the patch score map."""
        feature_maps = []
        for block in self.down_blocks:
            x = block(x)
            feature_maps.append(x)
        return feature_maps, self.conv(x)
