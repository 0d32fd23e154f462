"""Users' data read as what it is: mask kinds and rules, folder names and suffixes, the splits a
run decodes, the empty-truth count in summary.json and the report, and `segsweep cache`."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_bad_inputs import QUICK
from test_bad_inputs_data import folder_run, write_folder


def bundle_for(tmp_path: Path, root: Path, **overrides):
    from segsweep.data import build_data
    from segsweep.spec import load_spec

    base = {"data.name": "folder", "data.root": str(root), "data.cache_dir": str(tmp_path / "cache"),
            "data.image_size": 32, "model.base_channels": 8}
    return build_data(load_spec(QUICK, {**base, **overrides}))


@pytest.mark.parametrize("kind, overrides, values", [
    ("L", {}, {0, 255}),
    ("P", {}, {0, 1}),  # by palette index, not by the colour (200, 30, 30) the palette shows
    ("I;16", {}, {0, 1000}),
    ("I;16", {"data.folder.foreground_value": 1000}, {0, 1000}),
    ("RGB", {"data.folder.mask_channel": 1}, {0, 255}),
    ("RGBA", {"data.folder.foreground_color": [0, 255, 0]}, {0, 255 << 8}),
])
def test_masks_are_read_as_what_they_are(tmp_path: Path, kind, overrides, values) -> None:
    from test_bad_inputs_data import disc

    root = write_folder(tmp_path / "mine", kind=kind)
    bundle = bundle_for(tmp_path, root, **overrides)
    assert bundle.masks["train"].values == values
    train = bundle.datasets["train"]
    for i, sample in enumerate(train.samples):  # the foreground is the written disc, resized
        mask = train.raw(i)[1]
        expected = np.asarray(Image.fromarray(disc(int(sample.id)).astype(np.uint8)).resize((32, 32), Image.NEAREST))
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert np.mean(mask == expected) > 0.95


def test_nested_folders_and_mask_suffix(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "isbi", images="train/image", masks="train/label", suffix="_mask")
    bundle = bundle_for(tmp_path, root, **{"data.folder.images": "train/image", "data.folder.masks": "train/label",
                                           "data.folder.mask_suffix": "_mask"})
    sample = bundle.datasets["train"].samples[0]
    assert sample.mask.name == f"{sample.id}_mask.png" and sample.image.name == f"{sample.id}.png"
    assert sum(len(d) for d in bundle.datasets.values()) == 10


def test_images_and_masks_in_one_folder(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine", images="all", masks="all", suffix="_mask")
    bundle = bundle_for(tmp_path, root, **{"data.folder.images": "all", "data.folder.masks": "all",
                                           "data.folder.mask_suffix": "_mask"})
    ids = [s.id for d in bundle.datasets.values() for s in d.samples]
    assert sorted(ids, key=int) == [str(i) for i in range(10)]


@pytest.mark.parametrize("cache", [True, False])
def test_jpeg_masks_warn_once_per_split(tmp_path: Path, caplog, cache) -> None:
    root = write_folder(tmp_path / "mine", mask_ext=".jpg")
    with caplog.at_level(logging.WARNING, logger="segsweep"):
        bundle_for(tmp_path, root, **{"data.cache": cache})
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 3, lines  # train, val, test: not one per file
    assert "7 of 7 train masks" in lines[0] and "JPEG (lossy)" in lines[0] and "masks" in lines[0]


def test_limit_train_caches_only_those_images(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine")
    bundle = bundle_for(tmp_path, root, **{"data.limit_train": 3})
    assert len(bundle.datasets["train"]) == 3
    (train_meta,) = (tmp_path / "cache").glob("folder-train-*px-*[0-9a-f].json")
    meta = json.loads(train_meta.read_text())
    assert meta["ids"] == bundle.datasets["train"].ids and meta["images"] == 3
    assert np.load(train_meta.with_name(train_meta.name.replace(".json", ".images.npy")), mmap_mode="r").shape[0] == 3
    bundle_for(tmp_path, root)  # all 7: another key beside it
    assert len(list((tmp_path / "cache").glob("folder-train-*[0-9a-f].json"))) == 2


@pytest.mark.parametrize("cache", [True, False])
def test_final_test_false_does_not_read_the_test_split(tmp_path: Path, monkeypatch, cache) -> None:
    import segsweep.data.cache as cache_module

    root = write_folder(tmp_path / "mine")
    read = []
    real = cache_module.check_sample
    monkeypatch.setattr(cache_module, "check_sample", lambda s, *a: read.append(s.id) or real(s, *a))
    bundle = bundle_for(tmp_path, root, **{"train.final_test": False, "data.cache": cache})
    test_ids = set(bundle.datasets["test"].ids)
    assert "test" not in bundle.masks and bundle.summary() == {}
    assert not list((tmp_path / "cache").glob("folder-test-*"))
    assert not test_ids & set(read)
    if not cache:
        assert set(read) == set(bundle.datasets["train"].ids) | set(bundle.datasets["val"].ids)


def test_summary_and_report_count_empty_truth_masks(cli, tmp_path: Path) -> None:
    from segsweep.data import build_sources
    from segsweep.spec import load_spec

    root = write_folder(tmp_path / "mine", n=12)
    spec = load_spec(QUICK, {"data.name": "folder", "data.root": str(root)})
    test_ids = build_sources(spec.data)["test"].ids
    assert len(test_ids) == 2
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(root / "masks" / f"{test_ids[0]}.png")
    result = folder_run(cli, tmp_path, root)
    assert result.code == 0, result.err
    (summary_path,) = (tmp_path / "results").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["test/images"] == 2 and summary["test/empty_masks"] == 1

    report = cli("report.py", summary_path.parent, "--out", tmp_path / "report")
    assert report.code == 0, report.err
    text = "\n".join(p.read_text() for p in (tmp_path / "report").rglob("*.md"))
    assert "1 of 2 test images have no foreground" in text and "counts each of them as 1" in text


def test_report_says_nothing_when_no_test_mask_is_empty() -> None:
    from segsweep.reports.honesty import empty_truth_sentence

    class Run:
        def __init__(self, summary):
            self.summary = summary

    assert empty_truth_sentence([Run({"test/images": 6, "test/empty_masks": 0})]) == ""
    assert empty_truth_sentence([Run({})]) == ""  # older records: unknown, so nothing is claimed
    assert "3 of 6" in empty_truth_sentence([Run({"test/images": 6, "test/empty_masks": 3})])


# --------------------------------------------------------------------------- segsweep cache


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """HOME and XDG_CACHE_HOME in tmp: the real ~/.cache is never read or touched."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cache_list_and_clear(cli, home: Path) -> None:
    root = write_folder(home / "mine")
    bundle_for(home, root)  # train, val, test (+ train statistics) in home/cache
    (home / "cache" / "notes.txt").write_text("not a cache")
    stopped = home / "cache" / "folder-val-64px-binary-0123456789abcdef.tmp-1-abc.images.npy"
    stopped.write_bytes(b"\0" * 100)

    listing = cli("cache", "list", home / "cache")
    assert listing.code == 0, listing.err
    lines = listing.out.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("total: 4 cache(s)")
    assert any("folder train 32px  7 images" in line for line in lines)
    assert any("folder val 64px  incomplete" in line for line in lines)

    train_json = next((home / "cache").glob("folder-train-32px-*[0-9a-f].json"))
    old = time.time() - 40 * 86400
    os.utime(train_json, (old, old))
    cleared = cli("cache", "clear", home / "cache", "--older-than", "30")
    assert cleared.code == 0, cleared.err
    assert "removed 1 cache(s)" in cleared.out and "folder train 32px" in cleared.out and "3 kept" in cleared.out
    assert not list((home / "cache").glob("folder-train-*"))

    everything = cli("cache", "clear", home / "cache", "--all")
    assert everything.code == 0 and "removed 3 cache(s)" in everything.out
    assert sorted(p.name for p in (home / "cache").iterdir()) == ["notes.txt"]  # nothing else touched


