"""Adaptive seeds end to end: a planted-effect grid with `seeds: {..., until: conclusive}` runs in
rounds, adds seeds only where a comparison is open, and survives a killed command."""
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
# optim.lr level -> (planted effect on test Dice, seed noise sd). The baseline level is 0.003, the
# quickstart's own lr (the base experiment's value, as the report picks it), not 0.001, the first
# of four levels every cell shares equally.
PLANTED = {0.001: (0.0, 1e-5), 0.002: (0.2, 1e-5), 0.003: (0.0, 1e-5), 0.004: (0.002, 0.02)}


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
    if hang and spec.seed >= 3:
        try:
            fd = os.open(hang, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            time.sleep(300)
    effect, sd = PLANTED[round(spec.optim.lr, 6)]
    noise = np.random.default_rng([spec.seed, int(round(spec.optim.lr * 1e6))]).normal(0.0, sd)
    dice = 0.7 + effect + float(noise)
    if on_epoch_end is not None:
        on_epoch_end(1, {"val/dice": dice, "val/loss": 1 - dice})
    write_record(spec, Path(run_dir), dice)
    metrics = {"val/dice": dice, "test/dice": dice, "epochs_run": 1, "wall_s": 0.0}
    return RunResult("completed", Path(run_dir), 1, metrics)


def write_record(spec: Any, run_dir: Path, dice: float) -> None:
    """config.yaml and summary.json as the trainer writes them, so the ablation report can read the sweep."""
    from segsweep.spec import spec_to_dict

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    (run_dir / "summary.json").write_text(json.dumps({
        "status": "completed", "name": spec.name, "seed": spec.seed, "best_epoch": 1, "val/dice": dice,
        "test/dice": dice, "test/dice_global": dice, "epochs_run": 1, "wall_s": 0.0, "run_dir": str(run_dir),
    }))


def write_adaptive(path: Path, **fields: Any) -> Path:
    tree: dict[str, Any] = {
        "name": path.stem, "experiment": str(QUICKSTART), "method": "grid",
        "parameters": {"optim.lr": {"values": list(PLANTED)}},
        "seeds": {"initial": [0, 1, 2], "max": 9, "step": 3, "until": "conclusive", "margin": 0.005, "alpha": 0.05},
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


def planned_hashes(path: Path, record: dict) -> set[str]:
    sweep = load_sweep(path)
    cells = {c.label: c for c in sweep.cells}
    return {cell_config_hash(sweep, cells[label], s)[0] for label, seeds in record["seeds"].items() for s in seeds}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ADAPTIVE_LOG", "ADAPTIVE_HANG"):
        monkeypatch.delenv(var, raising=False)


def test_schedule_is_validated_with_one_line_naming_the_key(tmp_path: Path) -> None:
    cases = {
        "seeds.maxx": {"initial": [0, 1], "maxx": 4},
        "seeds.max": {"initial": [0, 1, 2], "max": 2},
        "seeds.initial": {"initial": [0, 0], "max": 4},
        "seeds.until": {"initial": [0, 1], "max": 4, "until": "forever"},
    }
    for key, seeds in cases.items():
        with pytest.raises(SpecError) as info:
            load_sweep(write_adaptive(tmp_path / "bad.yaml", seeds=seeds))
        assert f"bad.yaml: {key}:" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match="seeds: a seed schedule adds seeds to grid cells"):
        load_sweep(write_adaptive(tmp_path / "bad.yaml", method="random", run_cap=2,
                                  parameters={"optim.lr": {"min": 0.001, "max": 0.01}}))
    sweep = load_sweep(write_adaptive(tmp_path / "ok.yaml"))
    assert sweep.seeds == tuple(range(9)) and sweep.spec.seeds.looks() == (3, 6, 9)


def test_planted_effects_stop_where_they_should(tmp_path: Path, clean_env: None) -> None:
    from segsweep.sweeps import run_sweep

    path = write_adaptive(tmp_path / "planted.yaml")
    lines: list[str] = []
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lines.append)
    assert outcome.exit_code == 0 and outcome.pending == 0
    record = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    verdicts = {c["comparison"]: c for c in record["comparisons"]}
    assert set(verdicts) == {f"optim.lr: {lv} vs 0.003" for lv in ("0.001", "0.002", "0.004")}
    null, large, noisy = (verdicts[f"optim.lr: {lv} vs 0.003"] for lv in ("0.001", "0.002", "0.004"))
    assert large["verdict"] == "better" and large["seeds"] == 3 and large["looks"] == [3]
    assert null["verdict"] == "equivalent"
    assert noisy["verdict"] == "inconclusive" and noisy["seeds"] == 9 and noisy["looks"] == [3, 6, 9]
    assert noisy["seeds_to_detect"] is not None and noisy["seeds_to_detect"] > 9
    seeds = record["seeds"]
    assert seeds["optim.lr=0.002"] == [0, 1, 2]  # decided at the initial seeds: never grown
    assert seeds["optim.lr=0.004"] == seeds["optim.lr=0.003"] == list(range(9))
    assert record["alpha_per_comparison"] == pytest.approx(0.05 / 3)
    counts = completed(outcome.sweep_dir, "planted")
    assert set(counts) == planned_hashes(path, record) and set(counts.values()) == {1}
    assert any("optim.lr: 0.004 vs 0.003: inconclusive" in line and "would detect a 0.005 difference" in line
               for line in lines)
    assert_counts_are_the_queued_seeds(path, outcome.sweep_dir, record, lines)

    from segsweep.reports.ablation import write_report

    text = write_report([outcome.sweep_dir]).read_text()
    section = text.split("## Sequential design (adaptive seeds)")[1]
    assert "O'Brien-Fleming" in section and "0.01667 each" in section
    assert "| optim.lr: 0.002 vs 0.003 | 3 | better | 1 |" in section
    assert "| optim.lr: 0.004 vs 0.003 | 3, 6, 9 | inconclusive | 3 |" in section
    assert f"{noisy['seeds_to_detect']} / {noisy['seeds_for_equivalence']} |" in section


