"""What the fast convolutions share: taking a convolution's place with its parameters, and data kept per weight."""
import weakref

from torch import nn


class FastConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters, same function) computed another way at inference. `suits(conv)` says where
    it pays; `of(conv)` makes one that holds `conv`'s parameters (shared, not copied)."""

    @classmethod
    def suits(cls, conv):
        raise NotImplementedError

    @classmethod
    def of(cls, conv):
        fast = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                   conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        fast.weight, fast.bias = conv.weight, conv.bias
        return fast


def plain_settings(conv):
    """Whether `conv` has the settings the fast computations handle: stride 1, no dilation or groups, zero
    padding given in numbers."""
    return (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def kept_per_weight(conv, name, key, compute):
    """compute(), kept on `conv` as attribute `name` while its weight is the same tensor at the same version
    (an optimiser step or load_state_dict changes it in place) and `key` is the same."""
    key = (conv.weight.data_ptr(), conv.weight._version, *key)
    cached = getattr(conv, name, None)
    if cached is None or cached[0]() is not conv.weight or cached[1] != key:
        cached = (weakref.ref(conv.weight), key, compute())
        setattr(conv, name, cached)
    return cached[2]
