"""The generator at inference, with the work that depends only on the 5 reference frames done once per video.

Dubbing feeds every frame the same 5 reference crops, so DINet's reference encoder and the first appearance
block (4 residual blocks at 256 channels) compute the same features for every frame: ~6.3 of the 22.4 GFLOPs
per frame at mouth 64 (lab1). `ReferencedGenerator` computes them once and runs the rest of `DINet.forward`
per batch; its output is the network's (tests/test_inference.py holds every lab to that). It runs a copy of
the network prepared for inference (`inference_network`: BatchNorms folded into their convolutions, the
3x3 convolutions from 256 or more channels by Winograd's algorithm on CPU in fp32, optionally channels_last,
oneDNN's preferred layout on CPU and the tensor cores', and bf16 weights under bf16 autocast).
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models.blocks import ResBlock, SameBlock, UpBlock2d, WinogradConv2d, fresh_relu


def autocast(device, amp):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def inference_network(network, amp=None, channels_last=False):
    """A copy of `network` (in eval mode) for inference: every BatchNorm that follows a convolution folded
    into it (conv -> BN is one affine map at inference; ResBlock's first BN acts on the block input and
    stays), the 3x3 convolutions from 256 or more channels to 128 or more as WinogradConv2d (on CPU in fp32:
    a quarter of the multiplications), the convolutions' weights stored in bf16 under --amp bf16 (autocast
    would cast them on every call; the values are the same), and channels_last when asked. The caller's
    network is left as it is."""
    network = copy.deepcopy(network).eval()
    for module in network.modules():
        if isinstance(module, (SameBlock, UpBlock2d)) and isinstance(module.norm, nn.modules.batchnorm._BatchNorm):
            module.conv, module.norm = fuse_conv_bn_eval(module.conv, module.norm), nn.Identity()
        elif isinstance(module, ResBlock) and isinstance(module.norm2, nn.modules.batchnorm._BatchNorm):
            module.conv1, module.norm2 = fuse_conv_bn_eval(module.conv1, module.norm2), nn.Identity()
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            if WinogradConv2d.suits(child):
                setattr(parent, name, WinogradConv2d.of(child))
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    if amp == "bf16":
        for module in network.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                module.to(torch.bfloat16)
    return network


class ReferencedGenerator:
    """generate(masked_source (B, 3, H, W), audio (B, A, 5)) -> (B, 3, H, W) in [0, 1], float32, with the
    reference branch of `network` computed once from `reference` (1, 15, H, W).

    With DINet's alignment (`concat`), the alignment encoder's first convolution reads [source features,
    reference features] stacked on channels: it is one convolution per half, summed, so the reference half
    (with the bias) is computed once as well and each frame pays for the source half only (`split`: 16.1 ->
    15.8 GFLOPs a frame at mouth 64, 257.8 -> 252.9 at 256; measured 3-4% and 2% faster on a 2-core CPU)."""

    def __init__(self, network, reference, amp=None, channels_last=False):
        network = self.network = inference_network(network, amp, channels_last)
        self.amp = amp
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = reference.device
        with torch.no_grad(), autocast(self.device, amp):
            self.reference = reference.contiguous(memory_format=self.memory_format)
            self.ref_feature = network.ref_in_conv(self.reference)                           # (1, 256, H/4, W/4)
            self.ref_prepared = network.appearance_conv_list[0](self.ref_feature)             # (1, 256, H/4, W/4)
            first = getattr(network, "trans_conv", [None])[0]
            self.split = (network.config.alignment == "concat" and isinstance(first, SameBlock)
                          and isinstance(first.norm, nn.Identity) and type(first.conv) in (nn.Conv2d, WinogradConv2d))
            if self.split:  # relu(W [s; r] + b) = relu(W_s s + (W_r r + b))
                conv, channels = first.conv, self.ref_feature.shape[1]
                # a module of the copy, so that published_layers (FLOP counts) reaches it too
                network.add_module("source_half", self._convolution(conv.weight[:, :channels], conv))
                self.source_half = network.source_half
                self.reference_half = F.conv2d(self.ref_feature, conv.weight[:, channels:], conv.bias, conv.stride,
                                               conv.padding)                                  # (1, 128, H/4, W/4)
                network.image_code = self._image_code  # this copy's; DINet.adaptation_code calls it

    def _convolution(self, weight, like):
        """A convolution without bias of `weight`, set as `like` is (by Winograd's algorithm where it suits)."""
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], like.kernel_size, like.stride, like.padding, bias=False,
                         device="meta")
        conv.weight = nn.Parameter(weight.detach().contiguous(memory_format=self.memory_format), requires_grad=False)
        return WinogradConv2d.of(conv) if WinogradConv2d.suits(conv) else conv

    def _batch(self, tensor, batch):
        """The cached (1, ...) tensor for a batch: materialised, since modules may view or reshape it."""
        return tensor.expand(batch, *tensor.shape[1:]).contiguous(memory_format=self.memory_format)

    def _image_code(self, source_feature, ref_feature=None):
        """DINet.image_code with the reference half of its first convolution cached (`split`)."""
        first = fresh_relu(self.source_half(source_feature) + self.reference_half)  # as the SameBlock it stands for
        return self.network.trans_conv[1:](first).mean(dim=(2, 3))

    def __call__(self, masked_source, audio, first_row=0):
        """The generated crops; with `first_row` only their rows from it on are computed (the decoder's layers
        run on the rows they feed, `decode_rows`) and the rows above are zeros: dubbing pastes only the mouth and
        the band around it."""
        network = self.network
        batch = masked_source.shape[0]
        with torch.no_grad(), autocast(self.device, self.amp):
            masked_source = masked_source.contiguous(memory_format=self.memory_format)
            source_feature = network.source_in_conv(masked_source)                           # (B, 256, H/4, W/4)
            audio_steps = getattr(network, network.audio_module_name)(audio)                  # (B, 128, T')
            ref_feature = None if self.split else self._batch(self.ref_feature, batch)       # split: not read
            trans_para = network.adaptation_code(source_feature, self._batch(self.reference, batch), ref_feature,
                                                 audio_steps)                                 # (B, 256)
            warped = getattr(network, network.warp_module_name)(self._batch(self.ref_prepared, batch), trans_para)
            warped = network.appearance_conv_list[1](warped)
            merged = torch.cat([source_feature, warped], 1)                                  # (B, 512, H/4, W/4)
            if not first_row:
                return network.out_conv(merged).float()                                      # (B, 3, H, W)
            rows = decode_rows(network.out_conv, merged, first_row)                          # (B, 3, H - first_row, W)
            return F.pad(rows.float(), (0, 0, first_row, 0))                                 # zeros above


