"""The frame stage's data loader, which the training step must never wait for."""
import tempfile
import time

import torch

from .measure import STAGES, selected


def bench_loader(opt, device, precision, lab):
    """The frame stage's data loader at each lab stage of --mouths (64/bs24, 128/bs12, 256/bs4), as train() builds
    it (its default workers for `device` unless --num_workers, seeded sampler, pinned on a GPU) on demo data, batches
    moved to `device` and made floats as training does. Samples per second, the best of two epochs after a first
    that starts the workers: with every JPEG decoded and resized (no crop cache, as on a data set larger than it) and
    with the cache warm."""
    from torch.utils.data import DataLoader

    from data.dataset import FrameDataset
    from data.procedural_faces import make_demo_data
    from data.training_json import load_training_json
    from engine.precision import Precision
    from engine.trainer import EpochOrder, loader_workers
    workers = loader_workers(opt.num_workers, device)
    precision = Precision(device=device, channels_last=opt.channels_last == "on")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as folder:
        training_set = load_training_json(make_demo_data(folder, num_videos=2 if opt.quick else 4, seconds=4.0, seed=0))
        for mouth_size, batch in selected(STAGES, opt.mouths):
            rates = {}
            for cache_mb in (0, 2048):
                dataset = FrameDataset(training_set, opt.loader_augment_num, mouth_size, frame_cache_mb=cache_mb)
                order = EpochOrder(len(dataset), batch, seed=0)
                loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers,
                                    persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                                    generator=torch.Generator())
                rates[cache_mb] = []
                for epoch in range(2 if opt.quick else 3):
                    order.set_epoch(epoch)
                    started, samples = time.perf_counter(), 0
                    for items in loader:
                        samples += precision.inputs(items, device)["source"].shape[0]
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    rates[cache_mb].append(samples / (time.perf_counter() - started))
                del loader  # its workers end before the next loader's start
            rows.append(dict(task="loader", lab=lab, mouth=mouth_size, batch=batch, precision="-",
                             num_workers=workers, samples_per_s=max(rates[2048][1:]),
                             decoded_samples_per_s=max(rates[0][1:]), samples_per_epoch=len(dataset)))
    return rows
