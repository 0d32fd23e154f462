"""The bad-input catalogue: each case exits 2 with one line naming the place, and writes nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "quickstart.yaml"

# (case id, spec text (None: use quickstart.yaml), extra CLI args, substrings the one error line must hold)
SPEC_CASES = [
    ("unknown-key", "extends: {q}\nmodle: {{}}\n", [], ["bad.yaml", "modle", "did you mean 'model'"]),
    ("typo-nested", "extends: {q}\nmodel: {{nit: paper}}\n", [], ["bad.yaml", "model.nit", "did you mean 'init'"]),
    ("wrong-type", "extends: {q}\ntrain: {{epochs: ten}}\n", [], ["bad.yaml", "train.epochs", "valid integer"]),
    ("negative-lr", "extends: {q}\noptim: {{lr: -0.1}}\n", [], ["bad.yaml", "optim.lr", "greater than 0"]),
    ("missing-extends", "extends: nowhere.yaml\n", [], ["bad.yaml", "nowhere.yaml", "not found"]),
    ("unknown-model", "extends: {q}\nmodel: {{name: vit}}\n", [], ["model.name", "'unet'", "'resnet34_unet'"]),
    ("unknown-init", "extends: {q}\nmodel: {{init: glorot}}\n", [], ["model.init", "he_normal"]),
    ("unknown-mask", "extends: {q}\ndata: {{mask: edges}}\n", [], ["data.mask", "boundary"]),
    ("invalid-size", "extends: {q}\ndata: {{image_size: 72}}\n", [], ["data.image_size", "nearest valid size is 64"]),
    ("yaml-syntax", "model: [unclosed\n", [], ["bad.yaml", "invalid YAML"]),
    ("top-level-list", "- a\n- b\n", [], ["bad.yaml", "mapping"]),
    ("python-tag", "name: !!python/object/apply:os.system ['touch PWNED']\n", [], ["bad.yaml", "invalid YAML"]),
    ("bad-override-syntax", None, ["optim.lr"], ["override 'optim.lr'", "key=value"]),
    ("override-unknown-key", None, ["optim.lrr=0.1"], ["override optim.lrr", "did you mean 'lr'"]),
    ("override-bad-value", None, ["model.dropout=1.5"], ["override model.dropout", "less than 1"]),
    ("override-section-as-value", None, ["optim=3"], ["optim", "dictionary"]),
    ("unknown-flag", None, ["--epochs", "3"], ["segsweep run", "unrecognized arguments"]),
]


@pytest.mark.parametrize("case, text, args, expected", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_exits_2_with_one_line(cli, tmp_path: Path, monkeypatch, case, text, args, expected) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "bad.yaml"
    if text is None:
        spec = QUICK
    else:
        spec.write_text(text.format(q=QUICK))
    result = cli("run.py", spec, *args, "--results", tmp_path / "results")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "PWNED").exists()


def test_cyclic_extends(cli, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    result = cli("run.py", tmp_path / "a.yaml", "--results", tmp_path / "results")
    assert result.code == 2 and "cycle" in result.err and "a.yaml" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_spec_path_is_a_directory(cli, tmp_path: Path) -> None:
    result = cli("run.py", tmp_path, "--results", tmp_path / "results")
    assert result.code == 2 and "is a directory" in result.err and str(tmp_path) in result.err


def test_missing_spec_file(cli, tmp_path: Path) -> None:
    result = cli("run.py", tmp_path / "nope.yaml", "--results", tmp_path / "results")
    assert result.code == 2 and "nope.yaml" in result.err and "not found" in result.err


def _data_case(cli, tmp_path: Path, root: Path, *extra: str):
    result = cli("run.py", QUICK, "data.name=oxford_pet", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.image_size=32", "model.base_channels=8", "train.epochs=1", "tracking.wandb.mode=disabled",
                 *extra, "--results", tmp_path / "results")
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("config.yaml"))
    return result.err


def test_missing_data_root(cli, tmp_path: Path) -> None:
    err = _data_case(cli, tmp_path, tmp_path / "no-such-pets")
    assert "no-such-pets" in err


def test_missing_split_file(cli, tmp_path: Path, oxford_root: Path) -> None:
    (oxford_root / "annotations" / "test.txt").unlink()
    assert "test.txt" in _data_case(cli, tmp_path, oxford_root)


def test_missing_trimap(cli, tmp_path: Path, oxford_root: Path) -> None:
    (oxford_root / "annotations" / "trimaps" / "Tiny_3.png").unlink()
    assert "Tiny_3" in _data_case(cli, tmp_path, oxford_root)


def test_corrupt_jpeg(cli, tmp_path: Path, oxford_root: Path) -> None:
    (oxford_root / "images" / "Tiny_2.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    assert "Tiny_2" in _data_case(cli, tmp_path, oxford_root)


def test_empty_split(cli, tmp_path: Path, oxford_root: Path) -> None:
    (oxford_root / "annotations" / "test.txt").write_text("# nothing here\n")
    assert "test" in _data_case(cli, tmp_path, oxford_root)


def test_image_mask_size_mismatch(cli, tmp_path: Path, oxford_root: Path) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(oxford_root / "annotations" / "trimaps" / "Tiny_5.png"), np.full((20, 30), 2, np.uint8))
    assert "Tiny_5" in _data_case(cli, tmp_path, oxford_root)


def test_results_path_under_a_file(cli, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("run.py", QUICK, "--results", tmp_path / "file" / "results")
    assert result.code == 2 and "not a folder" in result.err and "file" in result.err


def test_unwritable_results_folder(cli, tmp_path: Path, monkeypatch) -> None:
    """Refused before anything is built or written. For ordinary users mode bits lock the folder;
    root ignores them, so there the folder is made immutable (`chattr +i`), which stops root too.
    The check also probes with a real temporary file, so it holds where `os.access` says yes
    wrongly (shown by forcing `os.access` to say yes)."""
    import os
    import shutil
    import subprocess

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    immutable = False
    try:
        if os.access(locked, os.W_OK):
            locked.chmod(0o700)
            if shutil.which("chattr") is None or subprocess.run(
                    ["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
                pytest.skip("running as root, and chattr +i is not possible here (no CAP_LINUX_IMMUTABLE or no "
                            "filesystem support): no way to make a folder that root cannot write")
            immutable = True
        result = cli("run.py", QUICK, "--results", locked / "results")
        assert result.code == 2 and "not writable" in result.err and str(locked) in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1
        monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
        result = cli("run.py", QUICK, "--results", locked / "results")
        assert result.code == 2 and "not writable" in result.err and f"({locked}: " in result.err, result.err
        assert list(locked.iterdir()) == []
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o700)


# --------------------------------------------------------------------------- checkpoints and command line
#
# Each case: exit 2, one line on stderr naming the file / key / item, and nothing written or
# overwritten: the trained run folder's files keep their bytes, no output folder appears.


class Payload:
    """Unpickling this runs `os.makedirs(marker)`: a stand-in for any code in a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.makedirs, (str(self.marker),))


