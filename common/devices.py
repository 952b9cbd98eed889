"""Where and in what precision a command computes: --device and --amp, read the same way by training and dubbing.

--amp auto is fp32 on a GPU when training, and otherwise bf16 autocast where the hardware computes bf16 natively
(dubbing on CUDA compute capability 8.0 and newer; CPUs with AMX or AVX512-BF16), fp32 elsewhere: the faster
choice on each, as measured (docs/performance.md).
"""
import os
import warnings

import torch

from .errors import UserError

AMP_CHOICES = ("auto", "off", "bf16", "fp16")


def usable_cores():
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_has_native_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_amp(amp, device, training=False):
    """The precision `auto` stands for on `device` (when `training`, fp32 on a GPU); others are returned as given
    (bf16 on a CPU without native bf16 with a warning: it is emulated there, several times slower than fp32)."""
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("--amp bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated and runs "
                      "several times slower than fp32; pass --amp auto (fp32 here) unless you mean to", stacklevel=2)
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if not training and torch.cuda.get_device_capability(device)[0] >= 8 else "off"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "off"


def choose_device(device_arg=None, index=None):
    """The device --device names (default: cuda when available); a GPU gets an index (`index`, this process's under
    torchrun, else the one named, else 0: "cuda" alone is refused by some releases) and is made current."""
    if device_arg is None:
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_arg)
    except RuntimeError:
        raise UserError(f"--device {device_arg}: not a device; pass cuda, cuda:N or cpu") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device_arg}: no CUDA device is visible; pass --device cpu")
        device = torch.device("cuda", index if index is not None else (device.index or 0))
        torch.cuda.set_device(device)
    return device


def synchronize(device):
    """Wait for the work queued on `device` (a GPU's; a CPU's is done when queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
