"""The training loader: items carry their images as uint8, which training makes the [0, 1] floats of the crops on its
device; how many worker processes it starts by default."""
import os

import cv2
import pytest
import torch

from common.geometry import CropGeometry
from data.clip_dataset import ClipDataset
from data.dataset import FrameDataset
from data.training_json import load_training_json
from engine.precision import Precision
from engine.trainer import loader_workers

IMAGES = ("source", "source_masked", "reference")


def crops_as_read(training_set, geometry):
    """Every face crop of the set read independently of the loader: JPEG, RGB, resized, [0, 1]."""
    size = (geometry.width, geometry.height)
    return [torch.from_numpy(cv2.resize(cv2.imread(path)[:, :, ::-1].copy(), size)).permute(2, 0, 1).float() / 255
            for clips in training_set.videos.values() for clip in clips for path in clip.frame_paths]


def is_a_crop(image, crops):
    return any(torch.equal(image, crop) for crop in crops)


@pytest.mark.parametrize("dataset_class", [FrameDataset, ClipDataset])
def test_items_carry_uint8_images_that_training_turns_into_the_crops_floats(tiny_json, dataset_class):
    training_set = load_training_json(tiny_json)
    geometry = CropGeometry(64)
    dataset = dataset_class(training_set, augment_num=1, mouth_size=64, frame_cache_mb=0)
    items = [dataset[(index, 7)] for index in range(2)]
    assert all(items[0][key].dtype == torch.uint8 for key in IMAGES)  # a quarter of float32's bytes per sample
    batch = Precision(channels_last=True).inputs(torch.utils.data.default_collate(items), torch.device("cpu"))
    crops = crops_as_read(training_set, geometry)
    source, masked, reference = (batch[key].flatten(0, -4) for key in IMAGES)  # (N, C, H, W) either stage
    assert source.dtype == torch.float32 and batch["audio"].dtype == torch.float32
    if dataset_class is FrameDataset:
        assert all(batch[key].is_contiguous(memory_format=torch.channels_last) for key in IMAGES)
    assert all(is_a_crop(image, crops) for image in source)
    assert all(is_a_crop(image, crops) for image in reference.reshape(-1, 3, *reference.shape[-2:]))
    rows, cols = geometry.mouth_rows, geometry.mouth_cols
    assert masked[..., rows, cols].abs().sum() == 0 and (source[..., rows, cols] > 0).any()
    masked[..., rows, cols] = source[..., rows, cols]
    assert torch.equal(masked, source)


@pytest.mark.parametrize("cores, local_processes, expected", [(16, 1, 8), (6, 1, 5), (64, 8, 7), (16, 8, 2), (1, 1, 2)])
def test_default_loader_workers_on_a_gpu_follow_this_process_share_of_the_cores(monkeypatch, cores, local_processes,
                                                                                 expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
    assert loader_workers(None, torch.device("cuda")) == expected
    assert loader_workers(None, torch.device("cpu")) == 2  # a CPU's step is ~100x slower than the loader
    assert loader_workers(3, torch.device("cuda")) == 3
