"""The frame stage's data loader, which the training step must never wait for."""
import tempfile
import time

import torch

from .measure import STAGES


def bench_loader(opt, device, precision, lab):
    """The frame stage's data loader at mouth 64, batch 24, as train() builds it (workers, seeded sampler, crop
    cache) on demo data: samples per second in the first epoch (JPEGs read and resized) and after (cached)."""
    from torch.utils.data import DataLoader

    from data.dataset import FrameDataset
    from data.procedural_faces import make_demo_data
    from data.training_json import load_training_json
    from engine.trainer import EpochOrder
    mouth_size, batch = STAGES[0]
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as folder:
        training_set = load_training_json(make_demo_data(folder, num_videos=2 if opt.quick else 4, seconds=4.0, seed=0))
        dataset = FrameDataset(training_set, opt.loader_augment_num, mouth_size)
        order = EpochOrder(len(dataset), batch, seed=0)
        loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=opt.num_workers,
                            persistent_workers=opt.num_workers > 0, pin_memory=device.type == "cuda",
                            generator=torch.Generator())
        rates = []
        for epoch in range(2 if opt.quick else 3):
            order.set_epoch(epoch)
            started, samples = time.perf_counter(), 0
            for items in loader:
                samples += items["source"].shape[0]
            rates.append(samples / (time.perf_counter() - started))
    return [dict(task="loader", lab=lab, mouth=mouth_size, batch=batch, precision="-", num_workers=opt.num_workers,
                 samples_per_s=max(rates[1:]), first_epoch_samples_per_s=rates[0], samples_per_epoch=len(dataset))]
