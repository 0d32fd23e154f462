"""Sweeps in rounds end to end: a planted-effect grid with `seeds: {..., until: conclusive}` and a
planted fraction with side arms run round after round, analysed between rounds by the report's
own analysis, until the rule stops them; they survive a killed command and a killed worker."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import wait_for
from segsweep.errors import SpecError
from segsweep.sweeps.cells import cell_config_hash
from segsweep.sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
# optim.lr level -> (planted effect on test Dice, seed noise sd). The baseline cell is lr 0.003, the
# quickstart's own (the base experiment's): the implicit claims compare every other cell with it.
PLANTED = {0.001: (0.0, 0.003), 0.002: (0.2, 0.003), 0.003: (0.0, 0.003), 0.004: (0.012, 0.003)}
DIVERGE = os.environ.get("ADAPTIVE_DIVERGE")  # "lr seed": that trial diverges without a checkpoint


def planted_fit(spec: Any, run_dir: Any, tracker: Any = None, on_epoch_end: Any = None) -> Any:
    """A deterministic planted test Dice per (lr level, seed): no training (module level: picklable).
    With ADAPTIVE_LOG set, appends "config_hash seed" per call; with ADAPTIVE_HANG set, the first
    call with seed >= 3 (a later round) writes its pid there and hangs until the test kills it."""
    from segsweep.spec import config_hash
    from segsweep.train import RunResult

    if os.environ.get("ADAPTIVE_LOG"):
        with open(os.environ["ADAPTIVE_LOG"], "a") as fh:
            fh.write(f"{config_hash(spec)} {spec.seed}\n")
    hang = os.environ.get("ADAPTIVE_HANG")
    if hang and spec.seed >= int(os.environ.get("ADAPTIVE_HANG_MIN_SEED", "3")):
        try:
            fd = os.open(hang, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            time.sleep(300)
    effect, sd = PLANTED.get(round(spec.optim.lr, 6), (0.0, 0.003))
    noise = np.random.default_rng([spec.seed, int(round(spec.optim.lr * 1e6))]).normal(0.0, sd)
    dice = 0.7 + effect + float(noise) - (0.05 if not spec.model.batchnorm else 0.0)
    if os.environ.get("ADAPTIVE_DIVERGE") == f"{spec.optim.lr:g} {spec.seed}":
        write_record(spec, Path(run_dir), None, status="diverged")
        return RunResult("diverged", Path(run_dir), 0, {"test/dice": float("nan"), "epochs_run": 1, "wall_s": 0.0})
    if on_epoch_end is not None:
        on_epoch_end(1, {"val/dice": dice, "val/loss": 1 - dice})
    write_record(spec, Path(run_dir), dice)
    metrics = {"val/dice": dice, "test/dice": dice, "epochs_run": 1, "wall_s": 0.0}
    return RunResult("completed", Path(run_dir), 1, metrics)


def write_record(spec: Any, run_dir: Path, dice: float | None, status: str = "completed") -> None:
    """config.yaml and summary.json as the trainer writes them, so the ablation report can read the sweep."""
    from segsweep.spec import arm_hash, spec_to_dict

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    (run_dir / "summary.json").write_text(json.dumps({
        "status": status, "name": spec.name, "seed": spec.seed, "best_epoch": 1, "val/dice": dice,
        "test/dice": dice, "test/dice_global": dice, "epochs_run": 1, "wall_s": 0.0, "run_dir": str(run_dir),
        "arm_hash": arm_hash(spec),
    }))


def write_adaptive(path: Path, **fields: Any) -> Path:
    tree: dict[str, Any] = {
        "name": path.stem, "experiment": str(QUICKSTART), "method": "grid",
        "parameters": {"optim.lr": {"values": list(PLANTED)}},
        "seeds": {"initial": [0, 1, 2], "max": 12, "step": 3, "until": "conclusive", "margin": 0.01, "alpha": 0.05},
        "optuna": {"heartbeat_interval": 1, "grace_period": 2},
    }
    tree.update(fields)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def completed(sweep_dir: Path, name: str) -> Counter:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep_dir / "journal.log")))
    study = optuna.load_study(study_name=name, storage=storage)
    return Counter(t.user_attrs["config_hash"] for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE)


def planned_hashes(path: Path, record: Any) -> set[str]:
    """The config hashes of every run of the rounds the record says were done."""
    sweep = load_sweep(path)
    cells = {c.label: c for c in sweep.cells}
    rounds = record["rounds_done"] if isinstance(record, dict) else record.rounds_done
    return {cell_config_hash(sweep, cells[r.cell], r.seed)[0] for r in sweep.design.runs_through(rounds)}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No planted behaviour left over, and the code unchanged between rounds (an edit of the
    working tree while a test runs would otherwise stop its rounds)."""
    import segsweep.record

    state = segsweep.record.code_state()
    monkeypatch.setattr(segsweep.record, "code_state", lambda: state)
    for var in ("ADAPTIVE_LOG", "ADAPTIVE_HANG", "ADAPTIVE_DIVERGE", "ADAPTIVE_HANG_MIN_SEED"):
        monkeypatch.delenv(var, raising=False)


