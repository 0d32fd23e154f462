"""Users' data that loads but would mean nothing, or would end in a traceback: each case exits 2
(130 for Ctrl-C) with one line naming the file or key, and leaves no run folder and no cache
file a later run would trust."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_bad_inputs import QUICK, _data_case

SIZE = 24  # side of the written images and masks


def disc(i: int, size: int = SIZE) -> np.ndarray:
    """A bool disc that moves with i: every mask has foreground and background."""
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2 - i % 3) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2


def mask_image(i: int, kind: str) -> Image.Image:
    fg = disc(i)
    if kind == "L":
        return Image.fromarray(fg.astype(np.uint8) * 255, "L")
    if kind == "zeros":
        return Image.fromarray(np.zeros((SIZE, SIZE), np.uint8), "L")
    if kind in ("RGB", "RGBA"):
        pixels = np.zeros((SIZE, SIZE, len(kind)), np.uint8)
        pixels[fg, 1] = 255  # green foreground on black
        if kind == "RGBA":
            pixels[..., 3] = 255
        return Image.fromarray(pixels, kind)
    if kind == "P":
        palette = Image.fromarray(fg.astype(np.uint8), "L").convert("P")
        palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)  # index 1 shown red: RGB would be (200, 30, 30)
        return palette
    if kind == "I;16":
        return Image.fromarray(fg.astype(np.uint16) * 1000)
    raise ValueError(kind)


def write_folder(root: Path, n: int = 10, *, images: str = "images", masks: str = "masks", suffix: str = "",
                 kind: str = "L", mask_ext: str = ".png") -> Path:
    """n image/mask pairs: noise images with a bright disc, masks of the given kind."""
    rng = np.random.default_rng(0)
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / masks).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 100, (SIZE, SIZE, 3), dtype=np.uint8)
        pixels[disc(i)] = (220, 200, 90)
        Image.fromarray(pixels, "RGB").save(root / images / f"{i}.png")
        mask_image(i, kind).save(root / masks / f"{i}{suffix}{mask_ext}")
    return root


def folder_run(cli, tmp_path: Path, root: Path, *extra: str):
    return cli("run.py", QUICK, "data.name=folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
               "data.image_size=32", "model.base_channels=8", "train.epochs=1", "train.threads=1",
               "tracking.wandb.mode=disabled", *extra, "--results", tmp_path / "results")


def refused(result, tmp_path: Path, *parts: str, code: int = 2) -> str:
    """The one error line, after checking the exit code, that nothing of a run was written and
    that no partial cache file is left."""
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    results = tmp_path / "results"
    assert not results.exists() or not any(results.rglob("config.yaml")), list(results.rglob("*"))
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if ".tmp-" in p.name]
    return lines[0]


# --------------------------------------------------------------------------- mask contents

MASK_CASES = [
    # (case, mask kind, extra overrides, parts of the one line)
    ("rgb-mask", "RGB", [], ["masks/", ".png", "mode RGB, 3 channels", "data.folder.mask_channel",
                             "data.folder.foreground_color"]),
    ("rgba-mask", "RGBA", [], ["mode RGBA, 4 channels", "data.folder.mask_channel (0..3)"]),
    ("mask-channel-out-of-range", "RGB", ["data.folder.mask_channel=3"], ["data.folder.mask_channel=3", "3 channels"]),
    ("mask-channel-on-grey", "L", ["data.folder.mask_channel=0"], ["single-channel (mode L)", "mask_channel"]),
    ("colour-on-grey", "L", ["data.folder.foreground_color=[0,255,0]"], ["mode L", "data.folder.foreground_color"]),
    ("absent-foreground-value", "L", ["data.folder.foreground_value=7"],
     ["data.folder.foreground_value=7 occurs in no mask of the folder train split", "values found: 0, 255"]),
    ("palette-index-absent", "P", ["data.folder.foreground_value=200"],
     ["foreground_value=200 occurs in no mask", "values found: 0, 1"]),
    ("no-foreground", "zeros", [], ["no mask of the folder train split (7 masks) has a value above 0", "values found: 0"]),
    ("absent-colour", "RGB", ["data.folder.foreground_color=[255,0,0]"],
     ["data.folder.foreground_color=[255, 0, 0] occurs in no mask", "colours found: [0, 0, 0], [0, 255, 0]"]),
    ("absent-16-bit-value", "I;16", ["data.folder.foreground_value=999"], ["values found: 0, 1000"]),
]


@pytest.mark.parametrize("case, kind, extra, parts", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_masks_that_would_mean_nothing_are_refused(cli, tmp_path: Path, case, kind, extra, parts) -> None:
    root = write_folder(tmp_path / "mine", kind=kind)
    refused(folder_run(cli, tmp_path, root, *extra), tmp_path, *parts)


@pytest.mark.parametrize("cache", ["true", "false"])
def test_no_foreground_is_refused_with_or_without_the_cache(cli, tmp_path: Path, cache) -> None:
    root = write_folder(tmp_path / "mine", kind="zeros")
    refused(folder_run(cli, tmp_path, root, f"data.cache={cache}"), tmp_path, "no mask of the folder train split (7 masks)")


def test_trimap_mode_that_marks_nothing_is_refused(cli, tmp_path: Path, oxford_root: Path) -> None:
    # The tiny Oxford set's trimaps hold 1, 2, 3; rewrite them without a boundary (3).
    for path in (oxford_root / "annotations" / "trimaps").iterdir():
        trimap = np.asarray(Image.open(path)).copy()
        trimap[trimap == 3] = 2
        Image.fromarray(trimap).save(path)
    err = _data_case(cli, tmp_path, oxford_root, "data.mask=boundary")
    assert "data.mask=boundary marks no pixel" in err and "values found: 1, 2" in err


# --------------------------------------------------------------------------- spec keys

SPEC_CASES = [
    ("trimap-mask-on-folder", ["data.name=folder", "data.mask=pet"], ["data.mask", "trimap setting", "foreground_value"]),
    ("download-on-folder", ["data.name=folder", "data.download=true"], ["data.download", "only data.name: oxford_pet"]),
    ("download-on-synthetic", ["data.download=true"], ["data.download", "synthetic"]),
    ("colour-and-value", ["data.name=folder", "data.folder.foreground_color=[1,2,3]", "data.folder.foreground_value=1"],
     ["data.folder.foreground_color", "not both"]),
    ("colour-out-of-range", ["data.name=folder", "data.folder.foreground_color=[1,2,300]"], ["0..255"]),
    ("subfolder-outside-root", ["data.name=folder", "data.folder.masks=../labels"], ["data.folder.masks", "inside data.root"]),
    ("suffix-with-separator", ["data.name=folder", "data.folder.mask_suffix=a/b"], ["data.folder.mask_suffix", "separator"]),
]


@pytest.mark.parametrize("case, overrides, parts", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_data_settings_that_would_be_ignored_are_refused(cli, tmp_path: Path, case, overrides, parts) -> None:
    result = cli("run.py", QUICK, *overrides, "--results", tmp_path / "results")
    line = refused(result, tmp_path, *parts)
    assert "override" in line  # names where the value came from
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- layout


def test_root_is_a_file_folder(cli, tmp_path: Path) -> None:
    root = tmp_path / "data.zip"
    root.write_bytes(b"PK")
    refused(folder_run(cli, tmp_path, root), tmp_path, "data.zip", "is a file, expected a folder")


def test_root_is_a_file_oxford(cli, tmp_path: Path) -> None:
    root = tmp_path / "pets.tar"
    root.write_bytes(b"x")
    err = _data_case(cli, tmp_path, root)
    assert "pets.tar" in err and "is a file, expected a folder" in err


def test_configured_subfolder_missing(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "isbi", images="train/image", masks="train/label")
    line = refused(folder_run(cli, tmp_path, root, "data.folder.images=train/images", "data.folder.masks=train/label"),
                   tmp_path, "train/images", "data.folder.images='train/images'")
    assert "folders in" in line


def test_default_subfolders_missing_names_the_keys(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "isbi", images="train/image", masks="train/label")
    refused(folder_run(cli, tmp_path, root), tmp_path, "isbi/images", "data.folder.images='images'", "train/")


def test_mask_suffix_mismatch(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine", suffix="_mask")
    refused(folder_run(cli, tmp_path, root), tmp_path, "stems do not match", "images/0.png",
            "expected masks/0.<ext> with data.folder.mask_suffix=''")


def test_wrong_mask_suffix(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine", suffix="_mask")
    refused(folder_run(cli, tmp_path, root, "data.folder.mask_suffix=_seg"), tmp_path,
            "expected masks/0_seg.<ext> with data.folder.mask_suffix='_seg'")


def test_same_folder_without_suffix(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine", images="all", masks="all", suffix="_mask")
    refused(folder_run(cli, tmp_path, root, "data.folder.images=all", "data.folder.masks=all"), tmp_path,
            "name the same folder", "data.folder.mask_suffix")


# --------------------------------------------------------------------------- files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("cache", ["false", "true"])
def test_truncated_image_png(cli, tmp_path: Path, cache) -> None:
    root = write_folder(tmp_path / "mine")
    for i in range(10):  # whichever split it lands in
        _truncate(root / "images" / f"{i}.png")
    refused(folder_run(cli, tmp_path, root, f"data.cache={cache}"), tmp_path, "images/", ".png",
            "unreadable or corrupt image file")
    assert not (tmp_path / "results").exists()  # no run folder left behind


def test_truncated_mask_png(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine")
    for i in range(10):
        _truncate(root / "masks" / f"{i}.png")
    refused(folder_run(cli, tmp_path, root, "data.cache=false"), tmp_path, "masks/", "unreadable or corrupt mask file")


def test_file_name_not_utf8(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine")
    for sub in ("images", "masks"):
        source = root / sub / "0.png"
        os.rename(os.fsencode(source), os.fsencode(root / sub) + b"/caf\xe9.png")  # Latin-1 'café'
    line = refused(folder_run(cli, tmp_path, root), tmp_path, "caf\\xe9.png", "not valid UTF-8")
    assert "UnicodeEncodeError" not in line


def test_ctrl_c_while_the_cache_is_built(cli, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C lands on an observed event: the third sample's decode. Exit 130, one line, and no
    cache file left that a later run would trust; the next run builds it and trains."""
    import segsweep.data.cache as cache_module

    root = write_folder(tmp_path / "mine")
    real, calls = cache_module.load_checked, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "load_checked", interrupted)
    refused(folder_run(cli, tmp_path, root), tmp_path, "interrupted (SIGINT)", code=130)
    assert not list((tmp_path / "cache").glob("*.json"))  # no record: nothing is trusted
    monkeypatch.setattr(cache_module, "load_checked", real)
    again = folder_run(cli, tmp_path, root)
    assert again.code == 0, again.err
    assert len(list((tmp_path / "cache").glob("folder-*.json"))) == 4  # train, val, test, train statistics


