"""AdaAT: adaptive affine transformation of feature maps (DINet, CVPR/AAAI 2023).

Every channel of the reference feature map gets its own scale, rotation and translation,
predicted from the fused image/audio code, and is resampled bilinearly.
The numerics are the published ones on purpose: the x/y grid is built with the align-corners
convention while `grid_sample` runs with its default (align_corners=False), and the z axis
(channels) goes through the same trilinear sampling, so neighbouring channels blend slightly.
Published weights were trained with exactly that, so a faithful port must keep it.

Two implementations of that one function:
- `published_warp` is DINet's code: a 3-D `grid_sample` of the (B, 1, C, H, W) volume. Its z coordinate
  does not depend on the code, so each output channel reads a fixed pair of input channels with fixed weights.
- `channel_pair_warp` uses that: it first blends each output channel's two input channels (zero beyond the
  first and last, as the 3-D zero padding does), then runs one 2-D bilinear `grid_sample` per channel,
  (B*C, 1, H, W). Bilinear sampling is linear in its input, so blending before sampling is the same as
  sampling both channels and blending after, and a 2-D sample reads half the corners of a 3-D one (with
  vectorised CPU kernels). Its grid is built with the published order of operations, so it is the same to the
  bit; the outputs then differ only in the rounding of the weights' products: 1e-14 in float64, 4e-6 in
  float32 on the reference fixture, and gradients agree to 1e-12 in float64 (tests/test_models.py).
  Its backward is written out (`_ChannelPairWarp`). It is the default, as it is faster in training and at
  inference; `AdaAT(..., implementation="published")` (or setting `.implementation`, models/formulations.py)
  gives DINet's.
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


def published_warp(feature_map, scale, angle, translation):
    """DINet's warp: (B, C, H, W) sampled as a (B, 1, C, H, W) volume at a (B, C, H, W, 3) grid."""
    batch, channels, height, width = feature_map.shape
    grid_xy, grid_z = coordinate_grid(channels, height, width, feature_map.dtype, feature_map.device)
    cos = torch.cos(angle).view(batch, channels, 1, 1)
    sin = torch.sin(angle).view(batch, channels, 1, 1)
    x, y = grid_xy[..., 0], grid_xy[..., 1]                   # (C, H, W) each
    rotated = torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1)  # (B, C, H, W, 2)
    trans_grid = rotated * scale.view(batch, channels, 1, 1, 1) + translation.view(batch, channels, 1, 1, 2)
    full_grid = torch.cat([trans_grid, grid_z.expand(batch, -1, -1, -1).unsqueeze(-1)], dim=-1)
    # (B, 1, C, H, W) sampled at (B, C, H, W, 3) -> (B, C, H, W)
    return F.grid_sample(feature_map.unsqueeze(1), full_grid, align_corners=False).squeeze(1)


_PAIR_CACHE = {}


def channel_pairs(channels, dtype, device):
    """Where the published z grid lands for each output channel c, as gathers: output channel c is
    sum_j input[index[j, c]] * weight[j, c] (j = 0, 1: the lower and upper of its two input channels), and
    the transposed gathers for the backward (input channel k gets sum_j grad[index_t[j, k]] * weight_t[j, k]).
    The z grid runs from -0.5 to C - 0.5 channels, so the first output channel blends a zero channel below
    channel 0 and the last one a zero channel above C - 1: those get a clamped index and weight 0. Computed in
    `dtype` as grid_sample computes them from a grid of that dtype (iz = ((z + 1) * C - 1) / 2, weights
    k0 + 1 - iz and iz - k0): in fp32, iz ~ 150 carries 1e-5 of rounding, which the published output has too."""
    key = (channels, dtype, str(device))
    if key not in _PAIR_CACHE:
        _, z = coordinate_grid(channels, 1, 1, dtype, torch.device("cpu"))
        iz = ((z.view(channels) + 1) * channels - 1) / 2              # in [-0.5, C - 0.5]
        low = torch.floor(iz)
        index = torch.stack([low.long(), low.long() + 1])             # (2, C)
        weight = torch.stack([(low + 1) - iz, iz - low])              # (2, C)
        outside = (index < 0) | (index > channels - 1)
        weight = weight.masked_fill(outside, 0)
        index = index.clamp(0, channels - 1)
        sources = [[] for _ in range(channels)]                       # per input channel: (output channel, weight)
        for j in range(2):
            for c in range(channels):
                if not outside[j, c]:
                    sources[index[j, c]].append((c, weight[j, c]))
        depth = max(len(entries) for entries in sources)
        index_t = torch.zeros(depth, channels, dtype=torch.long)
        weight_t = torch.zeros(depth, channels, dtype=dtype)
        for k, entries in enumerate(sources):
            for j, (c, w) in enumerate(entries):
                index_t[j, k], weight_t[j, k] = c, w
        _PAIR_CACHE[key] = tuple(t.to(device) for t in (index, weight, index_t, weight_t))
    return _PAIR_CACHE[key]


