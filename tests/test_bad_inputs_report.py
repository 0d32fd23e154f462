"""The bad-input catalogue for `segsweep report`: each case exits 2 with one line naming the place
(file, key or item) and writes no report; runs scored on different data or test splits are
refused unless --allow-mixed-data, and each factor's default baseline is the base experiment's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_bad_inputs import _digest
from test_reports import write_run

DICE = np.linspace(0.6, 0.8, 8)


def _two_arms(root: Path, extra: dict | None = None) -> Path:
    """Two arms x two seeds; with `extra`, the second arm's runs also carry those config values."""
    for seed in (0, 1):
        write_run(root, {"model.init": "pytorch"}, seed, DICE)
        write_run(root, {"model.init": "paper"}, seed, DICE + 0.01, extra_config=extra)
    return root


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _first(root: Path, name: str) -> Path:
    return sorted(root.rglob(name))[0]


# (case id, extra config of the second arm, substrings of the one line)
MIXED_CASES = [
    ("other-dataset", {"data.name": "synthetic"}, ["data.name", "'oxford_pet'", "'synthetic'"]),
    ("other-root", {"data.root": "data/other-pets"}, ["data.root", "other-pets"]),
    ("other-validation-split", {"data.val_every": 5}, ["data.val_every", "10", "5"]),
    ("other-mask-target", {"data.mask": "pet"}, ["data.mask", "'pet'"]),
    ("other-synthetic-test-split", {"data.synthetic.num_test": 30}, ["data.synthetic.num_test", "30"]),
    ("other-folder-test-fraction", {"data.folder.test_fraction": 0.3}, ["data.folder.test_fraction", "0.3"]),
]


@pytest.mark.parametrize("case, extra, expected", MIXED_CASES, ids=[c[0] for c in MIXED_CASES])
def test_runs_on_different_data_are_refused(cli, tmp_path: Path, case, extra, expected) -> None:
    root = _two_arms(tmp_path / "sweep", extra)
    before = _digest(root)
    result = cli("report.py", root)
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in [*expected, "scored on different data", "--allow-mixed-data", "runs"]:
        assert part in lines[0], (part, lines[0])
    assert _digest(root) == before  # no report.md, no figure


def test_mixed_data_reports_with_a_warning_when_allowed(cli, tmp_path: Path) -> None:
    root = _two_arms(tmp_path / "sweep", {"data.val_every": 5})
    result = cli("report.py", root, "--allow-mixed-data")
    assert result.code == 0, result.err
    text = (root / "report.md").read_text()
    assert text.splitlines()[2].startswith("> **Warning (--allow-mixed-data):** runs were scored on different data")
    assert "data.val_every" in text.splitlines()[2]


def test_same_data_written_two_ways_is_not_mixed(cli, tmp_path: Path) -> None:
    """A root spelt with a trailing slash or `./` is the same folder; data.limit_train thins only
    the training split, so it may be a factor."""
    root = _two_arms(tmp_path / "sweep", {"data.root": "./data/oxford-iiit-pet/", "data.limit_train": 50})
    result = cli("report.py", root)
    assert result.code == 0, result.err
    assert "Warning" not in (root / "report.md").read_text()


