"""Data for training and evaluation: `build_data(spec)` -> train/val/test loaders over a dataset
from `DATASETS` (`oxford_pet`, `synthetic`, `folder`), with a memory-mapped cache and seeded
augmentation.

Items are `(image float32 (3, H, W) normalised, mask uint8 (H, W) 0/1/255, index)`; `index`
points into `dataset.ids`. See `core.data.datasets` (the registry), `core.data.sources`
(layouts, `load_sample`), `core.data.cache` (memory maps, statistics), `core.data.pipeline`
(datasets, `EpochSampler`) and `core.data.synthetic` (the generator).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader

from .augment import Augmentation, GeometricWarp, build_augmentation
from .cache import SplitCache, dataset_stats, ensure_cache, resolve_cache_dir, scan_masks
from .masks import MaskCheck, lossy_masks, require_foreground, shown
from .pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochSampler,
    SegmentationDataset,
    collate,
    sample_seed,
)
from .datasets import DATASETS, build_sources
from .sources import Sample, SplitSource, load_sample
from ..errors import DataError
from ..spec import ExperimentSpec

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS", "Augmentation", "DataBundle", "EpochSampler", "GeometricWarp", "SegmentationDataset", "Sample",
    "SplitSource", "build_data", "build_sources", "build_augmentation", "load_sample", "sample_seed", "resolve_num_workers",
    "MaskCheck", "run_splits",
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
    masks: dict[str, MaskCheck] = field(default_factory=dict)  # what each checked split's masks hold

    def summary(self) -> dict[str, int]:
        """summary.json's data facts: test images, and how many have no foreground (where
        per-image Dice counts both-empty as 1); empty when the test split was not read."""
        test = self.masks.get("test")
        return {} if test is None else {"test/images": test.images, "test/empty_masks": test.empty}


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


def run_splits(spec: ExperimentSpec) -> tuple[str, ...]:
    """The splits a training run reads: test only when the best checkpoint is tested."""
    return SPLITS if spec.train.final_test else ("train", "val")


def prepare_splits(spec: ExperimentSpec, sources: dict[str, SplitSource], splits: tuple[str, ...],
                   directory: Path | None) -> tuple[dict[str, SplitCache | None], dict[str, MaskCheck]]:
    """Decode (into the cache) or check the used splits' files, and refuse a split whose masks
    hold no foreground; before anything of the run is written."""
    data = spec.data
    caches: dict[str, SplitCache | None] = dict.fromkeys(SPLITS)
    checks: dict[str, MaskCheck] = {}
    for split in splits:
        source = sources[split]
        lossy = lossy_masks(source)
        if lossy:
            logger.warning("warning: %d of %d %s masks of %s are JPEG (lossy): compression noise changes mask "
                           "values near edges and in flat areas; store masks as PNG", lossy, len(source.samples),
                           split, shown(source.samples[0].mask.parent))
        if data.cache:
            cache = caches[split] = ensure_cache(source, data.image_size, directory)
            check = cache.check()
        else:
            check = scan_masks(source, data.image_size)
        require_foreground(source, check)
        checks[split] = check
    return caches, checks


def _train_drop_last(spec: ExperimentSpec, per_rank: int, source: SplitSource) -> bool:
    """BatchNorm cannot train on a batch of one whose bottleneck is 1x1 (data.image_size equal to
    the model's size divisor): then drop a last batch of exactly one image, and refuse a train
    split of one image. Every other run keeps its last batch, whatever its size."""
    from ..models import MODELS

    if not spec.model.batchnorm or spec.data.image_size > MODELS.get(spec.model.name).size_divisor:
        return False
    if per_rank == 1:
        what = f"data.limit_train={spec.data.limit_train}" if spec.data.limit_train else "the train split (1 image)"
        raise DataError(f"{shown(source.samples[0].image.parent)}: {what} gives batches of one image, which "
                        f"BatchNorm cannot train at data.image_size={spec.data.image_size} (a 1x1 bottleneck); "
                        "use at least 2 training images, a larger data.image_size or model.batchnorm=false")
    return per_rank % spec.train.batch_size == 1


def build_data(spec: ExperimentSpec, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Loaders for the spec's data: train shuffled by `EpochSampler` (padded shards), val/test in
    order (contiguous shards, no duplicates), evaluation without augmentation. Only the splits a
    run reads are decoded and checked up front (`data.limit_train`: only those images). Every
    split resizes with `data.image_interpolation` / `data.mask_interpolation`."""
    data = spec.data
    sources = build_sources(data)
    used = dict(sources)  # what is decoded: with data.limit_train only those first training images
    if data.limit_train is not None:
        used["train"] = dataclasses.replace(sources["train"], samples=sources["train"].samples[:data.limit_train])
    needs_dir = data.cache or data.normalize == "dataset"
    directory = resolve_cache_dir(data.cache_dir, _data_folder(sources, data.root)) if needs_dir else None
    caches, checks = prepare_splits(spec, used, run_splits(spec), directory)
    constants = data.norm_constants()  # study, fixed: used as given, nothing computed
    if constants is not None:
        mean, std = constants
    elif data.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif data.normalize == "dataset":
        mean, std = dataset_stats(used["train"], data.image_size, directory, caches["train"])
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    datasets = {
        split: SegmentationDataset(
            sources[split], data.image_size, mean=mean, std=std, cache=caches[split], seed=spec.seed,
            augment=data.augment if split == "train" else None,
            limit=data.limit_train if split == "train" else None,  # the cache holds only these
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
    drop_last = _train_drop_last(spec, len(train_sampler), sources["train"])

    def loader(split: str, sampler: EpochSampler, batch_size: int) -> DataLoader:
        # Workers of train and val stay up between epochs; test runs once. An own generator keeps
        # DataLoader from drawing its base seed from the global torch RNG (the model's).
        return DataLoader(datasets[split], batch_size=batch_size, sampler=sampler,
                          drop_last=drop_last and split == "train",
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
        masks=checks,
    )


def _data_folder(sources: dict[str, SplitSource], root: str) -> Path:
    """The folder whose `.segsweep_cache/` holds the caches: the folder dataset's root (its
    images may be nested, e.g. train/image), else the folder holding images/ (for Oxford data
    downloaded by torchvision, `root/oxford-iiit-pet/`)."""
    if sources["train"].dataset == "folder":
        return Path(root).expanduser()
    return sources["train"].samples[0].image.parent.parent
