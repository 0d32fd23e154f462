"""Data for training and evaluation: `build_data(spec)` -> train/val/test loaders over a dataset
from `DATASETS` (`oxford_pet`, `synthetic`, `folder`), with a memory-mapped cache and seeded
augmentation.

Items are `(image float32 (3, H, W) normalised, mask uint8 (H, W) 0/1/255, index)`; `index`
points into `dataset.ids`. See `core.data.datasets` (the registry), `core.data.sources`
(layouts, `load_sample`), `core.data.cache` (memory maps, statistics), `core.data.pipeline`
(datasets, `EpochSampler`) and `core.data.synthetic` (the generator).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader

from .augment import Augmentation, GeometricWarp, build_augmentation
from .cache import SplitCache, dataset_stats, ensure_cache, resolve_cache_dir
from .pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochSampler,
    SegmentationDataset,
    collate,
    sample_seed,
)
from .datasets import DATASETS, build_sources
from .sources import Sample, SplitSource, check_headers, load_sample
from ..spec import ExperimentSpec

__all__ = [
    "DATASETS", "Augmentation", "DataBundle", "EpochSampler", "GeometricWarp", "SegmentationDataset", "Sample",
    "SplitSource", "build_data", "build_sources", "build_augmentation", "load_sample", "sample_seed", "resolve_num_workers",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataBundle:
    train: DataLoader
    val: DataLoader
    test: DataLoader
    train_sampler: EpochSampler  # call set_epoch(epoch) before each training epoch
    datasets: dict[str, SegmentationDataset]  # 'train' | 'val' | 'test'
    num_workers: int  # what `data.num_workers` resolved to


def resolve_num_workers(setting: int | Literal["auto"], cached: bool, cuda: bool) -> int:
    """`auto`: 0 on CPU with the cache, 1 on CPU without it, more on CUDA.

    On CPU the model's intra-op threads already use every core. With the cache an item costs
    only a memory-map read, augmentation and normalisation (~0.1-0.5 ms at 64-128 px, against
    tens of ms of model step per image), so a worker process would only compete for the cores
    and add start-up time and memory. Without the cache, JPEG decoding is worth one worker to
    overlap with the step. A GPU consumes far faster, so there workers pay off.
    """
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cuda:
        return max(1, min(8, cores - 1))
    return 0 if cached or cores < 2 else 1


def build_data(spec: ExperimentSpec, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Loaders for the spec's data: train shuffled by `EpochSampler` (padded shards), val/test in
    order (contiguous shards, no duplicates), evaluation without augmentation."""
    data = spec.data
    sources = build_sources(data)
    needs_dir = data.cache or data.normalize == "dataset"
    directory = resolve_cache_dir(data.cache_dir, _data_folder(sources)) if needs_dir else None
    caches: dict[str, SplitCache | None] = {
        split: ensure_cache(sources[split], data.image_size, directory) if data.cache else None for split in SPLITS
    }
    if not data.cache:
        for split in SPLITS:
            check_headers(sources[split])
    if data.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif data.normalize == "dataset":
        mean, std = dataset_stats(sources["train"], data.image_size, directory, caches["train"])
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    datasets = {
        split: SegmentationDataset(
            sources[split], data.image_size, mean=mean, std=std, cache=caches[split], seed=spec.seed,
            augment=data.augment if split == "train" else None,
            limit=data.limit_train if split == "train" else None,
        )
        for split in SPLITS
    }
    cuda = spec.train.device == "cuda" or (spec.train.device == "auto" and torch.cuda.is_available())
    workers = resolve_num_workers(data.num_workers, data.cache, cuda)
    if workers > 0:
        # A forked worker inherits OpenCV's thread pool without its threads and hangs on its first
        # parallel call; with one thread per process there is no pool to inherit.
        import cv2

        cv2.setNumThreads(1)
    eval_batch = spec.train.eval_batch_size or 2 * spec.train.batch_size
    train_sampler = EpochSampler(len(datasets["train"]), spec.seed, shuffle=True, rank=rank, world_size=world_size)

    def loader(split: str, sampler: EpochSampler, batch_size: int) -> DataLoader:
        # Workers of train and val stay up between epochs; test runs once. An own generator keeps
        # DataLoader from drawing its base seed from the global torch RNG (the model's).
        return DataLoader(datasets[split], batch_size=batch_size, sampler=sampler, drop_last=False,
                          collate_fn=collate, num_workers=workers, pin_memory=cuda,
                          persistent_workers=workers > 0 and split != "test",
                          generator=torch.Generator().manual_seed(spec.seed))

    def eval_sampler(split: str) -> EpochSampler:
        return EpochSampler(len(datasets[split]), spec.seed, shuffle=False, rank=rank, world_size=world_size, pad=False)

    return DataBundle(
        train=loader("train", train_sampler, spec.train.batch_size),
        val=loader("val", eval_sampler("val"), eval_batch),
        test=loader("test", eval_sampler("test"), eval_batch),
        train_sampler=train_sampler,
        datasets=datasets,
        num_workers=workers,
    )


def _data_folder(sources: dict[str, SplitSource]) -> Path:
    """The folder holding images/ (for Oxford data downloaded by torchvision, `root/oxford-iiit-pet/`)."""
    return sources["train"].samples[0].image.parent.parent