def assert_counts_are_the_queued_seeds(path: Path, sweep_dir: Path, record: dict, lines: list[str]) -> None:
    """Progress bar, --status and the closing summary count the cells x seeds the rounds queued
    (sequential.json's seeds), not every cell x `max` seeds."""
    import optuna

    from segsweep.sweeps.launch_status import sweep_status
    from segsweep.sweeps.study import pending_trials, trials_done

    sweep = load_sweep(path)
    queued = sum(len(s) for s in record["seeds"].values())
    assert queued < len(sweep.cells) * sweep.spec.seeds.max  # some arms stopped early: the counts must differ
    journal = str(sweep_dir / "journal.log")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    trials = optuna.load_study(study_name=sweep.name, storage=storage).get_trials(deepcopy=False)
    assert trials_done(trials, sweep) == (queued, queued) and pending_trials(trials, sweep) == 0
    status = sweep_status(sweep, journal)
    assert sum(sum(row.counts.values()) for row in status.rows) == queued
    assert {row.label: row.counts["done"] for row in status.rows} == {k: len(v) for k, v in record["seeds"].items()}
    for label, seeds in record["seeds"].items():
        assert any(line.split()[1:2] == [label] and f"n={len(seeds)}/{len(seeds)}" in line for line in lines)


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
    path = write_adaptive(tmp_path / "budget.yaml", seeds=seeds)
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lambda s: None)
    record = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    assert outcome.exit_code == 0 and record["rounds"] == 1
    assert record["stopped_by"].startswith("budget: the next round would make") and "17" in record["stopped_by"]
    assert sum(completed(outcome.sweep_dir, "budget").values()) == 12
    open_ = [c for c in record["comparisons"] if c["before_max"]]
    assert open_ and all(c["verdict"] == "inconclusive" and c["seeds"] == 3 and c["seeds_to_detect"] for c in open_)


def test_comparisons_take_the_baseline_the_report_takes(tmp_path: Path) -> None:
    """A base value shared by fewer cells than another level: the adaptive comparisons and the
    ablation report both compare against the base experiment's value (lr 0.003), not the level
    most cells have (0.001)."""
    from segsweep.reports.design import group_arms, matched_pairs, same_level
    from segsweep.reports.records import base_experiment, load_runs, read_sweep_spec
    from segsweep.sweeps.adaptive import comparisons
    from segsweep.sweeps.cells import base_values

    arms = [{}, {"optim.lr": 0.001}, {"optim.lr": 0.001, "train.epochs": 2}]
    sweep = load_sweep(write_adaptive(tmp_path / "lean.yaml", parameters={}, arms=arms))
    sweep_dir = tmp_path / "lean"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep.resolved("journal.log"), sort_keys=False))
    for i, cell in enumerate(sweep.cells):
        for seed in (0, 1, 2):
            spec = sweep.trial_spec(cell.overrides, seed, f"c{i}-s{seed}", cell.label)
            write_record(spec, sweep_dir / "runs" / f"c{i}-s{seed}", 0.7 + 0.01 * seed)
    study = group_arms(load_runs([sweep_dir]), None, base_experiment(read_sweep_spec(sweep_dir)))
    lr = study.factor("optim.lr")
    assert lr.baseline == pytest.approx(0.003) and lr.chosen_by == "base experiment"  # the rules differ here

    found = comparisons(sweep)
    assert [c.label for c in found] == ["optim.lr: 0.001 vs 0.003", "train.epochs: 2 vs 12"]
    assert {(c.factor, c.level, c.baseline) for c in found} == {
        (f.key, level, f.baseline) for f in study.factors for level in f.levels if level != f.baseline}
    base = base_values(sweep)

    def cell_of(arm: Any) -> str:
        return next(c.label for c in sweep.cells
                    if all(same_level(c.overrides.get(k, base[k]), v) for k, v in arm.levels.items()))

    for comp in found:  # and the same cells pair up
        assert list(comp.pairs) == [(cell_of(t), cell_of(c)) for t, c in matched_pairs(study, comp.factor, comp.level)]
    assert [c.pairs for c in found] == [(("optim.lr=0.001", "baseline"),),
                                        (("optim.lr=0.001,train.epochs=2", "optim.lr=0.001"),)]