# (case id, how to break the planted records (root -> extra CLI args), substrings of the one line)
REPORT_CASES = [
    ("missing-path", lambda root: [root / "nowhere"], ["nowhere", "no such file or folder"]),
    ("not-a-run-file", lambda root: [(root / "notes.txt", (root / "notes.txt").write_text("x"))[0]],
     ["notes.txt", "expected a sweep or run folder"]),
    ("no-runs", lambda root: [(root / "empty", (root / "empty").mkdir())[0]], ["empty", "no runs found"]),
    ("corrupt-summary", lambda root: [root, (_first(root, "summary.json").write_text("{not json"), "--")[1]][:1],
     ["summary.json", "unparseable summary"]),
    ("unknown-status", lambda root: [root, _edit_json(_first(root, "summary.json"), status="done")][:1],
     ["summary.json", "status 'done'", "completed"]),
    ("test-dice-not-a-number", lambda root: [root, _edit_json(_first(root, "summary.json"), **{"test/dice": "high"})][:1],
     ["summary.json", "test/dice", "expected a number"]),
    ("completed-without-test-dice", lambda root: [root, _edit_json(_first(root, "summary.json"), **{"test/dice": None})][:1],
     ["summary.json", "status completed but test/dice"]),
    ("missing-config", lambda root: [root, _first(root, "config.yaml").unlink()][:1], ["config.yaml", "missing"]),
    ("config-not-a-mapping", lambda root: [root, _first(root, "config.yaml").write_text("- a\n")][:1],
     ["config.yaml", "unparseable config"]),
    ("seed-not-an-integer", lambda root: [root, _first(root, "config.yaml").write_text(
        _first(root, "config.yaml").read_text().replace("seed: 0", "seed: zero"))][:1], ["config.yaml", "seed"]),
    ("metrics-without-val-dice", lambda root: [root, _first(root, "metrics.csv").write_text("epoch,loss\n1,0.5\n")][:1],
     ["metrics.csv", "missing column(s) val/dice"]),
    ("metrics-not-a-number", lambda root: [root, _first(root, "metrics.csv").write_text("epoch,val/dice\n1,high\n")][:1],
     ["metrics.csv", "line 2", "val/dice", "not a number"]),
    ("per-image-repeated", lambda root: [root, _first(root, "test_per_image.csv").write_text(
        "image_id,dice,iou\na,0.5,0.4\na,0.6,0.5\n")][:1], ["test_per_image.csv", "line 3", "'a' appears twice"]),
    ("baseline-not-a-factor", lambda root: [root, "--baseline", "model.dropout=0.5"],
     ["--baseline model.dropout", "not a factor", "model.init"]),
    ("baseline-not-a-level", lambda root: [root, "--baseline", "model.init=xavier"],
     ["--baseline model.init=xavier", "not a level", "paper"]),
    ("baseline-syntax", lambda root: [root, "--baseline", "model.init"], ["--baseline", "key=value"]),
    ("negative-margin", lambda root: [root, "--margin", "-0.01"], ["--margin", "positive"]),
    ("study-with-two-paths", lambda root: ["--study", root, root], ["--study takes one sweep folder"]),
    ("final-without-study", lambda root: [root, "--final", root], ["--final and --target go with --study"]),
    ("out-is-a-file", lambda root: [root, "--out", (root / "report.txt", (root / "report.txt").write_text("x"))[0]],
     ["--out", "report.txt: is a file, not a folder", "expected a folder for report.md and its figures"]),
    ("out-under-a-file", lambda root: [root, "--out", (root / "f", (root / "f").write_text("x"))[0] / "sub"],
     ["--out", "f is a file, so no folder can be made under it", "expected a folder"]),
    ("study-out-is-a-file", lambda root: ["--study", root, "--out", (root / "r.md", (root / "r.md").write_text("x"))[0]],
     ["--out", "r.md: is a file, not a folder"]),
]


@pytest.mark.parametrize("case, make_args, expected", REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_bad_report_input_exits_2_with_one_line(cli, tmp_path: Path, case, make_args, expected) -> None:
    root = _two_arms(tmp_path / "sweep")
    args = make_args(root)
    before = _digest(tmp_path)
    result = cli("report.py", *args)
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert _digest(tmp_path) == before
    assert not list(tmp_path.rglob("report.md")) and not list(tmp_path.rglob("*.png"))


# --------------------------------------------------------------------------- default baselines


def _factorial(root: Path, experiment_spec: dict | None) -> Path:
    """batchnorm x init, two seeds: every level in as many arms, so 'most arms' is a tie."""
    for batchnorm in (True, False):
        for init in ("pytorch", "paper"):
            for seed in (0, 1):
                write_run(root, {"model.batchnorm": batchnorm, "model.init": init}, seed, DICE)
    sweep = {"name": "grid", "method": "grid", "seeds": [0, 1]}
    if experiment_spec is not None:
        sweep["experiment_spec"] = experiment_spec
    (root / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return root


def test_default_baseline_is_the_base_experiments_value(tmp_path: Path) -> None:
    from segsweep.analysis.arms import group_arms
    from segsweep.reports.records import base_experiment, load_runs, read_sweep_spec
    from segsweep.spec import ExperimentSpec, override_spec, spec_to_dict

    base = spec_to_dict(override_spec(ExperimentSpec(), {"model.init": "paper"}))  # batchnorm: true
    root = _factorial(tmp_path / "sweep", base)
    runs, experiment = load_runs([root]), base_experiment(read_sweep_spec(root))
    study = group_arms(runs, None, experiment)
    assert {f.key: (f.baseline, f.chosen_by) for f in study.factors} == {
        "model.batchnorm": (True, "base experiment"),
        "model.init": ("paper", "most arms")}  # the two rules agree: the report's wording stays as it was
    assert study.baseline_arm is not None and study.baseline_arm.levels == {"model.batchnorm": True, "model.init": "paper"}
    overridden = group_arms(runs, {"model.batchnorm": False}, experiment)  # --baseline still has the last word
    assert overridden.factor("model.batchnorm").baseline is False
    assert overridden.factor("model.batchnorm").chosen_by == "--baseline"
    plain = group_arms(runs)  # run folders without a sweep.yaml: the level most arms share, ties sorted
    assert plain.factor("model.batchnorm").baseline is False and plain.factor("model.batchnorm").chosen_by == "most arms"


def test_the_report_names_the_base_experiment_as_the_baseline_rule(cli, tmp_path: Path) -> None:
    from segsweep.spec import ExperimentSpec, spec_to_dict

    root = _factorial(tmp_path / "sweep", spec_to_dict(ExperimentSpec()))
    result = cli("report.py", root)
    assert result.code == 0, result.err
    rows = [line for line in (root / "report.md").read_text().splitlines() if line.startswith("| model.batchnorm |")]
    assert rows and "the base experiment's value" in rows[0] and "| true |" in rows[0]
