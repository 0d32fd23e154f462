"""Search-study reports: best trials ranked on the tuning metric, the final recipe's test Dice
with its spread across seeds, figures, and clear errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from segsweep.reports.records import ReportError
from segsweep.reports.study import write_study_report
from test_reports import PNG_SIGNATURE, write_run

SPACE = {
    "optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
    "model.name": optuna.distributions.CategoricalDistribution(["unet", "resnet34_unet"]),
}


def make_study(root: Path, values: list[float]) -> Path:
    """A finished search: sweep.yaml plus a journal whose trial i has value values[i]; the lr
    alone decides the value (so it must rank first in importance)."""
    sweep_dir = root / "sweeps" / "search"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "search", "method": "bayes", "experiment": "../experiments/pets_mini.yaml", "seeds": [0],
        "metric": {"name": "val/dice", "goal": "maximize"}, "optuna": {"sampler_seed": 0},
        "parameters": {"train.time_budget_s": {"value": 60}, "train.final_test": {"value": False},
                       "optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                       "model.name": {"values": ["unet", "resnet34_unet"]}},
    }))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep_dir / "journal.log")))
    study = optuna.create_study(study_name="search", storage=storage, direction="maximize")
    rng = np.random.default_rng(0)
    for value in values:
        lr = float(10 ** np.interp(value, (min(values), max(values)), (-4, -2)))
        study.add_trial(optuna.trial.create_trial(
            params={"optim.lr": lr, "model.name": ["unet", "resnet34_unet"][int(rng.integers(2))]},
            distributions=SPACE, value=value, user_attrs={"epochs": 5}))
    return sweep_dir


def study_models(sweep_dir: Path) -> list[str]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep_dir / "journal.log")))
    return [t.params["model.name"] for t in optuna.load_study(study_name="search", storage=storage).trials]


def test_study_report_ranks_trials_and_summarises_the_final_recipe(tmp_path: Path) -> None:
    values = [0.61, 0.74, 0.69, 0.80, 0.55, 0.77]
    sweep_dir = make_study(tmp_path, values)
    finals = tmp_path / "finals"
    tests = {"unet": [0.84, 0.85, 0.83], "resnet34_unet": [0.80, 0.82]}
    for model, dice in tests.items():
        for seed, d in enumerate(dice):
            write_run(finals, {"model.name": model}, seed, None, test_dice=d)
    out = tmp_path / "report"
    report = write_study_report(sweep_dir, [finals], out, target=0.835).read_text()

    best = report.split("completed trials")[1].split("###")[0]
    ranked = [float(row.split("|")[2]) for row in best.splitlines()[3:] if row.startswith("| ")]
    assert ranked == sorted(values, reverse=True)
    importance_rows = [r for r in report.split("### Parameter importances")[1].splitlines() if r.startswith("| ")]
    assert importance_rows[1].startswith("| optim.lr |")  # the header, then the most important
    for model, dice in tests.items():
        mean, sd = float(np.mean(dice)), float(np.std(dice, ddof=1))
        label = f"experiment ({model})"
        assert f"| {label} | {', '.join(map(str, range(len(dice))))} | {mean:.4f} ± {sd:.4f} |" in report
    assert "**experiment (unet)**: mean test/dice 0.8400 over 3 seed(s) ≥ target 0.835: met" in report
    assert "**experiment (resnet34_unet)**: mean test/dice 0.8100 over 2 seed(s) < target 0.835: not met" in report
    choices = report.split("### Choices")[1].split("###")[0]
    for model in ("unet", "resnet34_unet"):
        mine = [v for v, t in zip(values, study_models(sweep_dir)) if t == model]
        assert f"| model.name | {model} | {len(mine)} | {max(mine):.4f} | {float(np.median(mine)):.4f} |" in choices
    assert "`train.time_budget_s=60`, `train.final_test=false`" in report
    for png in ("final_curves.png", "optuna_history.png", "optuna_importances.png"):
        assert (out / png).read_bytes().startswith(PNG_SIGNATURE) and f"({png})" in report
    # Deterministic: the same inputs give the same report.
    assert write_study_report(sweep_dir, [finals], out, target=0.835).read_text() == report


def test_study_report_refuses_what_it_cannot_report(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a sweep folder"):
        write_study_report(tmp_path)
    sweep_dir = make_study(tmp_path, [0.5, 0.6])
    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "sweep.yaml").write_text(yaml.safe_dump({"name": "g", "method": "grid"}))
    with pytest.raises(ReportError, match="is not a search"):
        write_study_report(grid)
    untested = write_run(tmp_path / "finals", {}, 0, None, test_dice=math.nan)
    with pytest.raises(ReportError, match="test/dice is nan"):
        write_study_report(sweep_dir, [untested])
    assert not (sweep_dir / "report.md").exists()


def test_report_cli_study_mode(tmp_path: Path, cli) -> None:
    sweep_dir = make_study(tmp_path, [0.5, 0.6, 0.7])
    result = cli("report.py", "--study", str(sweep_dir), "--out", str(tmp_path / "r"))
    assert result.code == 0 and (tmp_path / "r" / "report.md").is_file()
    result = cli("report.py", str(sweep_dir), "--target", "0.8")
    assert result.code == 2 and "--final and --target go with --study" in result.err


def test_study_report_marks_double_sigmoid_runs_and_trials(tmp_path: Path) -> None:
    """Final runs trained with `loss.double_sigmoid_bce` are marked in their row and named in a
    line under the table; a search space varying it says so; a plain study says neither."""
    sweep_dir = make_study(tmp_path, [0.6, 0.7, 0.8])
    finals = tmp_path / "finals"
    for seed in (0, 1):
        write_run(finals, {"model.name": "unet"}, seed, None, test_dice=0.8)
        write_run(finals, {"model.name": "resnet34_unet", "model.head": "sigmoid", "loss.bce": 0.0,
                                  "loss.double_sigmoid_bce": 1.0},
                  seed, None, test_dice=0.7)
    report = write_study_report(sweep_dir, [finals], tmp_path / "out").read_text()
    rows = [r for r in report.split("## Study")[0].splitlines() if r.startswith("| experiment")]
    assert len(rows) == 2
    assert sum("resnet34_unet" in r and "(double sigmoid)" in r for r in rows) == 1
    assert "- **Double sigmoid:** 2 runs trained with `loss.double_sigmoid_bce`" in report
    assert "the search space varies" not in report

    sweep = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    sweep["parameters"]["loss.double_sigmoid_bce"] = {"values": [0.0, 1.0]}
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    report = write_study_report(sweep_dir, [], tmp_path / "out2").read_text()
    assert "- **Double sigmoid:** the search space varies `loss.double_sigmoid_bce`" in report

    plain = make_study(tmp_path / "plain", [0.6, 0.7, 0.8])
    assert "Double sigmoid" not in write_study_report(plain, [], tmp_path / "out3").read_text()
