"""How a stage's networks compute: --amp (common/devices.py), --channels_last, --compile.

fp32 on a GPU computes convolutions and matrix products in TF32 (cuDNN's default, and the published code's
numerics). fp16 trains with a gradient scaler per optimizer. --channels_last (default on) stores conv weights and
image batches NHWC, faster in fp32 and bf16 alike. --compile default runs the generator through torch.compile (off
by default: on a CPU it compiles for minutes before the first step); --compile reduce-overhead replays the whole
step as one CUDA graph (engine/graphs.py).
"""
import contextlib

import torch

from common.devices import AMP_CHOICES, resolve_amp
from common.errors import UserError
from data.dataset import as_float

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, amp="off", device=torch.device("cpu"), channels_last=False, compile="off"):
        if amp not in AMP_CHOICES:
            raise UserError(f"--amp {amp}: unknown precision; pass one of {', '.join(AMP_CHOICES)}")
        self.amp = resolve_amp(amp, device, training=True)
        if device.type == "cuda":  # fp32 matrix products on tensor cores too, as cuDNN's convolutions already are
            torch.set_float32_matmul_precision("high")
        self.device_type = device.type
        self.channels_last = channels_last
        self.compile = compile  # one of config.config.COMPILE_MODES
        self.autocast_cache = True  # off inside a CUDA graph's capture

    @classmethod
    def of(cls, opt, device):
        """From a run's options; option sets that predate these flags (bench, tests) get fp32 NCHW."""
        return cls(getattr(opt, "amp", "off"), device, getattr(opt, "channels_last", False),
                   getattr(opt, "compile", "off"))

    def describe(self):
        return (f"{'fp32' if self.amp == 'off' else self.amp + ' autocast'}"
                f"{', channels_last' if self.channels_last else ''}{'' if self.compile == 'off' else ', --compile ' + self.compile}")

    def autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.amp], cache_enabled=self.autocast_cache)

    def scaler(self):
        """A gradient scaler for one optimizer; it scales only under fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.amp == "fp16")

    def prepare(self, module):
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def batch(self, tensor):
        """An input tensor in the networks' memory format (image batches, 4-D)."""
        return tensor.contiguous(memory_format=torch.channels_last) if self.channels_last and tensor.dim() == 4 else tensor

    def inputs(self, batch, device):
        """A loader's batch as the networks take it: on `device` (without waiting), in their memory format, uint8
        images made [0, 1] floats there (float keeps the memory format)."""
        return {key: as_float(self.batch(value.to(device, non_blocking=True))) for key, value in batch.items()}