@pytest.fixture(scope="module")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch tiny run (shared: every case checks it is left byte-for-byte unchanged)."""
    from conftest import TINY

    from segsweep.spec import load_spec
    from segsweep.train.loop import fit

    spec = load_spec(QUICK, {**TINY, "train.epochs": 1, "data.root": str(synthetic_root),
                             "data.cache_dir": str(synthetic_root.parent / "cache")})
    return fit(spec, tmp_path_factory.mktemp("trained") / "run").run_dir


def _digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _best(run: Path) -> dict:
    import torch

    return torch.load(run / "checkpoints" / "best.pt", weights_only=True)


def _save(tmp: Path, name: str, payload) -> Path:
    import torch

    torch.save(payload, tmp / name)
    return tmp / name


def _with_spec(run: Path, tmp: Path, **changes) -> Path:
    """best.pt with its stored spec changed (the weights stay those of the trained UNet)."""
    from segsweep.spec import apply_overrides

    state = _best(run)
    state["spec"] = apply_overrides(state["spec"], changes)
    return _save(tmp, "edited.pt", state)


def _truncated(run: Path, tmp: Path) -> Path:
    data = (run / "checkpoints" / "best.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    return tmp / "truncated.pt"


def _pickled(run: Path, tmp: Path) -> Path:
    state = _best(run)
    state["extra"] = Payload(tmp / "PWNED")
    return _save(tmp, "payload.pt", state)


def _resume_folder(run: Path, tmp: Path, last: Path | None) -> Path:
    """A copy of the run folder as a killed run leaves it (no summary.json), last.pt replaced."""
    import shutil

    copy = tmp / "killed-run"
    shutil.copytree(run, copy)
    (copy / "summary.json").unlink()
    if last is not None:
        shutil.copy(last, copy / "checkpoints" / "last.pt")
    return copy


def _image(tmp: Path) -> Path:
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp / "photo.png"), np.full((40, 40, 3), 128, np.uint8))
    return tmp / "photo.png"


# (case id, script, builds the arguments from (trained run, tmp folder), substrings of the one line)
CHECKPOINT_CASES = [
    ("other-architecture", "evaluate.py",
     lambda run, tmp: [_with_spec(run, tmp, **{"model.name": "resnet34_unet"})],
     ["edited.pt", "weights do not fit this model", "missing keys", "another architecture"]),
    ("other-width", "predict.py",
     lambda run, tmp: [_with_spec(run, tmp, **{"model.base_channels": 16}), _image(tmp), "--out", tmp / "out"],
     ["edited.pt", "shape mismatches", "(8,", "(16,", "another architecture or width"]),
    ("truncated", "evaluate.py", lambda run, tmp: [_truncated(run, tmp)],
     ["truncated.pt", "not a readable checkpoint", "truncated or corrupt"]),
    ("truncated-last-on-resume", "run.py",
     lambda run, tmp: ["--resume", _resume_folder(run, tmp, _truncated(run, tmp))],
     ["last.pt", "truncated or corrupt"]),
    ("pickle-payload", "evaluate.py", lambda run, tmp: [_pickled(run, tmp)],
     ["payload.pt", "refused", "could run code", "os.makedirs"]),
    ("pickle-payload-predict", "predict.py",
     lambda run, tmp: [_pickled(run, tmp), _image(tmp), "--out", tmp / "out"], ["payload.pt", "refused"]),
    ("pickle-payload-resume", "run.py",
     lambda run, tmp: ["--resume", _resume_folder(run, tmp, _pickled(run, tmp))], ["last.pt", "refused"]),
    ("random-bytes", "evaluate.py",
     lambda run, tmp: [(tmp / "noise.pt", (tmp / "noise.pt").write_bytes(bytes(range(256)) * 8))[0]],
     ["noise.pt", "not a readable checkpoint"]),
    ("empty-file", "evaluate.py", lambda run, tmp: [(tmp / "e.pt", (tmp / "e.pt").write_bytes(b""))[0]],
     ["e.pt", "not a readable checkpoint"]),
    ("not-a-segsweep-checkpoint", "evaluate.py",
     lambda run, tmp: [_save(tmp, "tensor.pt", __import__("torch").zeros(3))], ["tensor.pt", "no 'model' state"]),
    ("missing-checkpoint", "evaluate.py", lambda run, tmp: [tmp / "gone.pt"], ["gone.pt", "not found"]),
    ("run-folder-without-best", "evaluate.py", lambda run, tmp: [tmp], [str(Path("checkpoints") / "best.pt")]),
    ("no-spec-stored", "evaluate.py",
     lambda run, tmp: [_save(tmp, "bare.pt", {"model": _best(run)["model"]})], ["bare.pt", "no experiment spec"]),
    ("invalid-stored-spec", "evaluate.py",
     lambda run, tmp: [_with_spec(run, tmp, **{"optim.lrr": 0.1})], ["edited.pt", "optim.lrr", "unknown key"]),
    ("no-normalisation", "predict.py",
     lambda run, tmp: [_save(tmp, "old.pt", {k: v for k, v in _best(run).items() if k != "normalization"}),
                       _image(tmp), "--out", tmp / "out"], ["old.pt", "normalisation"]),
    ("model-override-at-evaluation", "evaluate.py",
     lambda run, tmp: [run, "model.base_channels=16"], ["model.base_channels", "fixed by the checkpoint"]),
]

CLI_CASES = [
    ("evaluate-bad-split", "evaluate.py", lambda run, tmp: [run, "--split", "holdout"], ["--split", "holdout"]),
    ("resume-with-a-spec", "run.py", lambda run, tmp: ["--resume", run, str(QUICK)], ["--resume takes only"]),
    ("resume-with-results", "run.py", lambda run, tmp: ["--resume", run, "--results", tmp],
     ["--resume takes only"]),
    ("no-spec", "run.py", lambda run, tmp: [], ["spec is required"]),
    ("resume-missing-folder", "run.py", lambda run, tmp: ["--resume", tmp / "nowhere"],
     ["nowhere", "existing run folder"]),
    ("resume-without-last", "run.py",
     lambda run, tmp: ["--resume", (lambda d: ((d / "checkpoints" / "last.pt").unlink(), d)[1])(
         _resume_folder(run, tmp, None))], ["killed-run", "no checkpoints/last.pt"]),
    ("predict-threshold", "predict.py",
     lambda run, tmp: [run, _image(tmp), "--out", tmp / "out", "--threshold", "1.5"], ["--threshold 1.5"]),
    ("predict-out-is-a-file", "predict.py",
     lambda run, tmp: [run, _image(tmp), "--out", (tmp / "f", (tmp / "f").write_text("x"))[0]],
     ["--out is a file"]),
    ("predict-corrupt-image", "predict.py",
     lambda run, tmp: [run, _image(tmp), (tmp / "bad.jpg", (tmp / "bad.jpg").write_bytes(b"\xff\xd8junk"))[0],
                       "--out", tmp / "out"], ["bad.jpg", "unreadable or corrupt"]),
    ("predict-without-out", "predict.py", lambda run, tmp: [run, _image(tmp)], ["--out"]),
]


@pytest.mark.parametrize("case, script, make_args, expected", CHECKPOINT_CASES + CLI_CASES,
                         ids=[c[0] for c in CHECKPOINT_CASES + CLI_CASES])
def test_bad_checkpoint_or_command_line(cli, trained_run: Path, tmp_path: Path, monkeypatch,
                                        case, script, make_args, expected) -> None:
    monkeypatch.chdir(tmp_path)
    before = _digest(trained_run)
    args = make_args(trained_run, tmp_path)
    copies = {p: _digest(p) for p in tmp_path.glob("killed-run")}
    result = cli(script, *args)
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert _digest(trained_run) == before
    for folder, digest in copies.items():
        assert _digest(folder) == digest
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "PWNED").exists()


def test_pickle_payload_is_live_but_never_runs(trained_run: Path, tmp_path: Path, cli) -> None:
    """The payload used above really runs code when unpickled without `weights_only` (control),
    and every entry point (evaluate.py, predict.py, run.py --resume, the trainer's loader)
    refuses it before it can."""
    import torch

    from segsweep.checkpoint import load_checkpoint
    from segsweep.errors import CheckpointError

    control = _pickled(trained_run, tmp_path)
    torch.load(control, weights_only=False)
    assert (tmp_path / "PWNED").is_dir()  # the payload is real
    (tmp_path / "PWNED").rmdir()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(control)
    assert not (tmp_path / "PWNED").exists()