def _gather_channels(tensor, index, weight):
    """sum_j tensor[:, index[j]] * weight[j], (B, C, H, W) contiguous."""
    channels = index.shape[1]
    out = torch.mul(tensor.index_select(1, index[0]), weight[0].view(1, channels, 1, 1))
    for j in range(1, len(index)):
        out.add_(tensor.index_select(1, index[j]) * weight[j].view(1, channels, 1, 1))
    return out


def _axis(n, dtype, device):
    """coordinate_grid's axis, [-1, 1] align-corners style, (n,): the same values to the bit."""
    return 2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1


class _ChannelPairWarp(torch.autograd.Function):
    """Forward: blend each output channel's input pair, build the per-channel affine grid with the published
    order of operations (so the grid is the same to the bit: AdaAT's output moves by ~3e-5 when a grid
    coordinate moves by one ulp), one 2-D bilinear sample. Backward: grid_sample's backward, then the grid's
    gradient reduced to the 4 parameters per channel in closed form (sums over rows and columns), and the
    blend's gradient gathered back to the input pairs. Saved for the backward: the blended map and the grid."""

    @staticmethod
    def forward(ctx, feature_map, scale, angle, translation):
        batch, channels, height, width = feature_map.shape
        dtype, device = scale.dtype, feature_map.device
        index, weight, _, _ = channel_pairs(channels, dtype, device)
        # NCHW first: a channel gather from channels_last is a strided copy per element
        blended = _gather_channels(feature_map.contiguous().to(dtype), index, weight)  # (B, C, H, W)
        x = _axis(width, dtype, device).view(1, 1, 1, width)
        y = _axis(height, dtype, device).view(1, 1, height, 1)
        cos = torch.cos(angle).view(batch, channels, 1, 1)
        sin = torch.sin(angle).view(batch, channels, 1, 1)
        scale4 = scale.view(batch, channels, 1, 1)
        grid = torch.empty((batch, channels, height, width, 2), dtype=dtype, device=device)
        grid_x, grid_y = grid[..., 0], grid[..., 1]
        torch.sub(cos * x, sin * y, out=grid_x)                       # (B, C, H, W): (cos x - sin y) s + tx
        grid_x.mul_(scale4).add_(translation[..., 0].view(batch, channels, 1, 1))
        torch.add(sin * x, cos * y, out=grid_y)                       # (sin x + cos y) s + ty
        grid_y.mul_(scale4).add_(translation[..., 1].view(batch, channels, 1, 1))
        flat_input = blended.view(batch * channels, 1, height, width)
        flat_grid = grid.view(batch * channels, height, width, 2)
        sampled = torch.grid_sampler_2d(flat_input, flat_grid, 0, 0, False)  # bilinear, zeros, align_corners=False
        ctx.save_for_backward(flat_input, flat_grid, scale, cos, sin)
        ctx.memory_format = (torch.channels_last if feature_map.is_contiguous(memory_format=torch.channels_last)
                             and not feature_map.is_contiguous() else torch.contiguous_format)
        ctx.feature_dtype = feature_map.dtype
        sampled = sampled.view(batch, channels, height, width)
        return sampled.contiguous(memory_format=ctx.memory_format)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        flat_input, flat_grid, scale, cos, sin = ctx.saved_tensors
        batch, channels = scale.shape
        height, width = flat_input.shape[2:]
        dtype, device = flat_input.dtype, flat_input.device
        need_feature, need_scale, need_angle, need_translation = ctx.needs_input_grad
        need_grid = need_scale or need_angle or need_translation
        grad_flat = grad_output.to(dtype).contiguous().view(batch * channels, 1, height, width)
        grad_blended, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_flat, flat_input, flat_grid, 0, 0, False, [need_feature, need_grid])
        grad_feature = grad_scale = grad_angle = grad_translation = None
        if need_feature:
            _, _, index_t, weight_t = channel_pairs(channels, dtype, device)
            # gathers, not index_add_: on CPU index_add_ along channels of a large map is ~100x slower
            grad_feature = _gather_channels(grad_blended.view(batch, channels, height, width), index_t, weight_t)
            grad_feature = grad_feature.to(ctx.feature_dtype).contiguous(memory_format=ctx.memory_format)
        if need_grid:
            grad_grid = grad_grid.view(batch, channels, height, width, 2)
            x, y = _axis(width, dtype, device), _axis(height, dtype, device)
            by_column = grad_grid.sum(2)                              # (B, C, W, 2)
            by_row = grad_grid.sum(3)                                 # (B, C, H, 2)
            total = by_column.sum(2)                                  # (B, C, 2): d/d translation
            gx_x, gy_x = (by_column * x.view(1, 1, width, 1)).sum(2).unbind(-1)   # sum of dL/dgrid_x * x, ...
            gx_y, gy_y = (by_row * y.view(1, 1, height, 1)).sum(2).unbind(-1)     # sum of dL/dgrid_x * y, ...
            cos, sin = cos.view(batch, channels), sin.view(batch, channels)
            if need_scale:
                grad_scale = cos * gx_x - sin * gx_y + sin * gy_x + cos * gy_y
            if need_angle:
                grad_angle = scale * (-sin * gx_x - cos * gx_y + cos * gy_x - sin * gy_y)
            if need_translation:
                grad_translation = total
        return grad_feature, grad_scale, grad_angle, grad_translation