def test_a_sweep_with_claims_adds_seeds_for_its_open_claims_only(tmp_path: Path, clean_env: None) -> None:
    """With `claims:`, the rounds settle the claims (not every factor level): a claim decided at
    the initial seeds stops its arms, an open one between two non-baseline arms grows those two to
    `max`; a target-changing claim compares nothing and needs no --allow-mixed-data in the report,
    whose claims table carries the sequential verdicts."""
    from segsweep.reports.ablation import write_report
    from segsweep.sweeps import run_sweep
    from test_claims import claims_table

    arms = [{}, {"optim.lr": 0.002}, {"optim.lr": 0.004}, {"optim.lr": 0.001}, {"data.mask": "boundary"}]
    claims = [
        {"id": "large", "quote": "lr 2e-3 is better", "arm": {"optim.lr": 0.002}, "against": {}},
        {"id": "noisy", "quote": "lr 4e-3 beats 1e-3", "arm": {"optim.lr": 0.004}, "against": {"optim.lr": 0.001}},
        {"id": "edges", "quote": "edges", "arm": {"data.mask": "boundary"}, "against": {}, "target_changes": True},
    ]
    path = write_adaptive(tmp_path / "claimed.yaml", parameters={}, arms=arms, claims=claims)
    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lambda line: None)
    assert outcome.exit_code == 0 and outcome.pending == 0
    record = json.loads((outcome.sweep_dir / "sequential.json").read_text())
    verdicts = {c["comparison"]: c for c in record["comparisons"]}
    assert list(verdicts) == ["claim large: optim.lr=0.002 vs baseline", "claim noisy: optim.lr=0.004 vs optim.lr=0.001"]
    assert record["comparisons_in_family"] == 2 and record["alpha_per_comparison"] == pytest.approx(0.025)
    large, noisy = verdicts.values()
    assert large["verdict"] == "better" and large["looks"] == [3]
    assert noisy["verdict"] == "inconclusive" and noisy["looks"] == [3, 6, 9]
    assert record["seeds"] == {"baseline": [0, 1, 2], "optim.lr=0.002": [0, 1, 2], "optim.lr=0.004": list(range(9)),
                               "optim.lr=0.001": list(range(9)), "data.mask=boundary": [0, 1, 2]}

    text = write_report([outcome.sweep_dir]).read_text()  # default options: the declared target change is allowed
    assert "--allow-mixed-data" not in text and "the verdicts are the sequential design's" in text
    rows = claims_table(text)
    assert rows["large"][7] == "better" and rows["large"][6] == "3"
    assert rows["noisy"][7] == "inconclusive" and rows["noisy"][6] == "9"
    assert rows["noisy"][9] == (f"{noisy['seeds_to_detect']} to detect ±0.005; "
                                f"{noisy['seeds_for_equivalence']} to show equivalence")
    assert "data.mask: not compared, the target changes" in text


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
    assert outcome.exit_code == 1 and record["rounds"] == 1
    assert record["stopped_by"].startswith("the code changed after round 1 (abc123 -> abc123+dirty")
    assert sum(completed(outcome.sweep_dir, "edited").values()) == 12
    assert any("not done" in line and "rerun the same command" in line for line in lines)
    assert not any("warning: the code is" in line for line in lines)  # it started clean

    monkeypatch.setattr(segsweep.record, "code_state", lambda: "abc123+dirty (changes 0123456789ab)")
    lines.clear()
    again = run_sweep(path, results=tmp_path / "r", fit_fn=planted_fit, echo=lines.append)
    assert again.exit_code == 0 and json.loads((again.sweep_dir / "sequential.json").read_text())["rounds"] > 1
    assert any("warning: the code is abc123+dirty" in line and "clean checkout" in line for line in lines)


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
