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
    # Values that passed validation and failed later (issue 13): infinity, NaN, seeds out of range.
    ("inf-loss-weight", "extends: {q}\nloss: {{bce: .inf}}\n", [], ["bad.yaml", "loss.bce", "finite number"]),
    ("inf-registered-loss-term", "extends: {q}\nloss: {{double_sigmoid_bce: .inf}}\n", [],
     ["bad.yaml", "loss.double_sigmoid_bce", "finite number >= 0"]),
    ("inf-weight-decay", "extends: {q}\noptim: {{weight_decay: .inf}}\n", [],
     ["bad.yaml", "optim.weight_decay", "finite number"]),
    ("nan-lr", "extends: {q}\noptim: {{lr: .nan}}\n", [], ["bad.yaml", "optim.lr", "finite number"]),
    ("inf-focal-gamma", "extends: {q}\nloss: {{focal_gamma: .inf}}\n", [], ["bad.yaml", "loss.focal_gamma", "finite"]),
    ("inf-grad-clip", "extends: {q}\ntrain: {{grad_clip: .inf}}\n", [], ["bad.yaml", "train.grad_clip", "finite"]),
    ("nan-augment", "extends: {q}\ndata: {{augment: {{rotate: .nan}}}}\n", [],
     ["bad.yaml", "data.augment.rotate", "finite"]),
    ("nan-time-budget", "extends: {q}\ntrain: {{time_budget_s: .nan}}\n", [],
     ["bad.yaml", "train.time_budget_s", "greater than 0"]),
    ("seed-beyond-generators", "extends: {q}\nseed: 4294967296\n", [], ["bad.yaml", "seed", "4294967295"]),
    ("override-inf-weight-decay", None, ["optim.weight_decay=inf"], ["override optim.weight_decay", "finite"]),
    ("override-overflowing-loss-weight", None, ["loss.dice=1e999"], ["override loss.dice", "finite"]),
    ("override-inf-loss-term", None, ["loss.focal=.inf"], ["override loss.focal", "finite"]),
    ("override-nan-dropout", None, ["model.dropout=nan"], ["override model.dropout", "finite"]),
    ("override-huge-seed", None, ["seed=99999999999"], ["override seed", "less than or equal to 4294967295"]),
    ("override-negative-seed", None, ["seed=-1"], ["override seed", "greater than or equal to 0"]),
    # Repeated YAML keys: refused at any level with both lines (YAML itself keeps the last silently).
    ("duplicate-section", "extends: {q}\nmodel: {{init: paper}}\nmodel: {{}}\n", [],
     ["bad.yaml", "'model' appears twice", "lines 2 and 3"]),
    ("duplicate-nested-key", "extends: {q}\ntrain:\n  epochs: 2\n  batch_size: 4\n  epochs: 3\n", [],
     ["bad.yaml", "'epochs' appears twice", "lines 3 and 5"]),
    ("duplicate-deep-key", "extends: {q}\ndata:\n  augment:\n    rotate: 5\n    rotate: 9\n", [],
     ["bad.yaml", "'rotate' appears twice", "lines 4 and 5"]),
    ("duplicate-extends", "extends: {q}\nextends: {q}\n", [], ["bad.yaml", "'extends' appears twice", "lines 1 and 2"]),
    # `extends:` naming the wrong kind of thing says `extends:` and the file holding it.
    ("extends-directory", "extends: .\n", [], ["bad.yaml: extends: '.'", "is a directory"]),
    ("extends-non-yaml", "extends: {r}/README.md\n", [], ["bad.yaml: extends:", "README.md", "not a YAML spec"]),
    ("extends-not-a-path", "extends: [a.yaml]\n", [], ["bad.yaml: extends:", "expected a path"]),
    # Characters that show as nothing: named, with their line (issue 25, class 10).
    ("doubled-byte-order-mark", "\ufeff\ufeffextends: {q}\n", [],
     ["bad.yaml: line 1, column 2", "a byte-order mark (U+FEFF)", "remove it"]),
    ("byte-order-mark-in-a-value", "extends: {q}\nname: \ufeffmine\n", [],
     ["bad.yaml: line 2, column 7", "a byte-order mark (U+FEFF)"]),
    ("nul-byte", "extends: {q}\ntrain: {{epochs: 2}}\x00\n", [], ["bad.yaml: line 2, column 19", "a NUL byte (U+0000)"]),
    ("control-character", "extends: {q}\nname: mine\x07\n", [],
     ["bad.yaml: line 2, column 11", "invalid YAML", "character U+0007 is not allowed"]),
    # Registry names that do not exist, all answered from the table of names (issue 25, class 8).
    ("loss-term-typo", "extends: {q}\nloss: {{dcie: 1}}\n", [], ["bad.yaml", "loss.dcie", "did you mean 'dice'"]),
    ("unknown-optimiser", "extends: {q}\noptim: {{name: adan}}\n", [],
     ["bad.yaml", "optim.name", "unknown optimiser 'adan'", "'adam'"]),
    ("override-unknown-scheduler", None, ["optim.scheduler=cosine_warm"],
     ["override optim.scheduler", "unknown scheduler", "'warmup_cosine'"]),
    ("override-unknown-dataset", None, ["data.name=pets"], ["override data.name", "unknown dataset 'pets'", "'oxford_pet'"]),
]


