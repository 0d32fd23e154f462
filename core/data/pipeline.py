"""Datasets and sampling: load (cached) -> augment (train only, seeded per sample) -> normalise.

Augmentation randomness comes only from the `sample_seed` that `EpochSampler` hands out with each
index, derived from (seed, epoch, index). Epoch e's batches are therefore the same whatever the
worker count, and after a restart that resumes at epoch e.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .augment import build_augmentation
from .cache import SplitCache
from .sources import SplitSource, load_sample
from ..spec import AugmentSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of item `index` in `epoch` (a 32-bit int, same in every process)."""
    return int(np.random.SeedSequence([seed, epoch, index, 0x5A3]).generate_state(1)[0])


def _order_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x0DE]).generate_state(1, np.uint64)[0] >> 1)


class EpochSampler(Sampler):
    """Yields `(index, sample_seed)` for one rank's share of an epoch.

    Order: a permutation from a `torch.Generator` seeded by (seed, epoch) when `shuffle`, else
    0..n-1. `pad=True` (training) deals the order out round-robin and repeats the first items so
    every rank gets ceil(n / world_size), like `DistributedSampler`. `pad=False` (evaluation)
    gives each rank a contiguous, possibly shorter slice, so every item is seen exactly once.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1, pad: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(_order_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        if not self.pad:
            lo, hi = self.rank * self.n // self.world_size, (self.rank + 1) * self.n // self.world_size
            return order[lo:hi]
        total = math.ceil(self.n / self.world_size) * self.world_size
        order = (order * math.ceil(total / max(self.n, 1)))[:total]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices():
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return (self.rank + 1) * self.n // self.world_size - self.rank * self.n // self.world_size


class SegmentationDataset(Dataset):
    """Items `(image float32 (3, H, W) normalised, mask uint8 (H, W) in {0, 1, 255}, index)`.

    `dataset[i]` or `dataset[(i, sample_seed)]`; without a seed a training dataset augments with
    `sample_seed(seed, 0, i)` (the same every call). `raw(i)` gives the un-augmented, resized
    uint8 pair. With a cache the arrays are memory-mapped lazily in each process, never pickled.
    """

    def __init__(self, source: SplitSource, size: int, *, mean: Sequence[float], std: Sequence[float],
                 augment: AugmentSpec | None = None, cache: SplitCache | None = None, seed: int = 0,
                 limit: int | None = None):
        self.source, self.size, self.seed = source, size, seed
        self.samples = source.samples[:limit]
        self.ids = [s.id for s in self.samples]
        self.augment_spec = augment
        self.cache = cache
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self._scale = (1 / (255 * self.std)).astype(np.float32)[:, None, None]
        self._shift = (-self.mean / self.std).astype(np.float32)[:, None, None]
        self._pipeline: Any | None = None
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pipeline"] = None  # rebuilt per process
        state["_arrays"] = None  # re-opened per process: the memory map is shared, not copied
        return state

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (S, S, 3) RGB image, uint8 (S, S) mask), resized, neither augmented nor normalised."""
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} {self.source.split} items")
        if self.cache is None:
            return load_sample(self.samples[index], self.source, self.size)
        if self._arrays is None:
            self._arrays = self.cache.open()
        images, masks = self._arrays
        return np.array(images[index]), np.array(masks[index])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), None)
        image, mask = self.raw(index)
        if self.augment_spec is not None:
            if self._pipeline is None:
                self._pipeline = build_augmentation(self.augment_spec, self.size) or False
            if self._pipeline:
                image, mask = self._pipeline(image, mask, sample_seed(self.seed, 0, index) if seed is None else seed)
        return self.normalise(image), torch.from_numpy(np.ascontiguousarray(mask)), index

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> float32 (3, H, W): (x / 255 - mean) / std, in numpy (small torch
        ops on a permuted view cost ~50x more)."""
        pixels = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
        pixels *= self._scale
        pixels += self._shift
        return torch.from_numpy(pixels)


def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack a batch with numpy: `torch.stack` wakes the intra-op thread pool for a memcpy, which
    costs tens of ms per batch when the model's threads hold the cores."""
    images, masks, indices = zip(*items)
    return (
        torch.from_numpy(np.stack([image.numpy() for image in images])),  # (B, 3, H, W) float32
        torch.from_numpy(np.stack([mask.numpy() for mask in masks])),  # (B, H, W) uint8
        torch.tensor(indices, dtype=torch.int64),
    )