def _input_rows(layer, first):
    """For a decoder layer whose output is wanted from row `first` down: (the row its input is needed from, the
    row its output then starts at), or None for a layer it does not know (the decoder then runs whole). A
    convolution's top zero padding is wrong inside a cut, but only in the rows above those wanted."""
    if isinstance(layer, (nn.Sigmoid, nn.ReLU, nn.Identity)):
        return first, first
    if isinstance(layer, UpBlock2d) and layer.conv.kernel_size == (3, 3) and layer.conv.padding == (1, 1):
        start = max(0, first // 2 - 1)  # output row 2i reads input rows i - 1 and i, row 2i + 1 rows i and i + 1
        return start, 2 * start
    convolutions = ([layer.conv1, layer.conv2] if isinstance(layer, ResBlock)
                    else [layer.conv] if isinstance(layer, SameBlock) else [layer])
    if all(isinstance(conv, nn.Conv2d) and conv.stride == (1, 1) and conv.padding_mode == "zeros"
           and not isinstance(conv.padding, str) and conv.kernel_size[0] == 2 * conv.padding[0] + 1
           for conv in convolutions):
        start = max(0, first - sum(conv.padding[0] for conv in convolutions))
        return start, start
    return None


def decode_rows(decoder, features, first_row):
    """decoder(features)[:, :, first_row:] for a Sequential of same-size convolution blocks and x2 upsampling
    blocks (DINet's `out_conv`), each layer run on the rows that the rows wanted from it depend on. At mouth 64
    dubbing wants rows 22-103 of 104: the decoder ran 659 -> 602 ms a batch of 12 on one core."""
    layers, plan, first = list(decoder), [], first_row
    for layer in reversed(layers):  # from the output back: (output start, wanted output row) per layer
        rows = _input_rows(layer, first)
        if rows is None:
            return decoder(features)[:, :, first_row:]
        plan.insert(0, (rows[1], first))
        first = rows[0]
    x = features[:, :, first:]
    for layer, (start, wanted) in zip(layers, plan):
        x = layer(x)[:, :, wanted - start:]
    return x
