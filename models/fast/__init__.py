"""Inference-only speed, as a swap: `optimize_for_inference(net, device, amp, channels_last)` returns a copy of a
trained DINet that computes the same function faster, and leaves `net` (the trainable model) as it is.

    fold.py       BatchNorms folded into the convolutions before them
    narrow.py     NarrowConv2d: few output channels, wide kernel (DINet's last layer)
    fourier.py    FourierConv2d: large kernels through FFTs (CPU)
    winograd.py   WinogradConv2d: 3x3 convolutions of many channels by Winograd's F(4x4, 3x3) (CPU, float32)
    split.py      the alignment encoder's first convolution with its reference half computed once per reference
"""
import copy
import functools
import threading
from contextlib import contextmanager

import torch
from torch import nn

from .fold import fold_batch_norms
from .fourier import FourierConv2d
from .narrow import NarrowConv2d
from .split import split_first_alignment_layer
from .winograd import WinogradConv2d, load_winograd_kernels

__all__ = ["optimize_for_inference", "InferenceGenerator", "FourierConv2d", "NarrowConv2d", "WinogradConv2d"]


def fast_convolution(conv, device):
    """The fast convolution that takes `conv`'s place on `device` (the first that suits), or `conv`."""
    kinds = (NarrowConv2d, FourierConv2d, WinogradConv2d) if device.type == "cpu" else (NarrowConv2d,)
    kind = next((kind for kind in kinds if type(conv) is nn.Conv2d and kind.suits(conv)), None)
    return kind.of(conv) if kind else conv


def swap_convolutions(network, device):
    """`network` (changed in place) with each convolution that a fast one suits replaced by it."""
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            fast = fast_convolution(child, device)
            if fast is not child:
                setattr(parent, name, fast)
    return network


@functools.cache
def _load_kernels_in_background():
    """Load WinogradConv2d's compiled kernels in a thread, once per process, while the caller gets its inputs."""
    threading.Thread(target=load_winograd_kernels, name="winograd-kernels", daemon=True).start()


def optimize_for_inference(network, device, amp=None, channels_last=False):
    """A copy of `network` (a DINet) on `device`, in eval mode, for inference: every BatchNorm that follows a
    convolution folded into it, the convolutions that a fast kernel suits computed by it (on CPU), the reference
    half of the alignment encoder's first convolution computed once per reference state, channels_last weights
    when asked (oneDNN's preferred layout on CPU, the tensor cores' on GPU), and under amp "bf16" the
    convolutions' weights stored in bf16 (autocast would cast them on every call; the values are the same).
    Returns it as an InferenceGenerator. The caller's network is left as it is."""
    device = torch.device(device)
    if device.type == "cpu":
        _load_kernels_in_background()
    network = copy.deepcopy(network).to(device).eval()
    fold_batch_norms(network)
    swap_convolutions(network, device)
    split_first_alignment_layer(network)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    if amp == "bf16":
        for module in network.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                module.to(torch.bfloat16)
    return InferenceGenerator(network, device, amp, channels_last)


class InferenceGenerator(nn.Module):
    """A DINet prepared by optimize_for_inference: `forward`, `encode_reference` and `generate` are the network's,
    run without gradients, under bf16 autocast where its weights are bf16, on image inputs in its memory layout;
    faces come out in float32."""

    def __init__(self, network, device, amp=None, channels_last=False):
        super().__init__()
        self.network = network
        self.config = network.config
        self.device, self.amp = device, amp
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @contextmanager
    def _running(self):
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            yield

    def encode_reference(self, reference):
        with self._running():
            return self.network.encode_reference(reference.contiguous(memory_format=self.memory_format))

    def generate(self, masked_source, audio_feature, state, first_row=0):
        with self._running():
            masked_source = masked_source.contiguous(memory_format=self.memory_format)
            return self.network.generate(masked_source, audio_feature, state, first_row).float()

    def forward(self, source_img, ref_img, audio_feature):
        return self.generate(source_img, audio_feature, self.encode_reference(ref_img))
