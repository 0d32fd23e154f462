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
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..spec import AugmentSpec


@dataclass(frozen=True)
class AffineDraw:
    """One draw of the `per_axis` affine: albumentations' `Affine` parameters (no shear)."""

    angle: float  # degrees, counter-clockwise on screen
    scale_x: float
    scale_y: float
    tx_px: int  # whole pixels, as albumentations truncates `fraction * side`
    ty_px: int


def draw_per_axis(rng: np.random.Generator, spec: AugmentSpec, size: tuple[int, int]) -> AffineDraw:
    """The `per_axis` parameters for an image of `size` (height, width): as albumentations 2.0's
    `Affine(keep_ratio=False)` draws them, x and y zooms independently uniform on
    [1 - scale, 1 + scale], the angle on [-rotate, rotate], each shift uniform on
    [-translate, translate] x its side, truncated towards 0 to whole pixels."""
    h, w = size
    scale_x, scale_y = rng.uniform(1 - spec.scale, 1 + spec.scale, size=2)
    fx, fy = rng.uniform(-spec.translate, spec.translate, size=2)
    angle = rng.uniform(-spec.rotate, spec.rotate)
    return AffineDraw(float(angle), float(scale_x), float(scale_y), int(fx * w), int(fy * h))


def affine_matrix(size_hw: tuple[int, int], angle: float, scale_x: float, scale_y: float,
                  tx_px: float, ty_px: float) -> np.ndarray:
    """The 2x3 forward matrix (source -> destination pixel) of albumentations 2.0's `Affine`
    without shear: scale, then rotate by `angle` degrees, about the pixel centre
    (w / 2 - 0.5, h / 2 - 0.5), then shift by (tx_px, ty_px).

    The products are taken in albumentations' order (centre @ shift @ rotate @ scale @ to-origin,
    the angle reduced mod 360 first) so the warp matches its output pixel for pixel, not only up
    to round-off.
    """
    h, w = size_hw
    cx, cy = w / 2 - 0.5, h / 2 - 0.5
    theta = np.deg2rad(angle % 360)
    cos, sin = np.cos(theta), np.sin(theta)
    to_centre = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    shift = np.array([[1, 0, tx_px], [0, 1, ty_px], [0, 0, 1]])
    rotate = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]])
    scale = np.array([[scale_x, 0, 0], [0, scale_y, 0], [0, 0, 1]])
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    return (to_centre @ shift @ rotate @ scale @ to_origin)[:2]


_IDENTITY = np.eye(3)[:2]


def is_identity(matrix: np.ndarray) -> bool:
    """`np.allclose(matrix, identity)` (|a - b| <= 1e-8 + 1e-5 |b|, False on NaN) on the six
    entries in plain Python: numpy's version costs ~60 us a call in its error-state machinery,
    a tenth of the cached loader's time per sample (BENCHMARKS.md)."""
    return all(abs(a - b) <= 1e-8 + 1e-5 * abs(b) for a, b in zip(matrix.flat, _IDENTITY.flat))


class GeometricWarp:
    """Random affine with probability `affine_p`, then a horizontal flip with probability
    `hflip_p`, applied as a single warp.

    The affine (`augment.affine`): `isotropic` draws one zoom for both axes and a sub-pixel shift
    (as albumentations' `Affine` with `keep_ratio=True`, about ((w - 1) / 2, (h - 1) / 2));
    `per_axis` is albumentations 2.0's `Affine` with its defaults (`keep_ratio=False`, the
    study's): `draw_per_axis`, `affine_matrix`, and no warp when the matrix is the identity.

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
            if s.affine == "per_axis":
                draw = draw_per_axis(rng, s, size)
                matrix = affine_matrix(size, draw.angle, draw.scale_x, draw.scale_y, draw.tx_px, draw.ty_px)
                if is_identity(matrix):  # albumentations returns the input unwarped
                    matrix = None
            else:
                scale = rng.uniform(1 - s.scale, 1 + s.scale)
                tx, ty = rng.uniform(-s.translate, s.translate, size=2) * (w, h)
                angle = rng.uniform(-s.rotate, s.rotate)
                matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
                matrix[:, 2] += (tx, ty)
        flip = bool(s.hflip_p > 0 and rng.random() < s.hflip_p)
        return matrix, flip

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.warp(image, mask, *self.matrix(rng, mask.shape[:2]))

    @staticmethod
    def warp(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray | None,
             flip: bool) -> tuple[np.ndarray, np.ndarray]:
        """Apply `matrix` (2x3 forward, or None) then the flip, as one resampling."""
        h, w = mask.shape[:2]
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