def test_cache_list_defaults_to_the_user_cache(cli, home: Path) -> None:
    root = write_folder(home / "mine")
    bundle_for(home, root, **{"data.cache_dir": str(home / "xdg" / "segsweep")})
    listing = cli("cache", "list")
    assert listing.code == 0 and "total: 3 cache(s)" in listing.out and str(home / "xdg" / "segsweep") in listing.out
    assert not (home / "home" / ".cache").exists()


def test_a_used_cache_counts_as_used(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mine")
    bundle_for(tmp_path, root)
    train_json = next((tmp_path / "cache").glob("folder-train-32px-*[0-9a-f].json"))
    os.utime(train_json, (0, 0))
    bundle_for(tmp_path, root)  # a cache hit
    assert train_json.stat().st_mtime > time.time() - 3600


@pytest.mark.parametrize("args, part", [
    (["clear"], "exactly one of --all or --older-than"),
    (["clear", "--all", "--older-than", "3"], "exactly one of --all or --older-than"),
    (["clear", "--older-than", "-1"], "--older-than expects a number of days >= 0"),
    ([], "list or clear"),
    (["list", "no/such/folder"], "no/such/folder: not found"),
])
def test_cache_command_bad_input(cli, home: Path, args, part) -> None:
    result = cli("cache", *args)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and part in result.err, result.err