def test_schedule_is_validated_with_one_line_naming_the_key(tmp_path: Path) -> None:
    cases = {
        "seeds.maxx": ({"initial": [0, 1], "maxx": 4}, "did you mean 'max'"),
        "seeds.max": ({"initial": [0, 1, 2], "max": 2}, "below the 3 initial seeds"),
        "seeds.initial": ({"initial": [0, 0], "max": 4}, "distinct integers"),
        "seeds.until": ({"initial": [0, 1], "max": 4, "until": "forever"}, "conclusive"),
        "seeds.budget.hourz": ({"initial": [0, 1], "max": 4, "budget": {"hourz": 1}}, "valid keys: trials, hours"),
    }
    for key, (seeds, says) in cases.items():
        with pytest.raises(SpecError) as info:
            load_sweep(write_adaptive(tmp_path / "bad.yaml", seeds=seeds))
        assert f"bad.yaml: {key}:" in str(info.value) and says in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match="seeds: a seed schedule adds seeds to grid cells"):
        load_sweep(write_adaptive(tmp_path / "bad.yaml", method="random", run_cap=2,
                                  parameters={"optim.lr": {"min": 0.001, "max": 0.01}}))
    sweep = load_sweep(write_adaptive(tmp_path / "ok.yaml"))
    assert sweep.seeds == tuple(range(12)) and sweep.design.looks() == (1, 2, 3, 4)
    assert [r.seed for r in sweep.design.runs(2) if r.cell == "optim.lr=0.003"] == [3, 4, 5]


@pytest.mark.parametrize("seeds, key, says", [
    ({"initial": [0, 1], "max": 4, "margin": 5}, "seeds.margin", "equivalence margin in test Dice in (0, 0.1]"),
    ({"initial": [0, 1], "max": 4, "margin": float("inf")}, "seeds.margin", "finite number"),
    ({"initial": [0, 1], "max": 4, "margin": 0}, "seeds.margin", "(0, 0.1]"),
    ({"initial": [0, 1], "max": 4, "alpha": 0.5}, "seeds.alpha", "error rate in (0, 0.2]"),
    ({"initial": [0, 1], "max": 4, "alpha": float("nan")}, "seeds.alpha", "finite number"),
    ({"initial": [0, 1], "max": 4, "primary_share": 1.0}, "seeds.primary_share", "[0.5, 0.95]"),
    ({"initial": [0, 1], "max": 4, "budget": {"hours": 1e9}}, "seeds.budget.hours", "number of hours"),
    ({"initial": [0, 1], "max": 4, "budget": {"trials": 0}}, "seeds.budget.trials", "number of trials"),
    ({"initial": [0, 1], "max": 1_000_000_000}, "seeds.max", "1000"),
    ({"initial": [0, 1], "max": 20_000_000}, "seeds.max", "1000"),
    ({"initial": [4294967290, 4294967291], "max": 10}, "seeds.max", "above 4294967295"),
    ({"initial": [0, 1], "max": 4, "step": 5000}, "seeds.step", "1000"),
])
def test_a_statistical_setting_out_of_its_range_is_refused_before_anything_is_built(
        tmp_path: Path, seeds: dict, key: str, says: str) -> None:
    """A margin of 5 (5% meant), an infinite one, an alpha of 0.5, a budget of a billion hours or a
    `max` of a billion seeds: one line naming the key and the range, and no plan materialised."""
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(SpecError) as info:
        load_sweep(write_adaptive(tmp_path / "bad.yaml", seeds=seeds))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert f"bad.yaml: {key}:" in str(info.value) and says in str(info.value) and "\n" not in str(info.value)
    assert peak < 50_000_000  # nothing the size of the schedule was built


