"""Datasets found by name (`data.name`, `DATASETS`): each entry turns the spec's `data` section
into the files of the train, val and test splits.

Adding a dataset is one file: a function `(data: DataSpec) -> {"train": SplitSource, "val": ...,
"test": ...}` decorated `@DATASETS.register("name")` (build the splits with `oxford_splits` or
`folder_splits`, or `SplitSource` directly).
"""
from __future__ import annotations

import dataclasses

from pathlib import Path

from ..errors import DataError
from ..registry import Registry
from ..spec import DataSpec
from .sources import SplitSource, download_oxford_pet, folder_splits, has_oxford_layout, oxford_splits
from .masks import shown
from .synthetic import ensure_synthetic

DATASETS = Registry("dataset")


def build_sources(data: DataSpec) -> dict[str, SplitSource]:
    """The files of each split, resized by `data.image_interpolation` / `data.mask_interpolation`;
    generates synthetic data or downloads Oxford pets when asked."""
    return {split: dataclasses.replace(source, image_interpolation=data.image_interpolation,
                                       mask_interpolation=data.mask_interpolation)
            for split, source in DATASETS.get(data.name)(data).items()}


def _root(data: DataSpec) -> Path:
    root = Path(data.root).expanduser()
    if root.is_file():
        raise DataError(f"{shown(root)}: data.root is a file, expected a folder (the {data.name} dataset's root)")
    return root


@DATASETS.register("oxford_pet")
def oxford_pet(data: DataSpec) -> dict[str, SplitSource]:
    """The Oxford-IIIT Pet dataset (trimaps), downloaded with `data.download=true`."""
    root = _root(data)
    if not has_oxford_layout(root):
        if not data.download:
            what = "has no Oxford-IIIT Pet layout (images/, annotations/)" if root.exists() else "not found"
            raise DataError(f"{root}: data root {what}; point data.root at the dataset "
                            "or set data.download=true")
        download_oxford_pet(root)
    return oxford_splits(root, data.val_every, data.mask)


@DATASETS.register("synthetic")
def synthetic(data: DataSpec) -> dict[str, SplitSource]:
    """Procedural shapes written in the Oxford layout (`data.synthetic`), generated on first use."""
    root = _root(data)
    ensure_synthetic(root, data.synthetic)
    return oxford_splits(root, data.val_every, data.mask, dataset="synthetic")


@DATASETS.register("folder")
def folder(data: DataSpec) -> dict[str, SplitSource]:
    """Users' own images + masks with matching stems (`data.folder`: folder names, mask suffix,
    how masks mark the foreground)."""
    folder_spec = data.folder
    return folder_splits(_root(data), folder_spec.val_fraction, folder_spec.test_fraction,
                         folder_spec.foreground_value, folder_spec)
