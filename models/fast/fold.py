"""BatchNorm folding: at inference, conv -> BN is one affine map, so the BN goes into the convolution."""
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..blocks import ResBlock, SameBlock, UpBlock2d


def fold_batch_norms(network):
    """`network` (in eval mode, changed in place) with every BatchNorm that follows a convolution folded into it:
    SameBlock's and UpBlock2d's, and ResBlock's second (its first acts on the block input and stays)."""
    for module in network.modules():
        if isinstance(module, (SameBlock, UpBlock2d)) and isinstance(module.norm, nn.modules.batchnorm._BatchNorm):
            module.conv, module.norm = fuse_conv_bn_eval(module.conv, module.norm), nn.Identity()
        elif isinstance(module, ResBlock) and isinstance(module.norm2, nn.modules.batchnorm._BatchNorm):
            module.conv1, module.norm2 = fuse_conv_bn_eval(module.conv1, module.norm2), nn.Identity()
    return network
