"""The study's data path: its affine (albumentations 2.0's `Affine`, per-axis zoom), its fixed
normalisation constants, its resizing (bilinear images, cv2-nearest masks), and caches that keep
one resizing apart from another. Cross-checked against albumentations itself."""
from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import stats

from segsweep.data import GeometricWarp, build_data, build_sources, load_sample
from segsweep.data.augment import affine_matrix, draw_per_axis, is_identity
from segsweep.data.cache import cache_key
from segsweep.data.caches import find_caches
from segsweep.data.sources import LOADER_VERSION, decode_image, read_mask, resize_mask
from segsweep.spec import STUDY_MEAN, STUDY_STD, AugmentSpec, ExperimentSpec, override_spec

STUDY_AFFINE = AugmentSpec(affine="per_axis", affine_p=1.0, hflip_p=0.0, translate=0.1, scale=0.2, rotate=30)


def study_albumentations_affine():
    """The study's transform, as its oxford_pet.py configures it (p=1 here: the draw is ours)."""
    import albumentations as A

    return A.Affine(translate_percent={"x": (-0.1, 0.1), "y": (-0.1, 0.1)}, scale=(0.8, 1.2), rotate=(-30, 30), p=1)


class Scripted(random.Random):
    """albumentations' Python RNG with the draws handed in: `uniform` returns the next value
    (or the bound of an empty range: the shear), `random` 0 (always apply)."""

    def __init__(self, values: list[float]):
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return 0.0

    def uniform(self, a: float, b: float) -> float:
        return a if a == b else self.values.pop(0)


def scripted_draws(draw, size: tuple[int, int]) -> list[float]:
    """Fractions that albumentations truncates to our whole-pixel shifts, then the zooms and angle
    in its order (translate x, y; scale x, y; rotate)."""
    h, w = size
    fraction = [(px + math.copysign(0.5, px)) / side for px, side in ((draw.tx_px, w), (draw.ty_px, h))]
    return [*fraction, draw.scale_x, draw.scale_y, draw.angle]


def pair(size: tuple[int, int] = (48, 56), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (5, 5), 1.5)
    mask = (rng.random(size) < 0.4).astype(np.uint8)
    mask[:, :6] = 255
    return image, mask


def synthetic_spec(tmp_path: Path, **overrides) -> ExperimentSpec:
    base = {"data.name": "synthetic", "data.root": str(tmp_path / "synthetic"), "data.image_size": 32,
            "data.cache_dir": str(tmp_path / "cache"), "data.val_every": 4, "train.batch_size": 4,
            "data.synthetic.num_trainval": 12, "data.synthetic.num_test": 4, "data.synthetic.size": 48}
    return override_spec(ExperimentSpec(), {**base, **overrides})


# --------------------------------------------------------------------------- the affine


def test_per_axis_draws_are_independent_and_uniform():
    """20,000 draws: x and y zooms independent and each uniform on [0.8, 1.2], the angle uniform
    on [-30, 30], shifts whole pixels within 10% of their own side, truncated towards 0."""
    rng, size = np.random.default_rng(0), (480, 640)
    draws = [draw_per_axis(rng, STUDY_AFFINE, size) for _ in range(20_000)]
    sx, sy, angle, tx, ty = (np.array([getattr(d, k) for d in draws])
                             for k in ("scale_x", "scale_y", "angle", "tx_px", "ty_px"))
    assert abs(np.corrcoef(sx, sy)[0, 1]) < 0.03
    for zoom in (sx, sy):
        assert 0.8 <= zoom.min() and zoom.max() < 1.2
        assert stats.kstest(zoom, stats.uniform(0.8, 0.4).cdf).pvalue > 0.01
    assert stats.kstest(angle, stats.uniform(-30, 60).cdf).pvalue > 0.01
    assert (stats.pearsonr(angle, sx)[0] ** 2) < 0.001
    for shift, side in ((tx, 640), (ty, 480)):
        assert np.abs(shift).max() < 0.1 * side and np.abs(shift).max() >= 0.1 * side - 2  # the whole range
        # int() truncates towards 0: 0 collects (-1, 1), twice any other value's share
        counts = np.bincount(shift - shift.min())
        zero, others = counts[-shift.min()], np.delete(counts, -shift.min())
        assert 1.6 < zero / others.mean() < 2.4
    assert abs(np.corrcoef(tx, ty)[0, 1]) < 0.03
    assert all(type(d.tx_px) is int and type(d.ty_px) is int for d in draws)


def test_affine_p_and_identity():
    warp = GeometricWarp(STUDY_AFFINE.model_copy(update={"affine_p": 0.5}))
    rng = np.random.default_rng(0)
    applied = [warp.matrix(rng, (32, 32))[0] is not None for _ in range(4000)]
    assert 0.47 < np.mean(applied) < 0.53
    # A range of nothing draws the identity, which albumentations does not warp at all.
    still = GeometricWarp(AugmentSpec(affine="per_axis", affine_p=1.0, hflip_p=0.0, scale=0, translate=0, rotate=0))
    image, mask = pair()
    assert all(a is b for a, b in zip(still(image, mask, np.random.default_rng(0)), (image, mask)))
    assert np.array_equal(affine_matrix((48, 56), 0.0, 1.0, 1.0, 0, 0), np.eye(3)[:2])


def test_identity_check_agrees_with_allclose():
    """The loader's cheap identity test decides as `np.allclose` does, at its tolerance's edge too."""
    rng = np.random.default_rng(3)
    eye = np.eye(3)[:2]
    cases = [eye.copy(), eye + np.nan, affine_matrix((48, 56), 360.0, 1.0, 1.0, 0, 0)]
    for spread in (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9):
        cases += [eye + rng.normal(0, spread, eye.shape) for _ in range(200)]
    cases += [eye + np.array([[0, 0, 1e-8 * k], [0, 0, 0]]) for k in (0.99, 1.01)]  # atol alone: 1e-8
    cases += [eye + np.array([[(1e-8 + 1e-5) * k, 0, 0], [0, 0, 0]]) for k in (0.99, 1.01)]  # atol + rtol |1|
    verdicts = [is_identity(m) for m in cases]
    assert verdicts == [bool(np.allclose(m, eye)) for m in cases]
    assert 0 < sum(verdicts) < len(cases)


def test_affine_matrix_known_values():
    """A 90 degree turn about the pixel centre of a 4 x 6 image (centre (2.5, 1.5)), zoomed 2x in x
    only, shifted 3 px right: (x, y) -> (2.5 + (y - 1.5) + 3, 1.5 - 2 (x - 2.5))."""
    matrix = affine_matrix((4, 6), 90.0, 2.0, 1.0, 3, 0)
    np.testing.assert_allclose(matrix, [[0, 1, 4], [-2, 0, 6.5]], atol=1e-12)


def test_per_axis_warp_equals_albumentations_affine():
    """Our draw fed to the study's `A.Affine`: the same matrix bit for bit, and the same pixels
    (images within round-off, masks exactly), through `GeometricWarp` as training calls it."""
    size = (48, 56)
    image, mask = pair(size)
    warp, matrices_equal = GeometricWarp(STUDY_AFFINE), 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        rng.random()  # GeometricWarp's first draw: whether the affine applies
        draw = draw_per_axis(rng, STUDY_AFFINE, size)
        ours = warp(image, mask, np.random.default_rng(seed))
        affine = study_albumentations_affine()
        affine.py_random = Scripted(scripted_draws(draw, size))
        theirs = affine(image=image, mask=mask)
        assert affine.params["scale"] == {"x": draw.scale_x, "y": draw.scale_y}
        assert affine.params["rotate"] == draw.angle
        ours_matrix = affine_matrix(size, draw.angle, draw.scale_x, draw.scale_y, draw.tx_px, draw.ty_px)
        matrices_equal += np.array_equal(affine.params["matrix"][:2], ours_matrix)
        assert np.abs(theirs["image"].astype(int) - ours[0]).max() <= 1
        assert np.array_equal(theirs["mask"], ours[1])
    assert matrices_equal == 60


def test_flip_composes_with_per_axis():
    """hflip_p after the per-axis affine: as albumentations' warp then a mirror image."""
    size = (48, 56)
    image, mask = pair(size, seed=1)
    spec = STUDY_AFFINE.model_copy(update={"hflip_p": 1.0})
    for seed in range(5):
        rng = np.random.default_rng(seed)
        rng.random()
        draw = draw_per_axis(rng, spec, size)
        flipped = GeometricWarp(spec)(image, mask, np.random.default_rng(seed))
        affine = study_albumentations_affine()
        affine.py_random = Scripted(scripted_draws(draw, size))
        theirs = affine(image=image, mask=mask)
        assert np.abs(flipped[0].astype(int) - theirs["image"][:, ::-1]).max() <= 2  # fixed-point rounding
        assert (flipped[1] != theirs["mask"][:, ::-1]).mean() < 0.01
        assert set(np.unique(flipped[1])) <= {0, 1, 255}


# Matrices the isotropic affine drew before per_axis existed (computed at commit 1113e5c): the same
# seed and size must give the same zoom, turn and sub-pixel shift, and the same flip.
ISOTROPIC_BEFORE = {
    0: ([[0.8594960954027373, 0.29253296932839395, -6.80920531408054],
         [-0.29253296932839395, 0.8594960954027373, 5.746572003092114]], False),
    1: ([[1.157347068451046, -0.23105308238960462, -2.6081887198938087],
         [0.23105308238960462, 1.157347068451046, -4.9088196938531565]], True),
    7: ([[1.1336030307661067, -0.2407484537904018, 4.2015062522631865],
         [0.2407484537904018, 1.1336030307661067, -10.461190244088787]], False),
}


def test_isotropic_draws_unchanged():
    warp = GeometricWarp(AugmentSpec(affine_p=1.0, hflip_p=0.5, scale=0.2, translate=0.1, rotate=30))
    assert warp.spec.affine == "isotropic"
    for seed, (matrix, flip) in ISOTROPIC_BEFORE.items():
        got, got_flip = warp.matrix(np.random.default_rng(seed), (40, 48))
        np.testing.assert_allclose(got, matrix, rtol=1e-13, atol=1e-13)
        assert got_flip == flip
    got, flip = GeometricWarp(AugmentSpec()).matrix(np.random.default_rng(3), (40, 48))  # the defaults
    np.testing.assert_allclose(got, [[0.9260500634842411, -0.19981549223421344, 8.526460472668905],
                                     [0.19981549223421344, 0.9260500634842411, -2.5963440169317753]], rtol=1e-13)
    assert flip


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("normalize, extra, mean, std", [
    ("study", {}, STUDY_MEAN, STUDY_STD),
    ("fixed", {"data.mean": [0.5, 0.25, 0.125], "data.std": [0.2, 0.4, 0.8]}, (0.5, 0.25, 0.125), (0.2, 0.4, 0.8)),
])
def test_fixed_constants_reach_the_datasets(tmp_path, normalize, extra, mean, std):
    spec = synthetic_spec(tmp_path, **{"data.normalize": normalize, "data.augment.affine_p": 0,
                                       "data.augment.hflip_p": 0, **extra})
    bundle = build_data(spec)
    for dataset in bundle.datasets.values():
        assert np.array_equal(dataset.mean, np.float32(mean)) and np.array_equal(dataset.std, np.float32(std))
    np.testing.assert_allclose(bundle.datasets["train"].mean.tolist(), mean, rtol=1e-7)  # what checkpoints record
    assert not list((tmp_path / "cache").glob("*.stats.json"))  # no dataset statistics computed
    val = bundle.datasets["val"]
    raw, _ = val.raw(0)
    pixels = val[0][0].numpy()  # (3, H, W)
    for y, x in ((0, 0), (5, 17), (31, 31)):
        want = (raw[y, x] / 255 - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(pixels[:, y, x], want, rtol=1e-5, atol=1e-5)
    if normalize == "study":  # the study's own step: albumentations' Normalize
        import albumentations as A

        theirs = A.Normalize(mean=STUDY_MEAN, std=STUDY_STD)(image=raw)["image"]
        np.testing.assert_allclose(pixels, theirs.transpose(2, 0, 1), atol=1e-5)


# --------------------------------------------------------------------------- resizing


def test_mask_nearest_and_nearest_exact_known_values():
    mask = np.arange(16, dtype=np.uint8).reshape(4, 4)
    # cv2's INTER_NEAREST takes source index floor(2 i); NEAREST_EXACT the pixel centre floor(2 i + 1)
    assert resize_mask(mask, 2, "nearest").tolist() == [[0, 2], [8, 10]]
    assert resize_mask(mask, 2, "nearest_exact").tolist() == [[5, 7], [13, 15]]
    odd = np.random.default_rng(0).integers(0, 3, (7, 5)).astype(np.uint8)
    for rule, flag in (("nearest", cv2.INTER_NEAREST), ("nearest_exact", cv2.INTER_NEAREST_EXACT)):
        assert np.array_equal(resize_mask(odd, 16, rule), cv2.resize(odd, (16, 16), interpolation=flag))
    with pytest.raises(ValueError, match="data.mask_interpolation: unknown interpolation 'cubic'; expected one of "
                                         "nearest_exact, nearest"):
        resize_mask(odd, 16, "cubic")


@pytest.mark.parametrize("cache", [True, False])
def test_study_resizing_through_build_data(tmp_path, cache):
    """`linear` + `nearest`: every split's pixels are cv2's INTER_LINEAR image and INTER_NEAREST
    mask of the decoded files (48 px shrunk to 32 px), cached or not."""
    spec = synthetic_spec(tmp_path, **{"data.image_interpolation": "linear", "data.mask_interpolation": "nearest",
                                       "data.mask": "ignore_boundary", "data.cache": cache})
    bundle = build_data(spec)
    default = build_data(override_spec(spec, {"data.image_interpolation": "area_linear",
                                              "data.mask_interpolation": "nearest_exact"}))
    for split in ("train", "test"):
        dataset, plain = bundle.datasets[split], default.datasets[split]
        assert (dataset.source.image_interpolation, dataset.source.mask_interpolation) == ("linear", "nearest")
        sample = dataset.samples[1]
        (image, mask), (plain_image, plain_mask) = dataset.raw(1), plain.raw(1)
        full_image, (full_mask, _) = decode_image(sample.image), read_mask(sample.mask, dataset.source)
        assert np.array_equal(image, cv2.resize(full_image, (32, 32), interpolation=cv2.INTER_LINEAR))
        assert np.array_equal(mask, cv2.resize(full_mask, (32, 32), interpolation=cv2.INTER_NEAREST))
        assert np.array_equal(plain_mask, cv2.resize(full_mask, (32, 32), interpolation=cv2.INTER_NEAREST_EXACT))
        assert not np.array_equal(image, plain_image) and not np.array_equal(mask, plain_mask)


def _key_before(source, size: int) -> str:
    """cache_key as it was before the resizing settings existed."""
    digest = hashlib.sha256()
    digest.update(json.dumps([LOADER_VERSION, source.dataset, source.split, size, source.mask_mode]).encode())
    for sample in source.samples:
        for path in (sample.image, sample.mask):
            stat = path.stat()
            digest.update(f"{sample.id}\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"{source.dataset}-{source.split}-{size}px-{source.mask_mode}-{digest.hexdigest()[:16]}"


def test_cache_keeps_resizings_apart(tmp_path, cli):
    spec = synthetic_spec(tmp_path)
    default = build_data(spec)
    study = build_data(override_spec(spec, {"data.image_interpolation": "linear"}))
    both = build_data(override_spec(spec, {"data.image_interpolation": "linear", "data.mask_interpolation": "nearest"}))
    keys = [bundle.datasets["train"].cache.key for bundle in (default, study, both)]
    source = default.datasets["train"].source
    assert keys[0] == _key_before(source, 32) == cache_key(build_sources(spec.data)["train"], 32)
    assert keys[1].startswith("synthetic-train-32px-pet_and_boundary-image_linear-")
    assert keys[2].startswith("synthetic-train-32px-pet_and_boundary-image_linear-mask_nearest-")
    assert len(set(keys)) == 3
    a, b = default.datasets["train"].raw(0)[0], study.datasets["train"].raw(0)[0]
    assert not np.array_equal(a, b)  # built anew, not read from the default cache
    assert np.array_equal(b, load_sample(study.datasets["train"].samples[0], study.datasets["train"].source, 32)[0])
    # Built once: a second run with the same resizing reads the cache it made.
    again = build_data(override_spec(spec, {"data.image_interpolation": "linear"}))
    assert again.datasets["train"].cache.key == keys[1]
    entries = {e.key: e for e in find_caches([tmp_path / "cache"])}
    assert set(keys) <= set(entries) and len(entries) == 9  # 3 splits x 3 resizings
    assert {(entries[k].dataset, entries[k].split, entries[k].size) for k in keys} == {("synthetic", "train", 32)}
    listing = cli("cache", "list", tmp_path / "cache")
    assert listing.code == 0, listing.err
    assert listing.out.strip().splitlines()[-1].startswith("total: 9 cache(s)")
    assert sum("synthetic train 32px" in line for line in listing.out.splitlines()) == 3
