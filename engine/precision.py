"""How a stage's networks compute: --amp, --channels_last, --compile.

--amp auto (default) is fp32 on a GPU when training, bf16 autocast where the hardware computes bf16 natively
otherwise (dubbing on CUDA compute capability 8.0 and newer; CPUs with AMX or AVX512-BF16), fp32 elsewhere. All
measured (README "Speed"): bf16 is 4-5x faster than fp32 for a DINet training step on a Sapphire Rapids CPU and
several times slower on a CPU without native bf16; on an H200 at the lab's batch sizes a training iteration is
bound by kernel launches (45-80 ms whatever its size), and bf16's casts made it slower than fp32 at mouth 64
(402 vs 535 samples/s) and 256 (49 vs 55), faster only at 128 (214 vs 202), while the generator at inference
runs 1.4x faster in bf16. fp32 on a GPU computes convolutions and matrix products in TF32 (cuDNN's default,
and the published code's numerics). fp16 trains with a gradient scaler per optimizer. --channels_last
(default on) stores conv weights and image batches NHWC, measured faster in fp32 and bf16 alike. --compile runs
the generator through torch.compile (off by default: on a CPU it spends minutes compiling before the first step).
"""
import contextlib
import warnings

import torch

from common.errors import UserError

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


class Precision:
    def __init__(self, amp="off", device=torch.device("cpu"), channels_last=False, compile=False):
        if amp not in AMP_CHOICES:
            raise UserError(f"--amp {amp}: unknown precision; pass one of {', '.join(AMP_CHOICES)}")
        self.amp = resolve_amp(amp, device, training=True)
        if device.type == "cuda":  # fp32 matrix products on tensor cores too, as cuDNN's convolutions already are
            torch.set_float32_matmul_precision("high")
        self.device_type = device.type
        self.channels_last = channels_last
        self.compile = compile

    @classmethod
    def of(cls, opt, device):
        """From a run's options; option sets that predate these flags (bench, tests) get fp32 NCHW."""
        return cls(getattr(opt, "amp", "off"), device, getattr(opt, "channels_last", False),
                   getattr(opt, "compile", False))

    def describe(self):
        return (f"{'fp32' if self.amp == 'off' else self.amp + ' autocast'}"
                f"{', channels_last' if self.channels_last else ''}{', compiled' if self.compile else ''}")

    def autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.amp])

    def scaler(self):
        """A gradient scaler for one optimizer; it scales only under fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.amp == "fp16")

    def prepare(self, module):
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def batch(self, tensor):
        """An input tensor in the networks' memory format (image batches, 4-D)."""
        return tensor.contiguous(memory_format=torch.channels_last) if self.channels_last and tensor.dim() == 4 else tensor
