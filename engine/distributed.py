"""Device choice and torchrun setup, done once per process.

`torchrun --nproc_per_node=N train_DINet_frame.py ...` sets RANK, LOCAL_RANK and WORLD_SIZE; then each
process drives one GPU (NCCL) or a CPU share (gloo), models are wrapped in DistributedDataParallel
with SyncBatchNorm (CrossProcessBatchNorm on CPU), and only rank 0 logs and writes checkpoints.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.distributed.nn.functional as functional_dist
from torch import nn

from common.devices import choose_device


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def setup(device_arg=None):
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_arg, local_rank if world_size > 1 else None)  # one process per GPU under torchrun
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, int(os.environ.get("RANK", "0")), world_size)


class CrossProcessBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: mean and variance all-reduced over the processes (differentiably).
    nn.SyncBatchNorm does this on CUDA only; this is it for the gloo backend on CPU."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        total = functional_dist.all_reduce(torch.cat([x.sum(dims), count[None]]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = functional_dist.all_reduce(centred.pow(2).sum(dims)) / n  # biased, as BatchNorm normalises
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def convert_batchnorm(module, cuda):
    """Every BatchNorm in `module` computing global-batch statistics: nn.SyncBatchNorm on CUDA,
    CrossProcessBatchNorm on CPU."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        converted = CrossProcessBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                          module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        return converted.to(module.running_mean.device)
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child, cuda))
    return module


def wrap(module, runtime):
    """DDP with global-batch BatchNorm under torchrun; the module itself otherwise."""
    module = module.to(runtime.device)
    if not runtime.distributed:
        return module
    module = convert_batchnorm(module, runtime.device.type == "cuda")
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(module):
    """The network inside torch.compile and DDP wrappers (whose state_dict has no wrapper prefixes)."""
    module = getattr(module, "_orig_mod", module)
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def average(values, runtime):
    """A tensor averaged over the processes, on the device (no wait under NCCL): the logged losses are the global
    batch's, as one process with the whole batch (or DINet's DataParallel) would log them."""
    if not runtime.distributed:
        return values
    values = values.clone()
    torch_dist.all_reduce(values)
    return values / runtime.world_size


def any_rank(flag, runtime):
    """True when `flag` is true on any process (every process must call it at the same point)."""
    if not runtime.distributed:
        return bool(flag)
    value = torch.tensor(float(bool(flag)), device=runtime.device)
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
    return bool(value.item())


class HostCopy:
    """A tensor's copy to the host, queued without waiting (into pinned memory from a GPU); `read()` then waits for
    this copy alone, not for the work queued after it."""

    def __init__(self, tensor):
        self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
        self.host.copy_(tensor, non_blocking=True)
        self.event = None
        if tensor.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def read(self):
        if self.event is not None:
            self.event.synchronize()
        return self.host


class LateVote:
    """any_rank for a flag raised between iterations, without the host waiting for the device each iteration: under
    torchrun each iteration's vote is all-reduced and copied back behind that iteration's step and read at the next
    iteration, after its step is queued, so every process acts on it at the same iteration, one after it was cast
    (`settle` reads the last vote at once). One process: the flag itself."""

    def __init__(self, runtime):
        self.runtime, self.pending = runtime, None

    def __call__(self, flag):
        if not self.runtime.distributed:
            return bool(flag)
        outcome = self.settle()  # the last iteration's vote: its copy was queued before this iteration's step
        vote = torch.full((), float(bool(flag)), device=self.runtime.device)
        torch_dist.all_reduce(vote, op=torch_dist.ReduceOp.MAX)  # under NCCL the stream waits for it, not the host
        self.pending = HostCopy(vote)
        return outcome

    def settle(self):
        """The outcome of the vote not yet read (False if none)."""
        previous, self.pending = self.pending, None
        return previous is not None and bool(previous.read().item())


def cleanup():
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