# --------------------------------------------------------------------------- BatchNorm and a batch of one


def test_single_training_image_at_a_1x1_bottleneck_is_refused(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine")
    refused(folder_run(cli, tmp_path, root, "data.image_size=16", "data.limit_train=1"), tmp_path,
            "data.limit_train=1", "BatchNorm", "data.image_size=16", "model.batchnorm=false")


def test_last_batch_of_one_is_dropped_where_batchnorm_needs_it(tmp_path: Path) -> None:
    from segsweep.data import build_data
    from segsweep.spec import load_spec

    root = write_folder(tmp_path / "mine")  # 7 train images
    base = {"data.name": "folder", "data.root": str(root), "data.cache_dir": str(tmp_path / "cache"),
            "data.image_size": 16, "train.batch_size": 3, "model.base_channels": 8}
    assert len(build_data(load_spec(QUICK, base)).train) == 2  # 3 + 3, the lone 7th dropped
    assert len(build_data(load_spec(QUICK, {**base, "model.batchnorm": False})).train) == 3
    assert len(build_data(load_spec(QUICK, {**base, "data.image_size": 32})).train) == 3  # 2x2 bottleneck: kept


def test_batch_of_one_trains_at_16px(cli, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine")
    result = folder_run(cli, tmp_path, root, "data.image_size=16", "train.batch_size=3")
    assert result.code == 0, result.err


# --------------------------------------------------------------------------- segsweep cache clear beside users' files


@pytest.fixture
def built_cache(tmp_path: Path):
    """A real cache of a folder dataset's train split, with its statistics, in tmp/cache."""
    from segsweep.data.cache import dataset_stats, ensure_cache
    from segsweep.data.sources import folder_splits

    source = folder_splits(write_folder(tmp_path / "mine"), 0.2, 0.2, None)["train"]
    cache = ensure_cache(source, 16, tmp_path / "cache")
    dataset_stats(source, 16, tmp_path / "cache", cache)
    assert cache.complete() and cache.stats_path.is_file()
    return cache


# Files a user may keep beside a cache, named after its key: none is the cache's own.
USER_FILES = [".json.bak", ".images.npy.orig", ".stats.json~", ".masks.npy.1", ".json.tmp", ".notes.txt",
              ".tmp-12-abc.json", ".json.tmp-12-abc.bak"]


@pytest.mark.parametrize("suffix", USER_FILES)
def test_cache_clear_removes_only_the_caches_own_files(cli, built_cache, tmp_path: Path, suffix) -> None:
    kept = built_cache.directory / f"{built_cache.key}{suffix}"
    kept.write_text("the user's own file")
    listing = cli("cache", "list", built_cache.directory)
    assert listing.code == 0 and "total: 1 cache(s)" in listing.out and "incomplete" not in listing.out, listing.out
    cleared = cli("cache", "clear", "--all", built_cache.directory)
    assert cleared.code == 0 and "removed 1 cache(s)" in cleared.out, cleared.err
    assert sorted(p.name for p in built_cache.directory.iterdir()) == [kept.name]  # the cache's four files are gone
    assert kept.read_text() == "the user's own file"


def test_cache_clear_removes_a_stopped_builds_temporaries(cli, built_cache, tmp_path: Path) -> None:
    """What a build stopped by a kill leaves (named as `ensure_cache` and `_write_json` name them)
    is the cache's own: shown as incomplete and removed."""
    names = [f"{built_cache.key}.tmp-4242-0123abcd.images.npy", f"{built_cache.key}.tmp-4242-0123abcd.masks.npy",
             f"{built_cache.key}.json.tmp-4242-0123abcd", f"{built_cache.key}.stats.json.tmp-4242-0123abcd"]
    for name in names:
        (built_cache.directory / name).write_bytes(b"\0" * 10)
    for path in (built_cache.images_path, built_cache.masks_path, built_cache.meta_path, built_cache.stats_path):
        path.unlink()
    listing = cli("cache", "list", built_cache.directory)
    assert "total: 1 cache(s)" in listing.out and "incomplete" in listing.out, listing.out
    assert cli("cache", "clear", "--all", built_cache.directory).code == 0
    assert list(built_cache.directory.iterdir()) == []
