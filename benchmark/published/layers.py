"""The generator's layers computed as DINet's published code computes them, for bench.py's baseline rows."""
import torch.nn.functional as F

from models.blocks import ResBlock, SameBlock, UpBlock2d
from models.formulations import use_plain_formulations


class PublishedSameBlock(SameBlock):
    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class PublishedResBlock(ResBlock):
    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + (x if self.channel_conv is None else self.channel_conv(x))


class PublishedUpBlock2d(UpBlock2d):
    def forward(self, x):
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=2))))


PUBLISHED = {SameBlock: PublishedSameBlock, ResBlock: PublishedResBlock, UpBlock2d: PublishedUpBlock2d}


def published_way(network):
    """`network` (changed in place, its parameters kept) computing as DINet's published code: the plain fallbacks of
    the reformulated layers (UpBlock2d's interpolate-then-convolve, AdaAT's 3-D grid_sample) and every block's
    ReLU into a new tensor. A DINet's convolutions are already the published ones (direct; the 3-channel output
    convolution as one)."""
    use_plain_formulations(network)
    for module in network.modules():
        if type(module) in PUBLISHED:
            module.__class__ = PUBLISHED[type(module)]
    return network
