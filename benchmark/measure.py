"""What every benchmark row shares: the lab's stage sizes, timing, synthetic generator inputs, FLOP counts and
peak memory."""
import time
from copy import deepcopy

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.devices import synchronize
from common.geometry import AUDIO_WINDOW, NUM_REFERENCES, CropGeometry
from models.fast.split import split_first_alignment_layer
from models.formulations import plain_formulations

STAGES = ((64, 24), (128, 12), (256, 4))  # the lab's frame stages: (mouth, batch)
CLIP_STAGES = ((256, 3),)


def selected(stages, mouths):
    """The (mouth, batch) pairs of `stages` at the given mouth sizes."""
    return [(mouth, batch) for mouth, batch in stages if mouth in mouths]


def seconds_left(opt):
    """Seconds left of --gpu_check's budget (--gpu_check_minutes); None outside the check: no limit."""
    deadline = getattr(opt, "deadline", None)
    return None if deadline is None else max(0.0, deadline - time.perf_counter())


def out_of_time(opt):
    """Why a row or part was not measured: the check's budget ran out."""
    return f"not measured: the check's {opt.gpu_check_minutes:g}-minute budget (--gpu_check_minutes) ran out"


def unmeasured(row):
    """Why a row holds no measurement ("failed: ..." or out_of_time's), or None where it holds one."""
    return f"failed: {row['error']}" if "error" in row else row.get("not_measured")


def timed(function, device, iterations, warmup):
    """Seconds per call of function(), after `warmup` calls."""
    for _ in range(warmup):
        function()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iterations):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / iterations


def generator_inputs(mouth_size, batch, audio_channel, device):
    """Random (masked source, references, audio window) shaped as the generator reads them."""
    geometry = CropGeometry(mouth_size)
    shape = (batch, 3, geometry.height, geometry.width)
    return (torch.rand(shape, device=device), torch.rand((batch, 3 * NUM_REFERENCES, *shape[2:]), device=device),
            torch.randn(batch, audio_channel, AUDIO_WINDOW, device=device))


def count_flops(function, *networks):
    """FLOPs of function(), with the networks' layers counted as DINet computes them (plain_formulations)."""
    with plain_formulations(*networks), FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def network_flops(network, inputs):
    """FLOPs of network(*inputs) for one sample, gradients on (as engine/compare.py counts)."""
    return count_flops(lambda: network(*(tensor[:1] for tensor in inputs)), network)


def reference_once_flops(network, inputs):
    """FLOPs of one sample as dubbing computes it: `generate` with the references encoded once and the alignment
    encoder's first convolution split as optimize_for_inference splits it (its other kernels compute the same
    convolutions, so the plain layers are counted)."""
    split = split_first_alignment_layer(deepcopy(network))
    masked, reference, audio = (tensor[:1] for tensor in inputs)
    state = split.encode_reference(reference)
    return count_flops(lambda: split.generate(masked, audio, state), split)


def peak_memory_gb(device):
    """This process's peak memory so far: the device's allocations on a GPU, the resident set on a CPU (each
    training row runs in a process of its own, so it is the row's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux
