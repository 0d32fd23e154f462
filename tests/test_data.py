"""Data: layouts and splits, mask modes, the cache, normalisation, seeded augmentation,
sharding, user-facing errors, the synthetic generator and the real pets subset."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segsweep.data import EpochSampler, build_data, build_sources, load_sample, sample_seed
from segsweep.data.cache import dataset_stats, ensure_cache, resolve_cache_dir
from segsweep.data.synthetic import ensure_synthetic
from segsweep.errors import DataError
from segsweep.spec import AugmentSpec, ExperimentSpec, SyntheticSpec, override_spec

REAL_SUBSET = Path(__file__).resolve().parents[2] / "shared/data/oxford-iiit-pet-mini"


# --------------------------------------------------------------------------- helpers


def trimap_pattern(h: int, w: int) -> np.ndarray:
    """Background 2, a pet square of 1 framed by a 1-px boundary of 3."""
    trimap = np.full((h, w), 2, np.uint8)
    trimap[h // 4:3 * h // 4, w // 4:3 * w // 4] = 3
    trimap[h // 4 + 1:3 * h // 4 - 1, w // 4 + 1:3 * w // 4 - 1] = 1
    return trimap


def write_image(path: Path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(path.suffix, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert ok
    data.tofile(path)


def make_oxford(root: Path, trainval: list[str], test: list[str], h: int = 20, w: int = 24,
                comment: bool = True) -> Path:
    """A tiny dataset in the official layout: random JPEGs, PNG trimaps, split files."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    for i, name in enumerate(trainval + test):
        write_image(root / "images" / f"{name}.jpg", h, w, i)
        cv2.imwrite(str(root / "annotations" / "trimaps" / f"{name}.png"), trimap_pattern(h, w))
    for split, names in (("trainval", trainval), ("test", test)):
        header = "#Image CLASS-ID SPECIES BREED ID\n\n" if comment else ""
        lines = "".join(f"{n} 1 1 1\n" for n in names)
        (root / "annotations" / f"{split}.txt").write_text(header + lines)
    return root


def oxford_spec(root: Path, tmp_path: Path, **overrides) -> ExperimentSpec:
    base = {"data.root": str(root), "data.image_size": 16, "data.cache_dir": str(tmp_path / "cache"),
            "data.val_every": 3, "model.base_channels": 8, "train.batch_size": 2}
    base.update(overrides)
    return override_spec(ExperimentSpec(), base)


TINY_SYNTHETIC = {"data.synthetic.num_trainval": 12, "data.synthetic.num_test": 4, "data.synthetic.size": 32}


def synthetic_spec(tmp_path: Path, **overrides) -> ExperimentSpec:
    base = {"data.name": "synthetic", "data.root": str(tmp_path / "synthetic"), "data.image_size": 32,
            "data.cache_dir": str(tmp_path / "cache"), "data.val_every": 4, "train.batch_size": 4,
            **TINY_SYNTHETIC}
    base.update(overrides)
    return override_spec(ExperimentSpec(), base)


# --------------------------------------------------------------------------- synthetic generator


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_is_deterministic_and_in_the_official_layout(tmp_path):
    spec = SyntheticSpec(num_trainval=12, num_test=4, size=32, seed=3)
    a, b = ensure_synthetic(tmp_path / "a", spec), ensure_synthetic(tmp_path / "b", spec)
    assert _tree(a) == _tree(b)
    other = _tree(ensure_synthetic(tmp_path / "c", spec.model_copy(update={"seed": 4})))
    assert other["images/Tabby_1.jpg"] != _tree(a)["images/Tabby_1.jpg"]

    trainval = (a / "annotations" / "trainval.txt").read_text().splitlines()
    test = (a / "annotations" / "test.txt").read_text().splitlines()
    assert (len(trainval), len(test)) == (12, 4)
    for line in trainval + test:
        name, class_id, species, breed_id = line.split()
        assert name.rsplit("_", 1)[1].isdigit() and int(class_id) in range(1, 7)
        assert int(species) in (1, 2) and int(breed_id) in (1, 2, 3)
        image = cv2.imread(str(a / "images" / f"{name}.jpg"))
        trimap = cv2.imread(str(a / "annotations" / "trimaps" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (32, 32, 3) and trimap.shape == (32, 32)
        assert set(np.unique(trimap)) <= {1, 2, 3} and (trimap == 1).any() and (trimap == 3).any()
    assert {line.split()[0] for line in trainval}.isdisjoint(line.split()[0] for line in test)
    assert json.loads((a / "synthetic.json").read_text())["seed"] == 3
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folder was renamed away


def test_synthetic_boundary_band_is_a_few_pixels_wide(tmp_path):
    root = ensure_synthetic(tmp_path / "s", SyntheticSpec(num_trainval=10, num_test=2, size=96))
    trimap = cv2.imread(str(next((root / "annotations" / "trimaps").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    pet = (trimap == 1).astype(np.uint8)
    # The band reaches ~3 px in from the background (4 at corners), and the interior never touches it.
    depth = cv2.distanceTransform((trimap != 2).astype(np.uint8), cv2.DIST_L2, 3)
    band = depth[trimap == 3]
    assert band.max() <= 4 and np.median(band) <= 2 and (depth[trimap == 1] > 2).all()
    assert not (cv2.dilate(pet, np.ones((3, 3), np.uint8)).astype(bool) & (trimap == 2)).any()


def test_synthetic_root_is_reused_and_other_params_are_refused(tmp_path):
    spec = SyntheticSpec(num_trainval=10, num_test=2, size=32)
    root = ensure_synthetic(tmp_path / "s", spec)
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    ensure_synthetic(root, spec)
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match=r"s: holds a synthetic dataset .*seed=0 \(wanted 1\).*pick another data.root"):
        ensure_synthetic(root, spec.model_copy(update={"seed": 1}))
    foreign = make_oxford(tmp_path / "real", ["a_1"], ["a_2"])
    with pytest.raises(DataError, match=r"real: exists but was not written by the synthetic generator"):
        ensure_synthetic(foreign, spec)


# --------------------------------------------------------------------------- splits and masks


def test_split_rule_follows_val_every_and_skips_comments(tmp_path):
    names = [f"cat_{i}" for i in range(7)]
    root = make_oxford(tmp_path / "pets", names, ["dog_1", "dog_2"])
    sources = build_sources(oxford_spec(root, tmp_path).data)
    assert sources["val"].ids == ["cat_0", "cat_3", "cat_6"]
    assert sources["train"].ids == ["cat_1", "cat_2", "cat_4", "cat_5"]
    assert sources["test"].ids == ["dog_1", "dog_2"]


@pytest.mark.parametrize("mode, pet, boundary, background", [
    ("pet", 1, 0, 0),
    ("pet_and_boundary", 1, 1, 0),
    ("boundary", 0, 1, 0),
    ("ignore_boundary", 1, 255, 0),
])
def test_mask_modes_map_trimap_values(tmp_path, mode, pet, boundary, background):
    root = make_oxford(tmp_path / "pets", ["a_1", "a_2", "a_3"], ["b_1"], h=20, w=24)
    spec = oxford_spec(root, tmp_path, **{"data.mask": mode, "data.image_size": 32, "data.cache": False})
    source = build_sources(spec.data)["test"]
    _, mask = load_sample(source.samples[0], source, 32)  # 20x24 -> 32x32: nearest keeps values
    trimap = cv2.resize(trimap_pattern(20, 24), (32, 32), interpolation=cv2.INTER_NEAREST_EXACT)
    assert {1, 2, 3} <= set(np.unique(trimap))
    assert (mask[trimap == 1] == pet).all()
    assert (mask[trimap == 3] == boundary).all()
    assert (mask[trimap == 2] == background).all()


def test_torchvision_download_layout_is_found(tmp_path):
    make_oxford(tmp_path / "root" / "oxford-iiit-pet", ["a_1", "a_2", "a_3"], ["b_1"])
    sources = build_sources(oxford_spec(tmp_path / "root", tmp_path, **{"data.download": True}).data)
    assert sources["test"].samples[0].image == tmp_path / "root" / "oxford-iiit-pet" / "images" / "b_1.jpg"


def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "OxfordIIITPet", offline)
    spec = oxford_spec(tmp_path / "pets", tmp_path, **{"data.download": True})
    with pytest.raises(DataError, match=r"pets: could not download Oxford-IIIT Pet .*name resolution.*network"):
        build_data(spec)


def test_folder_dataset_splits_by_hash_and_reads_foreground(tmp_path):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(20):
        write_image(root / "images" / f"img{i:02d}.png", 16, 16, i)
        mask = np.zeros((16, 16), np.uint8)
        mask[2:6, 2:6], mask[8:10, 8:10] = 255, 7
        cv2.imwrite(str(root / "masks" / f"img{i:02d}.png"), mask)
    spec = override_spec(ExperimentSpec(), {"data.name": "folder", "data.root": str(root), "data.image_size": 16,
                                            "data.folder.val_fraction": 0.2, "data.folder.test_fraction": 0.25})
    sources = build_sources(spec.data)
    sizes = {k: len(v.samples) for k, v in sources.items()}
    assert sizes == {"train": 11, "val": 4, "test": 5}
    assert sorted(sum((v.ids for v in sources.values()), [])) == [f"img{i:02d}" for i in range(20)]
    assert build_sources(spec.data)["val"].ids == sources["val"].ids  # stable
    _, mask = load_sample(sources["train"].samples[0], sources["train"], 16)
    assert mask[3, 3] == 1 and mask[9, 9] == 1 and mask[0, 0] == 0
    valued = build_sources(override_spec(spec, {"data.folder.foreground_value": 7}).data)["train"]
    _, mask = load_sample(valued.samples[0], valued, 16)
    assert mask[3, 3] == 0 and mask[9, 9] == 1


# --------------------------------------------------------------------------- cache and statistics


def test_cache_returns_exactly_the_uncached_pixels(tmp_path):
    spec = synthetic_spec(tmp_path, **{"data.mask": "ignore_boundary", "data.image_size": 16})
    cached, plain = build_data(spec), build_data(override_spec(spec, {"data.cache": False}))
    for split in ("train", "val", "test"):
        a, b = cached.datasets[split], plain.datasets[split]
        assert a.cache is not None and b.cache is None and len(a) == len(b)
        for i in range(len(a)):
            (ia, ma), (ib, mb) = a.raw(i), b.raw(i)
            assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
        ta, tb = a[(1, 77)], b[(1, 77)]
        assert torch.equal(ta[0], tb[0]) and torch.equal(ta[1], tb[1])
    cache_files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(n.startswith("synthetic-train-16px-ignore_boundary-") and n.endswith(".images.npy") for n in cache_files)
    assert not any(".tmp-" in n for n in cache_files)


def test_cache_is_rebuilt_when_a_source_file_changes(tmp_path):
    root = make_oxford(tmp_path / "pets", ["a_1", "a_2", "a_3"], ["b_1"])
    source = build_sources(oxford_spec(root, tmp_path).data)["test"]
    first = ensure_cache(source, 16, tmp_path / "cache")
    write_image(root / "images" / "b_1.jpg", 20, 24, seed=99)
    os.utime(root / "images" / "b_1.jpg", ns=(1, 1))
    second = ensure_cache(source, 16, tmp_path / "cache")
    assert first.key != second.key
    assert np.array_equal(second.open()[0][0], load_sample(source.samples[0], source, 16)[0])


def test_default_cache_dir_beside_data_or_user_cache_when_read_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    writable = tmp_path / "data"
    writable.mkdir()
    assert resolve_cache_dir(None, writable) == writable / ".segsweep_cache"
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        assert resolve_cache_dir(None, read_only) == tmp_path / "xdg" / "segsweep"
        assert not (read_only / ".segsweep_cache").exists()
    finally:
        read_only.chmod(0o755)


def test_dataset_normalisation_statistics_match_numpy(tmp_path):
    spec = synthetic_spec(tmp_path, **{"data.normalize": "dataset"})
    bundle = build_data(spec)
    source = bundle.datasets["train"].source
    pixels = np.stack([load_sample(s, source, 32)[0] for s in source.samples]).reshape(-1, 3) / 255.0
    mean, std = dataset_stats(source, 32, tmp_path / "cache", bundle.datasets["train"].cache)
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-9)
    np.testing.assert_allclose(bundle.datasets["val"].mean, pixels.mean(0), rtol=1e-6)
    # Normalised training pixels (no augmentation) have mean ~0 and std ~1 per channel.
    plain = build_data(override_spec(spec, {"data.augment.affine_p": 0, "data.augment.hflip_p": 0}))
    images = torch.stack([plain.datasets["train"][i][0] for i in range(len(plain.datasets["train"]))])
    assert images.mean((0, 2, 3)).abs().max() < 1e-4
    assert (images.std((0, 2, 3)) - 1).abs().max() < 1e-3
    assert list((tmp_path / "cache").glob("synthetic-train-*.stats.json"))


def test_imagenet_and_none_normalisation(tmp_path):
    spec = synthetic_spec(tmp_path, **{"data.normalize": "none"})
    dataset = build_data(spec).datasets["val"]
    image, _ = dataset.raw(0)
    assert torch.allclose(dataset[0][0], torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float(), atol=1e-6)
    dataset = build_data(override_spec(spec, {"data.normalize": "imagenet"})).datasets["val"]
    expected = (image.transpose(2, 0, 1) / 255.0 - np.array([0.485, 0.456, 0.406])[:, None, None]) \
        / np.array([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(dataset[0][0], torch.from_numpy(expected).float(), atol=1e-5)


# --------------------------------------------------------------------------- augmentation and sampling


def test_augmentation_is_a_function_of_the_sample_seed(tmp_path):
    spec = synthetic_spec(tmp_path, **{"data.mask": "ignore_boundary", "data.augment.affine_p": 1.0,
                                       "data.augment.elastic_p": 0.5, "data.augment.color_jitter_p": 0.5})
    train = build_data(spec).datasets["train"]
    again = build_data(spec).datasets["train"]  # a fresh pipeline, as after a restart
    first = train[(2, 1234)]
    assert torch.equal(first[0], again[(2, 1234)][0]) and torch.equal(first[1], again[(2, 1234)][1])
    assert torch.equal(first[0], train[(2, 1234)][0])
    outputs = [train[(2, s)][0] for s in range(6)]
    assert all(not torch.equal(outputs[0], o) for o in outputs[1:])
    for seed in range(10):
        _, mask, index = train[(3, seed)]
        assert index == 3 and set(mask.unique().tolist()) <= {0, 1, 255}
        assert (mask == 255).any()  # the ignored band survives the warp with nearest interpolation
    # Evaluation never augments: the seed is ignored.
    val = build_data(spec).datasets["val"]
    assert torch.equal(val[(0, 1)][0], val[(0, 2)][0])


def _pair(seed: int = 0, size: int = 48):
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (7, 7), 2)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2 + 5, size // 2 - 3), size // 4, 1, -1)
    mask[:, : size // 6] = 255
    return image, mask


def test_single_warp_equals_the_affine_then_the_flip():
    """The flip folded into the affine matrix resamples like warping then flipping."""
    from segsweep.data import GeometricWarp

    image, mask = _pair()
    warp = GeometricWarp(AugmentSpec(affine_p=1.0, hflip_p=1.0, scale=0.2, translate=0.1, rotate=30))
    for seed in range(5):
        matrix, flip = warp.matrix(np.random.default_rng(seed), mask.shape)
        assert flip and matrix is not None
        fused = warp(image, mask, np.random.default_rng(seed))
        size, border = (48, 48), dict(borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        two_step = (cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, **border)[:, ::-1],
                    cv2.warpAffine(mask, matrix, size, flags=cv2.INTER_NEAREST, **border)[:, ::-1])
        assert np.abs(fused[0].astype(int) - two_step[0]).max() <= 2  # fixed-point rounding
        assert (fused[1] != two_step[1]).mean() < 0.01 and set(np.unique(fused[1])) <= {0, 1, 255}


def test_geometry_off_or_flip_only_is_exact():
    from segsweep.data import GeometricWarp

    image, mask = _pair()
    still = GeometricWarp(AugmentSpec(affine_p=0.0, hflip_p=0.0))
    assert all(a is b for a, b in zip(still(image, mask, np.random.default_rng(0)), (image, mask)))
    flipped = GeometricWarp(AugmentSpec(affine_p=0.0, hflip_p=1.0))(image, mask, np.random.default_rng(0))
    assert np.array_equal(flipped[0], image[:, ::-1]) and np.array_equal(flipped[1], mask[:, ::-1])
    # An affine that draws the identity (no scale, shift or rotation range) changes nothing either.
    ident = GeometricWarp(AugmentSpec(affine_p=1.0, hflip_p=0.0, scale=0, translate=0, rotate=0))
    out = ident(image, mask, np.random.default_rng(0))
    assert np.array_equal(out[0], image) and np.array_equal(out[1], mask)


def test_affine_draws_cover_the_configured_ranges():
    """Scale, shift and rotation are uniform over the spec's ranges, and p is respected."""
    from segsweep.data import GeometricWarp

    warp = GeometricWarp(AugmentSpec(affine_p=0.5, hflip_p=0.25, scale=0.2, translate=0.1, rotate=20))
    rng, scales, angles, shifts, flips, applied = np.random.default_rng(0), [], [], [], 0, 0
    for _ in range(4000):
        matrix, flip = warp.matrix(rng, (100, 100))
        flips += flip
        if matrix is not None:
            applied += 1
            a, b = matrix[0, 0], matrix[1, 0]
            scales.append(math.hypot(a, b))
            angles.append(math.degrees(math.atan2(-b, a)))
            centre = matrix[:, :2] @ (49.5, 49.5) + matrix[:, 2]
            shifts.append(centre - 49.5)
    assert abs(applied / 4000 - 0.5) < 0.03 and abs(flips / 4000 - 0.25) < 0.03
    assert 0.8 <= min(scales) < 0.82 and 1.18 < max(scales) <= 1.2
    assert -20 <= min(angles) < -19 and 19 < max(angles) <= 20
    shifts = np.array(shifts)
    assert np.all(np.abs(shifts) <= 10 + 1e-9) and np.all(np.abs(shifts).max(axis=0) > 9.8)


def test_epoch_batches_do_not_depend_on_workers_or_restarts(tmp_path):
    spec = synthetic_spec(tmp_path, **{"data.num_workers": 0})
    batches = {}
    for workers in (0, 1):
        bundle = build_data(override_spec(spec, {"data.num_workers": workers}))
        bundle.train_sampler.set_epoch(2)
        batches[workers] = list(bundle.train)
    assert len(batches[0]) == 3  # 9 training images, batch 4, last batch kept
    for (ia, ma, xa), (ib, mb, xb) in zip(batches[0], batches[1]):
        assert torch.equal(ia, ib) and torch.equal(ma, mb) and torch.equal(xa, xb)
    bundle = build_data(spec)
    bundle.train_sampler.set_epoch(3)
    assert not torch.equal(next(iter(bundle.train))[0], batches[0][0][0])


def test_epoch_sampler_order_and_seeds():
    a, b = EpochSampler(10, seed=5, shuffle=True), EpochSampler(10, seed=5, shuffle=True)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert sorted(i for i, _ in a) == list(range(10))
    assert all(s == sample_seed(5, 1, i) for i, s in a)
    b.set_epoch(2)
    assert [i for i, _ in a] != [i for i, _ in b]
    assert [i for i, _ in EpochSampler(5, 0, shuffle=False)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n, world", [(10, 3), (7, 4), (2, 3), (30, 1)])
def test_eval_shards_cover_every_index_exactly_once(n, world):
    shards = [EpochSampler(n, 0, shuffle=False, rank=r, world_size=world, pad=False) for r in range(world)]
    seen = [i for s in shards for i, _ in s]
    assert seen == list(range(n))  # contiguous, in order, no padding duplicates
    assert [len(s) for s in shards] == [len(list(s)) for s in shards]


def test_train_shards_are_padded_to_equal_length_and_cover_everything():
    shards = [EpochSampler(10, 0, shuffle=True, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(4)
    seen = [i for s in shards for i, _ in s]
    assert [len(list(s)) for s in shards] == [4, 4, 4] == [len(s) for s in shards]
    assert set(seen) == set(range(10)) and len(seen) == 12


def test_build_data_loaders_and_bundle(tmp_path):
    spec = synthetic_spec(tmp_path, **{"data.limit_train": 5, "train.eval_batch_size": 3})
    bundle = build_data(spec)
    train = bundle.datasets["train"]
    assert len(train) == 5 and train.ids == train.source.ids[:5] and len(train.source.ids) == 9
    images, masks, index = next(iter(bundle.train))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.uint8 and index.dtype == torch.int64
    assert [len(b[0]) for b in bundle.val] == [3]  # 3 val images
    assert sum(len(b[0]) for b in bundle.test) == 4
    assert bundle.num_workers == 0 and bundle.datasets["test"].augment_spec is None
    image, mask = bundle.datasets["val"].raw(0)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and mask.shape == (32, 32)
    default_eval = build_data(override_spec(spec, {"train.eval_batch_size": None})).val.batch_size
    assert default_eval == 8


def test_worker_processes_do_not_receive_the_arrays(tmp_path):
    import pickle

    dataset = build_data(synthetic_spec(tmp_path)).datasets["train"]
    dataset[0]  # opens the memory map in this process
    assert dataset._arrays is not None
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._arrays is None and len(pickle.dumps(dataset)) < 20_000
    assert torch.equal(clone[(0, 5)][0], dataset[(0, 5)][0])


# --------------------------------------------------------------------------- errors


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: data root not found"):
        build_data(oxford_spec(tmp_path / "nowhere", tmp_path))


def test_missing_split_file_is_named(tmp_path):
    root = make_oxford(tmp_path / "pets", ["a_1", "a_2"], ["b_1"])
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(DataError, match=r"annotations/test.txt: split file not found"):
        build_data(oxford_spec(root, tmp_path))


def test_image_without_trimap_is_named(tmp_path):
    root = make_oxford(tmp_path / "pets", ["a_1", "a_2", "a_3"], ["b_1"])
    (root / "annotations" / "trimaps" / "a_2.png").unlink()
    with pytest.raises(DataError, match=r"images/a_2.jpg: image has no trimap \(expected .*trimaps/a_2.png\)"):
        build_data(oxford_spec(root, tmp_path))


def test_listed_image_that_is_missing_is_named(tmp_path):
    root = make_oxford(tmp_path / "pets", ["a_1", "a_2", "a_3"], ["b_1"])
    (root / "images" / "b_1.jpg").unlink()
    with pytest.raises(DataError, match=r"images/b_1.jpg: image listed in test.txt not found"):
        build_data(oxford_spec(root, tmp_path))


@pytest.mark.parametrize("cache", [True, False])
def test_corrupt_image_is_named(tmp_path, cache):
    root = make_oxford(tmp_path / "pets", ["a_1", "a_2", "a_3"], ["b_1"])
    (root / "images" / "a_3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    spec = oxford_spec(root, tmp_path, **{"data.cache": cache})
    # Caught when the loaders are built (with the cache while building it, without by a header
    # scan), not mid-training.
    with pytest.raises(DataError, match=r"images/a_3.jpg: unreadable or corrupt image file"):
        build_data(spec)
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_size_mismatch_is_named(tmp_path):
    root = make_oxford(tmp_path / "pets", ["a_1", "a_2", "a_3"], ["b_1"])
    cv2.imwrite(str(root / "annotations" / "trimaps" / "b_1.png"), trimap_pattern(10, 10))
    for cache in (True, False):
        with pytest.raises(DataError, match=r"images/b_1.jpg: image is 24x20 but its mask .*b_1.png is 10x10"):
            build_data(oxford_spec(root, tmp_path, **{"data.cache": cache}))


def test_empty_split_is_named(tmp_path):
    root = make_oxford(tmp_path / "pets", ["a_1"], ["b_1"])  # one trainval line: all validation
    with pytest.raises(DataError, match=r"trainval.txt: the train split is empty \(1 image lines, data.val_every=3\)"):
        build_data(oxford_spec(root, tmp_path))
    root = make_oxford(tmp_path / "pets2", ["a_1", "a_2", "a_3"], ["b_1"])
    (root / "annotations" / "test.txt").write_text("# only a comment\n")
    with pytest.raises(DataError, match=r"pets2/annotations/test.txt: the test split is empty"):
        build_data(oxford_spec(root, tmp_path))


def test_folder_with_mismatched_stems_is_named(tmp_path):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b", "c"):
        write_image(root / "images" / f"{name}.png", 8, 8, 0)
    for name in ("a", "b", "d"):
        cv2.imwrite(str(root / "masks" / f"{name}.png"), np.zeros((8, 8), np.uint8))
    spec = override_spec(ExperimentSpec(), {"data.name": "folder", "data.root": str(root)})
    with pytest.raises(DataError, match=r"mine: images/ and masks/ stems do not match: .*images/c.png.*masks/d.png"):
        build_data(spec)


def test_error_messages_are_one_line(tmp_path):
    root = make_oxford(tmp_path / "pets", ["a_1", "a_2", "a_3"], ["b_1"])
    (root / "images" / "a_1.jpg").write_bytes(b"")
    with pytest.raises(DataError) as info:
        build_data(oxford_spec(root, tmp_path))
    assert "\n" not in str(info.value) and "a_1.jpg" in str(info.value)


# --------------------------------------------------------------------------- the real subset


@pytest.mark.skipif(not REAL_SUBSET.is_dir(), reason=f"real pets subset not found at {REAL_SUBSET}")
def test_real_subset_loads_unchanged(tmp_path):
    spec = override_spec(ExperimentSpec(), {"data.root": str(REAL_SUBSET), "data.image_size": 32,
                                            "data.cache": False, "model.base_channels": 8})
    bundle = build_data(spec)
    assert {k: len(v) for k, v in bundle.datasets.items()} == {"train": 270, "val": 30, "test": 298}
    assert bundle.datasets["val"].ids[0] == "Abyssinian_100"
    for split in ("train", "val", "test"):
        image, mask, _ = bundle.datasets[split][0]
        assert image.shape == (3, 32, 32) and set(mask.unique().tolist()) <= {0, 1}
        assert mask.float().mean() > 0.02  # every real image has pet pixels
    assert not (REAL_SUBSET / ".segsweep_cache").exists()  # never written into the shared data