def test_planted_effects_are_settled_in_whole_rounds(tmp_path: Path, clean_env: None) -> None:
    from segsweep.analysis import SequentialRecord
    from segsweep.reports.ablation import write_report
    from segsweep.sweeps import run_sweep

    path = write_adaptive(tmp_path / "planted.yaml")
    lines: list[str] = []
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lines.append)
    assert outcome.exit_code == 0 and outcome.pending == 0
    record = SequentialRecord.read(outcome.sweep_dir / "sequential.json")
    verdicts = {c.id: c for c in record.claims}
    assert set(verdicts) == {f"optim.lr={lv}" for lv in ("0.001", "0.002", "0.004")}
    assert verdicts["optim.lr=0.002"].verdict == "better" and verdicts["optim.lr=0.002"].look == 1
    assert verdicts["optim.lr=0.001"].verdict == "equivalent"
    assert verdicts["optim.lr=0.004"].verdict == "better"  # 0.012 with sd 0.003: more than the margin
    assert record.stopped_by == "every claim is decided" and record.rounds_done > 1
    counts = completed(outcome.sweep_dir, "planted")
    assert set(counts) == planned_hashes(path, record) and set(counts.values()) == {1}
    runs_per_cell = Counter(t.split()[1] for t in lines if t.startswith("  ") and "n=" in t)
    assert any("optim.lr=0.002: better at look 1" in line for line in lines)
    assert_counts_are_the_queued_runs(path, outcome.sweep_dir, record, lines)
    text = write_report([outcome.sweep_dir]).read_text()
    assert "## Sequential design" in text and "the verdicts above are the ones the rounds reached" in text
    assert "| optim.lr=0.002 | better | 1 |" in text
    del runs_per_cell


def assert_counts_are_the_queued_runs(path: Path, sweep_dir: Path, record: Any, lines: list[str]) -> None:
    """Progress bar, --status and the closing summary count the runs of the rounds done, not every
    cell x `max` seeds."""
    import optuna

    from segsweep.sweeps.status import sweep_status
    from segsweep.sweeps.study import pending_trials, trials_done

    sweep = load_sweep(path)
    queued = len(sweep.design.runs_through(record.rounds_done))
    assert queued < sweep.design.planned_runs()  # stopped early: the counts must differ
    journal = str(sweep_dir / "journal.log")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    trials = optuna.load_study(study_name=sweep.name, storage=storage).get_trials(deepcopy=False)
    assert trials_done(trials, sweep) == (queued, queued) and pending_trials(trials, sweep) == 0
    status = sweep_status(sweep, journal)
    assert sum(sum(row.counts.values()) for row in status.rows) == queued


def test_a_command_killed_in_a_later_round_resumes_every_cell_once(tmp_path: Path, clean_env: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from segsweep.sweeps import run_sweep

    log, hang = tmp_path / "fits.log", tmp_path / "hang.pid"
    monkeypatch.setenv("ADAPTIVE_LOG", str(log))
    monkeypatch.setenv("ADAPTIVE_HANG", str(hang))
    path = write_adaptive(tmp_path / "resume.yaml")
    results = tmp_path / "r"
    child = multiprocessing.get_context("spawn").Process(target=run_sweep, args=(path,), kwargs=dict(
        results=results, fit_fn=planted_fit))
    child.start()
    wait_for(lambda: hang.exists() and hang.read_text(), "a round-2 trial to start and hang")
    assert int(hang.read_text()) == child.pid  # one worker: the command itself runs the trial
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not (results / "sweeps" / "resume" / "sequential.json").exists()

    outcome = run_sweep(path, results=results, fit_fn=planted_fit, echo=lambda s: None)
    assert outcome.exit_code == 0
    record = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    counts = completed(outcome.sweep_dir, "resume")
    assert set(counts) == planned_hashes(path, record) and set(counts.values()) == {1}
    fits = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert sum(n - 1 for n in fits.values()) == 1  # only the killed trial was trained twice

    before = len(log.read_text().splitlines())
    again = run_sweep(path, results=results, fit_fn=planted_fit, echo=lambda s: None)
    assert again.exit_code == 0 and len(log.read_text().splitlines()) == before
    assert json.loads((again.sweep_dir / "sequential.json").read_text()) == record


def test_a_trials_budget_stops_before_a_round_that_would_exceed_it(tmp_path: Path, clean_env: None) -> None:
    from segsweep.sweeps import run_sweep

    seeds = {"initial": [0, 1, 2], "max": 9, "step": 3, "budget": {"trials": 17}}
    path = write_adaptive(tmp_path / "budget.yaml", seeds=seeds,
                          parameters={"optim.lr": {"values": [0.001, 0.003, 0.004]}})
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lambda s: None)
    record = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    assert outcome.exit_code == 0 and record["rounds_done"] == 1
    assert record["stopped_by"].startswith("budget: the next round would make 18") and "17" in record["stopped_by"]
    assert sum(completed(outcome.sweep_dir, "budget").values()) == 9
    open_ = [c for c in record["claims"] if c["verdict"] == "inconclusive"]  # the budget ended the rounds
    assert open_ and all(c["runs_to_detect"] for c in open_)


