"""Training-time augmentation, every random draw taken from one per-sample seed.

Geometry (random affine and horizontal flip) is one `cv2.warpAffine` per array: the flip is
folded into the affine matrix, and a flip alone is `cv2.flip`. albumentations' `Compose`
spends ~0.2 ms of Python per 128 px sample around a 0.05 ms warp, which made augmentation most
of the cached loader's cost (BENCHMARKS.md). Elastic deformation and colour jitter, which have
no such shortcut, stay with albumentations and run after the geometry.
"""
from __future__ import annotations

import math
import random
from typing import Any

import cv2
import numpy as np

from ..spec import AugmentSpec


class GeometricWarp:
    """Random affine (scale, rotation, translation, as albumentations' `Affine` with
    `keep_ratio=True` draws them) with probability `affine_p`, then a horizontal flip with
    probability `hflip_p`, applied as a single warp.

    Images resample bilinearly, masks with nearest neighbour (values stay in {0, 1, 255}); what
    the warp uncovers is 0 in both.
    """

    def __init__(self, spec: AugmentSpec):
        self.spec = spec

    def matrix(self, rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray | None, bool]:
        """(the 2x3 forward affine matrix or None, flip) for an image of `size` (height, width)."""
        s, (h, w) = self.spec, size
        matrix = None
        if s.affine_p > 0 and rng.random() < s.affine_p:
            scale = rng.uniform(1 - s.scale, 1 + s.scale)
            tx, ty = rng.uniform(-s.translate, s.translate, size=2) * (w, h)
            angle = rng.uniform(-s.rotate, s.rotate)
            matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
            matrix[:, 2] += (tx, ty)
        flip = bool(s.hflip_p > 0 and rng.random() < s.hflip_p)
        return matrix, flip

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        h, w = mask.shape[:2]
        matrix, flip = self.matrix(rng, (h, w))
        if matrix is None:
            if flip:  # cv2.flip: ~10x faster than copying a negative-stride numpy view
                return cv2.flip(image, 1), cv2.flip(mask, 1)
            return image, mask
        if flip:  # x -> (w - 1) - x after the affine
            matrix[0] = -matrix[0]
            matrix[0, 2] += w - 1.0
        warp = dict(dsize=(w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return (cv2.warpAffine(image, matrix, flags=cv2.INTER_LINEAR, **warp),
                cv2.warpAffine(mask, matrix, flags=cv2.INTER_NEAREST, **warp))


class Augmentation:
    """The training augmentation: `GeometricWarp`, then albumentations' elastic and colour steps.

    Call with `(image uint8 (H, W, 3), mask uint8 (H, W), seed)`; the result is a function of
    the seed alone (one generator pair per sample, shared by every step in order).
    """

    def __init__(self, geometry: GeometricWarp | None, rest: Any | None):
        self.geometry, self.rest = geometry, rest

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        if self.geometry is not None:
            image, mask = self.geometry(image, mask, rng)
        if self.rest is not None:
            # albumentations 2 gives every transform its own RNG pair; `Compose.set_random_seed`
            # would give each the *same* stream. Handing it ours keeps the steps independent.
            self.rest.set_random_state(rng, random.Random(seed))
            out = self.rest(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return image, mask


def build_augmentation(spec: AugmentSpec, size: int) -> Augmentation | None:
    """The training augmentation for `size` px samples (None when every probability is 0)."""
    geometry = GeometricWarp(spec) if spec.affine_p > 0 or spec.hflip_p > 0 else None
    rest: list[Any] = []
    if spec.elastic_p > 0 or spec.color_jitter_p > 0:
        import albumentations as A  # its update check is off: segsweep/__init__.py sets the flag

        if spec.elastic_p > 0:
            # Smooth displacements of ~2% of the side (the U-Net paper: 10 px std on 572 px tiles).
            # albumentations scales the noise by its maximum, so the displacement is not linear in
            # alpha; this alpha gives an rms of 1.7-2.1% of the side from 64 to 1024 px (measured).
            alpha = size * max(0.5, 0.95 * math.log2(size / 32))
            rest.append(A.ElasticTransform(
                alpha=alpha, sigma=0.08 * size, noise_distribution="gaussian", p=spec.elastic_p,
                interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0))
        if spec.color_jitter_p > 0:
            j = spec.color_jitter
            rest.append(A.ColorJitter(brightness=(1 - j, 1 + j), contrast=(1 - j, 1 + j),
                                      saturation=(1 - j, 1 + j), hue=(-j / 4, j / 4), p=spec.color_jitter_p))
        rest = [A.Compose(rest, seed=0)]
    if geometry is None and not rest:
        return None
    return Augmentation(geometry, rest[0] if rest else None)
