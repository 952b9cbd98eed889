"""The alignment encoder's first layer with the reference half of its convolution computed once per reference state."""
from torch import nn

from ..blocks import SameBlock, fresh_relu
from ..dinet import SplitFirstLayer
from .convolution import FastConv2d


def _convolution(like, weight, bias):
    """A convolution of `weight` and `bias` with `like`'s settings."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], like.kernel_size, like.stride, like.padding, like.dilation,
                     bias=bias is not None, padding_mode=like.padding_mode, device="meta")
    conv.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return conv


class SplitSameBlock(SplitFirstLayer):
    """DINet's first alignment layer, relu(norm(W [s; r] + b)) of source features s and reference features r
    stacked on channels, as relu(norm(W_s s + (W_r r + b))): a convolution sums over its input channels, so the
    reference half with the bias (`reference`, a plain convolution run once per ReferenceState) is computed once and
    each batch pays for the source half only (`source`, computed as the block's convolution was)."""

    def __init__(self, block, source_channels):
        super().__init__()
        conv, kind = block.conv, type(block.conv)
        source = _convolution(conv, conv.weight[:, :source_channels], None)
        self.source = kind.of(source) if issubclass(kind, FastConv2d) and kind.suits(source) else source
        self.reference = _convolution(conv, conv.weight[:, source_channels:], conv.bias)
        self.norm = block.norm

    def reference_part(self, ref_feature):
        return self.reference(ref_feature)

    def forward(self, source_feature, reference_part):
        return fresh_relu(self.norm(self.source(source_feature) + reference_part))


def split_first_alignment_layer(network):
    """`network` (a DINet, changed in place) with its alignment encoder's first layer a SplitSameBlock where that
    layer reads source and reference features stacked (DINet's `concat` alignment)."""
    first = network.trans_conv[0] if hasattr(network, "trans_conv") else None
    if (network.config.alignment == "concat" and isinstance(first, SameBlock) and isinstance(first.conv, nn.Conv2d)
            and first.conv.groups == 1):
        network.trans_conv[0] = SplitSameBlock(first, first.conv.in_channels // 2)
    return network