@pytest.mark.parametrize("case, text, args, expected", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_exits_2_with_one_line(cli, tmp_path: Path, monkeypatch, case, text, args, expected) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "bad.yaml"
    if text is None:
        spec = QUICK
    else:
        spec.write_text(text.format(q=QUICK, r=REPO))
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


def _train_tiny(synthetic_root: Path, folder: Path) -> Path:
    from conftest import TINY

    from segsweep.spec import load_spec
    from segsweep.train.loop import fit

    spec = load_spec(QUICK, {**TINY, "train.epochs": 1, "data.root": str(synthetic_root),
                             "data.cache_dir": str(synthetic_root.parent / "cache")})
    return fit(spec, folder / "run").run_dir


@pytest.fixture(scope="module")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch tiny run (shared: every case checks it is left byte-for-byte unchanged)."""
    return _train_tiny(synthetic_root, tmp_path_factory.mktemp("trained"))


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


# --------------------------------------------------------------------------- extends chains


# (case id, the parent file's bytes, substrings of the one line); bad.yaml says `extends: parent.yaml`
PARENT_CASES = [
    ("parent-duplicate-key", b"model: {}\nmodel: {}\n",
     ["bad.yaml: extends: 'parent.yaml'", "'model' appears twice", "lines 1 and 2"]),
    ("parent-invalid-yaml", b"model: [unclosed\n", ["bad.yaml: extends: 'parent.yaml'", "invalid YAML"]),
    ("parent-a-list", b"- a\n- b\n", ["bad.yaml: extends: 'parent.yaml'", "mapping"]),
    ("parent-not-utf8", b"\xff\xfe\x00model", ["bad.yaml: extends: 'parent.yaml'", "not a UTF-8"]),
    ("grandparent-missing", b"extends: gone.yaml\n", ["parent.yaml: extends:", "gone.yaml", "not found"]),
    ("grandparent-directory", b"extends: sub\n", ["parent.yaml: extends: 'sub'", "is a directory"]),
]


@pytest.mark.parametrize("case, parent, expected", PARENT_CASES, ids=[c[0] for c in PARENT_CASES])
def test_bad_parent_spec_names_the_extends_line(cli, tmp_path: Path, case, parent, expected) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "parent.yaml").write_bytes(parent)
    (tmp_path / "bad.yaml").write_text("extends: parent.yaml\n")
    result = cli("run.py", tmp_path / "bad.yaml", "--results", tmp_path / "results")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "results").exists()


def test_a_spec_without_repeated_keys_loads_as_safe_load_reads_it(tmp_path: Path) -> None:
    """The duplicate-key loader changes nothing else: merge keys may be overridden, values are
    those of yaml.safe_load."""
    import yaml

    from segsweep.spec import read_yaml

    text = "a: &x {b: 1, c: [1, 2]}\nd:\n  <<: *x\n  b: 2\ne: 1.0e-3\nf: null\n"
    (tmp_path / "ok.yaml").write_text(text)
    assert read_yaml(tmp_path / "ok.yaml") == yaml.safe_load(text)
    assert read_yaml(tmp_path / "ok.yaml")["d"] == {"b": 2, "c": [1, 2]}


def test_infinite_time_budget_is_still_allowed_and_trains(tiny_spec, tmp_path: Path) -> None:
    import math

    from segsweep.train.loop import fit

    spec = tiny_spec(**{"train.time_budget_s": math.inf, "train.epochs": 1})
    assert spec.train.time_budget_s == math.inf
    assert fit(spec, tmp_path / "run").status == "completed"  # no budget plan from an infinite budget


# --------------------------------------------------------------------------- --resume of another run's last.pt


@pytest.fixture(scope="module")
def other_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second run of the very same spec (same name and seed), in a folder of its own."""
    return _train_tiny(synthetic_root, tmp_path_factory.mktemp("other"))


def _last_with_spec(run: Path, tmp: Path, **changes) -> Path:
    import torch

    from segsweep.spec import apply_overrides

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["spec"] = apply_overrides(state["spec"], changes)
    return _save(tmp, "foreign.pt", state)


# (case id, the last.pt to put in the folder, from (trained run, other run, tmp), substrings of the one line)
FOREIGN_CASES = [
    ("same-spec-other-run", lambda run, other, tmp: other / "checkpoints" / "last.pt",
     ["killed-run: refused to resume", "belongs to another run", "epoch 1 is not the one in metrics.csv"]),
    ("other-seed", lambda run, other, tmp: _last_with_spec(run, tmp, seed=7),
     ["killed-run: refused to resume", "seed=7", "config.yaml has 0"]),
    ("other-learning-rate", lambda run, other, tmp: _last_with_spec(run, tmp, **{"optim.lr": 0.5}),
     ["refused to resume", "optim.lr=0.5"]),
]


@pytest.mark.parametrize("case, last, expected", FOREIGN_CASES, ids=[c[0] for c in FOREIGN_CASES])
def test_resume_refuses_another_runs_checkpoint(cli, trained_run: Path, other_run: Path, tmp_path: Path,
                                               case, last, expected) -> None:
    folder = _resume_folder(trained_run, tmp_path, last(trained_run, other_run, tmp_path))
    before, others = _digest(folder), _digest(other_run)
    result = cli("run.py", "--resume", folder)
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert _digest(folder) == before  # config.yaml, metrics.csv, checkpoints: the same bytes
    assert not (folder / "summary.json").exists()
    assert _digest(other_run) == others


def test_resume_identity_accepts_the_folders_own_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    from segsweep.checkpoint import check_resume_identity

    folder = _resume_folder(trained_run, tmp_path, None)
    check_resume_identity(folder, folder / "checkpoints" / "last.pt")
    (folder / "config.yaml").unlink()  # an older folder with less to compare: taken as it is
    (folder / "metrics.csv").unlink()
    check_resume_identity(folder, folder / "checkpoints" / "last.pt")


# --------------------------------------------------------------------------- out of memory


OOM_CASES = [
    ("absurd-image-size", ["data.image_size=4096", "train.batch_size=64", "model.base_channels=64"],
     ["data.image_size 4096", "train.batch_size 64", "width 64"]),
    # A batch beyond the training split trains on the split: refused only when that does not fit.
    ("absurd-batch", ["data.image_size=4096", "train.batch_size=100000"],
     ["data.image_size 4096", "train.batch_size 100000 (at most 180 training images per step)"]),
    ("absurd-resnet34", ["model.name=resnet34_unet", "data.image_size=4096", "train.batch_size=256"],
     ["model resnet34_unet", "train.batch_size 256"]),
]


@pytest.mark.parametrize("case, args, expected", OOM_CASES, ids=[c[0] for c in OOM_CASES])
def test_a_run_that_cannot_fit_is_refused_before_anything_is_built(cli, tmp_path: Path, monkeypatch,
                                                                   case, args, expected) -> None:
    monkeypatch.chdir(tmp_path)  # quickstart's data root is relative: nothing may appear under it either
    result = cli("run.py", QUICK, *args, "tracking.wandb.mode=disabled", "--results", tmp_path / "results")
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in [*expected, "GiB for activations alone", "available", "use a smaller data.image_size or train.batch_size"]:
        assert part in lines[0], (part, lines[0])
    assert list(tmp_path.iterdir()) == []  # no run folder, no generated data, no cache
    assert "run folder:" not in result.out  # none was made, so none is named


def test_a_batch_larger_than_the_training_split_is_not_refused(cli, tmp_path: Path, tiny_overrides: dict) -> None:
    """A batch of a billion images on 36 training images needs the memory of 36: the estimate caps
    it (uncapped it would be refused), and the run trains. The run folder is named once it exists."""
    import torch

    from segsweep.spec import load_spec
    from segsweep.train.memory import activation_bytes, available_bytes, images_per_step

    overrides = {**tiny_overrides, "train.epochs": 1, "train.batch_size": 10**9}
    spec = load_spec(QUICK, overrides)
    assert images_per_step(spec) == 36  # 40 trainval images, every 10th for validation
    available = available_bytes(torch.device("cpu"))
    assert available is None or activation_bytes(spec) > available[0]  # what was refused before
    result = cli("run.py", QUICK, *[f"{k}={v}" for k, v in overrides.items()], "--results", tmp_path / "results")
    assert result.code == 0, result.err
    named = [line.removeprefix("run folder: ") for line in result.out.splitlines() if line.startswith("run folder: ")]
    assert len(named) == 1 and (Path(named[0]) / "config.yaml").is_file()


def test_an_invalid_sweep_cell_names_the_sweep_file_not_a_placeholder(cli, tmp_path: Path) -> None:
    """A cell that fails a model's own rule is named by the sweep file and cell, never '<spec>'."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"experiment: {QUICK}\nmethod: grid\nparameters:\n  model.name: {{values: [unet, resnet34_unet]}}\n"
                     "  data.image_size: {value: 48}\n")
    result = cli("sweep.py", sweep, "--results", tmp_path / "results")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "<spec>" not in lines[0], result.err
    for part in ("sweep.yaml", "cell model.name=resnet34_unet", "data.image_size", "nearest valid size is 32"):
        assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "results").exists()


def test_the_memory_estimate_is_a_close_lower_bound_and_passes_the_quickstart() -> None:
    """The estimate extrapolated from the tiny probe is within 15% below what autograd saves at
    the real size (never above it), and the quickstart as committed is not refused."""
    import torch

    from segsweep.models import build_model
    from segsweep.spec import load_spec
    from segsweep.train.memory import activation_bytes, check_memory

    spec = load_spec(QUICK, {"data.image_size": 96, "train.batch_size": 3, "model.base_channels": 8,
                             "train.precision": "fp32"})
    model = build_model(spec.model).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, tuple[int, int]] = {}  # storage -> (bytes, dims)

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dim())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(3, 3, 96, 96))
    feature_maps = sum(n for n, dims in saved.values() if dims >= 3)
    assert 0.85 * feature_maps <= activation_bytes(spec) <= feature_maps <= sum(n for n, _ in saved.values())
    check_memory(load_spec(QUICK), torch.device("cpu"))


def test_out_of_memory_during_training_is_one_line(cli, tmp_path: Path, monkeypatch, tiny_overrides: dict) -> None:
    """exit 1 (the run failed, and its folder records it), one line with size, batch and a hint."""
    import json

    import segsweep.train.loop as loop

    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 34359738368 bytes.")

    monkeypatch.setattr(loop, "train_one_epoch", allocate)
    args = [f"{k}={v}" for k, v in {**tiny_overrides, "train.epochs": 1}.items()]
    result = cli("run.py", QUICK, *args, "--results", tmp_path / "results")
    assert result.code == 1, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in ("ran out of memory during training", "data.image_size 32", "train.batch_size 8",
                 "DefaultCPUAllocator", "use a smaller data.image_size or train.batch_size"):
        assert part in lines[0], (part, lines[0])
    summary = json.loads(next((tmp_path / "results").rglob("summary.json")).read_text())
    assert summary["status"] == "failed" and "not enough memory" in summary["error"]
