"""Device choice and torchrun setup, done once per process.

`torchrun --nproc_per_node=N train_DINet_frame.py ...` sets RANK, LOCAL_RANK and WORLD_SIZE; then each
process drives one GPU (NCCL) or a CPU share (gloo), models are wrapped in DistributedDataParallel
with SyncBatchNorm, and only rank 0 logs and writes checkpoints.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


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
    if device_arg is None:
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {device_arg}: no CUDA device is visible; pass --device cpu")
        # one process per GPU under torchrun; set_device needs an index ("cuda" alone is refused by some releases)
        device = torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, int(os.environ.get("RANK", "0")), world_size)


def wrap(module, runtime):
    """DDP + SyncBatchNorm under torchrun; the module itself otherwise."""
    module = module.to(runtime.device)
    if not runtime.distributed:
        return module
    module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(module):
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def cleanup():
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