def test_implicit_claims_compare_every_arm_with_the_base_experiments_cell(tmp_path: Path) -> None:
    arms = [{}, {"optim.lr": 0.001}, {"optim.lr": 0.001, "train.epochs": 2}]
    sweep = load_sweep(write_adaptive(tmp_path / "lean.yaml", parameters={}, arms=arms))
    assert sweep.design.baseline == "baseline"
    assert [c.pairs for c in sweep.claims] == [(("optim.lr=0.001", "baseline"),),
                                               (("optim.lr=0.001,train.epochs=2", "baseline"),)]
    lines: list[str] = []
    nothing = load_sweep(write_adaptive(tmp_path / "none.yaml", parameters={}, arms=[{"optim.lr": 0.001},
                                                                                     {"optim.lr": 0.002}]))
    assert nothing.claims == () and nothing.design.baseline is None
    from segsweep.sweeps import run_sweep

    outcome = run_sweep(tmp_path / "none.yaml", results=tmp_path / "r", fit_fn=planted_fit, echo=lines.append)
    record = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    assert record["stopped_by"] == "nothing to compare" and record["rounds_done"] == 1
    assert any("nothing to compare (no claims, and no baseline arm" in line for line in lines)
    assert not any("every claim is decided" in line for line in lines)


def test_arms_crossed_with_a_categorical_parameter_settle_their_claims(tmp_path: Path, clean_env: None) -> None:
    """A claim on an arm of a grid crossed with a categorical parameter compares the arm at every
    value of the parameter (averaged), in the rounds and in the report."""
    from segsweep.reports.ablation import write_report
    from segsweep.sweeps import run_sweep

    arms = [{}, {"model.batchnorm": False}]
    claims = [{"id": "bn", "quote": "BatchNorm helps", "arm": {}, "against": {"model.batchnorm": False}}]
    path = write_adaptive(tmp_path / "crossed.yaml", arms=arms, claims=claims,
                          parameters={"optim.lr": {"values": [0.001, 0.003]}})
    sweep = load_sweep(path)
    assert sweep.claims[0].pairs == (("optim.lr=0.001", "model.batchnorm=false,optim.lr=0.001"),
                                     ("optim.lr=0.003", "model.batchnorm=false,optim.lr=0.003"))
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lambda s: None)
    record = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    assert record["claims"][0]["verdict"] == "better" and record["claims"][0]["estimate"] == pytest.approx(0.05, abs=0.01)
    assert "| bn |" in write_report([outcome.sweep_dir]).read_text()


def test_a_diverged_run_counts_by_the_outcome_rule_in_the_rounds_and_the_report(tmp_path: Path, clean_env: None,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from segsweep.analysis import SequentialRecord
    from segsweep.reports.ablation import write_report
    from segsweep.sweeps import run_sweep

    monkeypatch.setenv("ADAPTIVE_DIVERGE", "0.001 1")
    path = write_adaptive(tmp_path / "div.yaml", seeds={"initial": [0, 1, 2], "max": 6, "step": 3})
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lambda s: None)
    record = SequentialRecord.read(outcome.sweep_dir / "sequential.json")
    claim = next(c for c in record.claims if c.id == "optim.lr=0.001")
    # seed 1 of lr 0.001 counts 0 (no checkpoint): the paired contrast falls by 0.7 / (seeds at that look)
    assert claim.estimate == pytest.approx(-0.7 / (3 * claim.look), abs=0.01)
    text = write_report([outcome.sweep_dir]).read_text()
    assert "the verdicts above are the ones the rounds reached" in text and "(1 scored 0)" in text
    row = next(line for line in text.splitlines() if line.startswith("| optim.lr=0.001 |"))
    assert f"| {claim.estimate:+.4f} |" in row  # the report's number is the round's