def channel_pair_warp(feature_map, scale, angle, translation):
    """The published warp as a channel blend and a 2-D bilinear sample per channel (see the module notes)."""
    # under autocast grid_sample runs in fp32 (CPU and CUDA both cast it), so blend and build the grid in fp32
    # too (the published code builds its grid in the feature dtype, which bf16 rounds to half a channel)
    device_type = feature_map.device.type
    if device_type == "meta" or not torch.is_autocast_enabled(device_type):  # meta: shapes and FLOPs only
        return _ChannelPairWarp.apply(feature_map, scale, angle, translation)
    dtype = torch.promote_types(feature_map.dtype, torch.float32)
    with torch.autocast(device_type, enabled=False):
        return _ChannelPairWarp.apply(feature_map, scale.to(dtype), angle.to(dtype), translation.to(dtype))


WARPS = {"channel_pair": channel_pair_warp, "published": published_warp}
DEFAULT_WARP = "channel_pair"


class AdaAT(nn.Module):
    def __init__(self, para_ch, feature_ch, implementation=DEFAULT_WARP):
        super().__init__()
        if implementation not in WARPS:
            raise ValueError(f"AdaAT implementation {implementation!r}: choose one of {', '.join(WARPS)}")
        self.para_ch = para_ch
        self.feature_ch = feature_ch
        self.implementation = implementation
        self.commn_linear = nn.Sequential(nn.Linear(para_ch, para_ch), nn.ReLU())
        self.scale = nn.Sequential(nn.Linear(para_ch, feature_ch), nn.Sigmoid())
        self.rotation = nn.Sequential(nn.Linear(para_ch, feature_ch), nn.Tanh())
        self.translation = nn.Sequential(nn.Linear(para_ch, 2 * feature_ch), nn.Tanh())

    def forward(self, feature_map, para_code):
        batch, channels = feature_map.shape[:2]                  # (B, C, H, W)
        para_code = self.commn_linear(para_code)                  # (B, P)
        scale = self.scale(para_code) * 2                         # (B, C), in (0, 2)
        angle = self.rotation(para_code) * 3.14159                # (B, C), in (-pi, pi)
        translation = self.translation(para_code).view(batch, channels, 2)
        return WARPS[self.implementation](feature_map, scale, angle, translation)  # (B, C, H, W)