def test_a_code_change_between_rounds_stops_before_the_next_round(tmp_path: Path, clean_env: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each round's workers import the code anew, so an edit made while round 1 runs would give
    round 2 other code: the driver stops before queuing it, says why, and a rerun goes on."""
    import segsweep.record
    from segsweep.sweeps import run_sweep

    states = iter(["abc123", "abc123+dirty (changes 0123456789ab)"])
    monkeypatch.setattr(segsweep.record, "code_state", lambda: next(states))
    path = write_adaptive(tmp_path / "edited.yaml")
    lines: list[str] = []
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lines.append)
    record = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    assert outcome.exit_code == 1 and record["rounds_done"] == 1
    assert record["stopped_by"].startswith("the code changed after round 1 (abc123 -> abc123+dirty")
    assert sum(completed(outcome.sweep_dir, "edited").values()) == 12
    assert any("not done" in line and "rerun the same command" in line for line in lines)
    assert not any("warning: the code is" in line for line in lines)  # it started clean

    monkeypatch.setattr(segsweep.record, "code_state", lambda: "abc123+dirty (changes 0123456789ab)")
    lines.clear()
    again = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lines.append)
    assert again.exit_code == 0 and json.loads((again.sweep_dir / "sequential.json").read_text())["rounds_done"] > 1
    assert any("warning: the code is abc123+dirty" in line and "clean checkout" in line for line in lines)


def write_fraction(path: Path, **fields: Any) -> Path:
    """A planted 2^(4-1) fraction on the quickstart with one side arm (no BatchNorm, 0.05 lower)."""
    tree: dict[str, Any] = {
        "name": path.stem, "experiment": str(QUICKSTART), "method": "grid",
        "factors": {"optim.lr": [0.003, 0.001], "model.dropout": [0.1, 0.0], "train.epochs": [12, 6],
                    "data.augment.affine_p": [0.5, 0.0]},
        "fraction": {"runs": 8}, "arms": [{"model.batchnorm": False}],
        "rounds": {"initial": 2, "max": 4, "margin": 0.01},
        "claims": [{"id": "lr", "quote": "lr 3e-3 is better", "arm": {}, "against": {"optim.lr": 0.001}},
                   {"id": "dropout", "quote": "dropout does not matter", "arm": {}, "against": {"model.dropout": 0},
                    "expects": "equivalent"},
                   {"id": "bn", "quote": "BatchNorm helps", "arm": {}, "against": {"model.batchnorm": False}}],
        "optuna": {"heartbeat_interval": 1, "grace_period": 2},
    }
    tree.update(fields)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_killing_a_worker_in_round_2_of_a_fraction_resumes_every_run_once_with_the_same_verdicts(
        tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from segsweep.sweeps import run_sweep

    path = write_fraction(tmp_path / "frac.yaml")
    sweep = load_sweep(path)
    assert sweep.design.kind == "fraction" and len(sweep.design.runs(1)) == 9
    straight = run_sweep(path, results=tmp_path / "straight", fit_fn=planted_fit, echo=lambda s: None)
    want = json.loads((straight.sweep_dir / "sequential.json").read_text())

    log, hang = tmp_path / "fits.log", tmp_path / "hang.pid"
    monkeypatch.setenv("ADAPTIVE_LOG", str(log))
    monkeypatch.setenv("ADAPTIVE_HANG", str(hang))  # the first trial with seed >= 3 hangs: round 1 has seeds 0-8
    monkeypatch.setenv("ADAPTIVE_HANG_MIN_SEED", "9")
    results = tmp_path / "r"
    child = multiprocessing.get_context("spawn").Process(target=run_sweep, args=(path,), kwargs=dict(
        results=results, fit_fn=planted_fit, workers=2))
    child.start()
    wait_for(lambda: hang.exists() and hang.read_text(), "a round-2 trial to start and hang")
    os.kill(int(hang.read_text()), signal.SIGKILL)  # the worker, in the middle of round 2
    child.join()
    monkeypatch.delenv("ADAPTIVE_HANG")
    outcome = run_sweep(path, results=results, fit_fn=planted_fit, echo=lambda s: None)
    assert outcome.exit_code == 0
    got = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    assert got["claims"] == want["claims"] and got["rounds_done"] == want["rounds_done"]
    counts = completed(outcome.sweep_dir, "frac")
    assert set(counts) == planned_hashes(path, got) and set(counts.values()) == {1}


def test_arms_that_train_identical_networks_are_refused_before_any_run(tmp_path: Path) -> None:
    arms = [{}, {"model.init": "he_normal"}, {"model.init": "paper"}]
    with pytest.raises(SpecError) as info:
        load_sweep(write_adaptive(tmp_path / "same.yaml", parameters={}, arms=arms))
    message = str(info.value)
    assert "'model.init=he_normal' and 'model.init=paper' train identical networks" in message
    assert "\n" not in message
    he = tmp_path / "he.yaml"
    he.write_text(f"extends: {QUICKSTART}\nmodel:\n  init: he_normal\n")
    with pytest.raises(SpecError, match="train identical networks: model.init he_normal and paper build"):
        load_sweep(write_fraction(tmp_path / "f.yaml", experiment=str(he), claims=None, arms=None, fraction=None,
                                  factors={"optim.lr": [0.003, 0.001], "model.init": ["he_normal", "paper"]}))
    # schemes that differ are fine, and so are the study's two
    load_sweep(write_adaptive(tmp_path / "ok.yaml", parameters={},
                              arms=[{}, {"model.init": "he_fan_out"}, {"model.init": "paper_fan_in"}]))


def test_plan_prints_the_design_runs_power_and_time_without_training(tmp_path: Path, cli) -> None:
    path = write_fraction(tmp_path / "plan.yaml")
    out = cli("sweep", str(path), "--plan", "--sd", "0.01", "--run-s", "60", "--workers", "2",
              "--results", str(tmp_path / "r"))
    assert out.code == 0, out.err
    assert "2^(4-1) fraction, generators D=ABC" in out.out and "9 runs a round" in out.out
    assert "alias chains: AB = CD; AC = BD; AD = BC" in out.out
    assert "lr: a true effect of 0.01 found with probability" in out.out
    assert "dropout: shown equivalent with probability" in out.out
    assert "time at 60 s a run on 2 worker(s)" in out.out
    assert not (tmp_path / "r").exists()
    bad = cli("sweep", str(path), "--plan", "--run-s", "60", "--results", str(tmp_path / "r"))
    assert bad.code == 2 and "give --sd" in bad.err

def test_code_state_changes_with_every_edit_of_a_tracked_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    import segsweep.record
    from segsweep.record import code_state

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "train.py").write_text("lr = 1e-3\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "one")
    monkeypatch.setattr(segsweep.record, "_REPO", tmp_path)
    clean = code_state()
    assert clean == git("rev-parse", "HEAD")
    (tmp_path / "notes.txt").write_text("untracked: not code that runs\n")
    assert code_state() == clean
    (tmp_path / "train.py").write_text("lr = 1e-4\n")
    first = code_state()
    assert first.startswith(f"{clean}+dirty (changes ") and first != clean
    (tmp_path / "train.py").write_text("lr = 3e-4\n")
    assert code_state() not in (clean, first)


def test_a_fraction_report_draws_validation_curves_by_level(tmp_path: Path, clean_env: None) -> None:
    """A fraction's runs pair with nothing one factor apart, so its curves are by level of each
    factor (and side arms against their recipe runs), in one figure linked from its section."""
    import cv2

    from segsweep.reports.ablation import write_report
    from segsweep.sweeps import run_sweep

    path = write_fraction(tmp_path / "curves.yaml", rounds={"initial": 2, "max": 2, "margin": 0.01})
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lambda s: None)
    for summary in outcome.sweep_dir.rglob("summary.json"):  # planted_fit writes no curve: give each run one
        dice = json.loads(summary.read_text())["test/dice"]
        rows = "".join(f"{e},{dice * e / 3:.4f}\n" for e in (1, 2, 3))
        (summary.parent / "metrics.csv").write_text("epoch,val/dice\n" + rows)
    text = write_report([outcome.sweep_dir], tmp_path / "out").read_text()
    assert "![curves by level](curves_by_level.png)" in text
    image = cv2.imread(str(tmp_path / "out" / "curves_by_level.png"))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 600
    assert "no curves" not in text and "## Validation curves" not in text


def test_a_saturated_single_round_fraction_still_reports(tmp_path: Path, clean_env: None) -> None:
    """One round of a 2^(4-1) fraction leaves no degrees of freedom for the error: the report says
    so instead of failing (the look's simulation once broke on the claims it could not test)."""
    from segsweep.reports.ablation import write_report
    from segsweep.sweeps import run_sweep

    path = write_fraction(tmp_path / "one.yaml", rounds={"initial": 1, "max": 1, "margin": 0.01})
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lambda s: None)
    text = write_report([outcome.sweep_dir], tmp_path / "out").read_text()
    assert "## The fraction" in text and "0 of 3 trained claims conclusive" in text
