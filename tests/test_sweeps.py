"""Sweeps: spec validation, W&B translation, exactly-once grids across workers and kills, pruning.

Claim/enqueue/retry logic runs with `fake_fit` (fast, deterministic, picklable for spawned
workers); the quickstart grid and the pruned TPE study run the real `fit` on tiny synthetic data.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
import yaml

from segsweep.errors import SpecError, SweepError
from segsweep.spec import config_hash, spec_keys
from segsweep.sweeps.cells import cell_config_hash
from segsweep.sweeps.spec import load_sweep
from segsweep.sweeps.wandb_engine import to_wandb_config, wandb_overrides

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
COMMITTED = sorted((REPO / "sweeps").glob("*.yaml"))


# --------------------------------------------------------------------------- helpers


def hang_once_if_asked() -> None:
    """With SWEEP_FAKE_HANG set, the one call (of all processes) that creates that file writes
    its pid there and hangs until the test SIGKILLs it, mid-trial."""
    hang = os.environ.get("SWEEP_FAKE_HANG")
    if not hang:
        return
    try:
        fd = os.open(hang, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    time.sleep(300)


def fake_fit(spec: Any, run_dir: Any, tracker: Any = None, on_epoch_end: Any = None) -> Any:
    """A fast stand-in for core.trainer.fit with the same contract (module level: picklable).

    Environment knobs (inherited by spawned workers): SWEEP_FAKE_LOG appends "config_hash pid"
    per call; SWEEP_FAKE_HANG: the first call to create that file writes its pid and hangs;
    SWEEP_FAKE_FAIL: every call raises. optim.lr >= 0.5 diverges.
    """
    from segsweep.train import RunResult, StopTraining

    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if os.environ.get("SWEEP_FAKE_LOG"):
        with open(os.environ["SWEEP_FAKE_LOG"], "a") as fh:
            fh.write(f"{config_hash(spec)} {os.getpid()}\n")
    hang_once_if_asked()
    if os.environ.get("SWEEP_FAKE_FAIL"):
        raise RuntimeError("injected failure")
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"b" * 64)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"l" * 64)
    if spec.optim.lr >= 0.5:
        return RunResult("diverged", run_dir, 0, {"val/dice": float("nan"), "epochs_run": 0, "error": "non-finite loss"})
    score = 0.5 + 0.1 * (spec.model.init == "he_normal") + 0.01 * spec.seed
    status, epochs = "completed", 0
    for epoch in range(1, spec.train.epochs + 1):
        epochs = epoch
        try:
            if on_epoch_end is not None:
                on_epoch_end(epoch, {"val/dice": score * epoch / spec.train.epochs, "val/loss": 1.0 / epoch})
        except StopTraining as stop:
            status = stop.status
            break
    best = score * epochs / spec.train.epochs
    return RunResult(status, run_dir, epochs, {"val/dice": best, "test/dice": best - 0.01, "epochs_run": epochs,
                                                "wall_s": 0.01})


def write_sweep(path: Path, **fields: Any) -> Path:
    """A sweep file on the quickstart experiment (absolute path), `fields` over a 2x2 grid."""
    tree: dict[str, Any] = {
        "name": path.stem, "experiment": str(QUICKSTART), "method": "grid",
        "parameters": {"model.init": {"values": ["pytorch", "he_normal"]}, "model.batchnorm": {"values": [True, False]}},
        "seeds": [0, 1], "optuna": {"heartbeat_interval": 1, "grace_period": 2},
    }
    tree.update(fields)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def read_trials(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def open_like_dashboard(journal: Path) -> Any:
    """What `optuna-dashboard journal.log` does: a JournalStorage over the file, studies by name."""
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return storage


def complete_hashes(storage: Any, name: str) -> Counter:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return Counter(t.user_attrs["config_hash"] for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE)


def expected_hashes(sweep_path: Path, overrides: Any = ()) -> set[str]:
    sweep = load_sweep(sweep_path, overrides)
    return {cell_config_hash(sweep, cell, seed)[0] for cell in sweep.cells for seed in sweep.seeds}


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SWEEP_FAKE_LOG", "SWEEP_FAKE_HANG", "SWEEP_FAKE_FAIL"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------- committed specs, W&B


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_sweep_loads_and_translates_to_wandb(path: Path) -> None:
    sweep = load_sweep(path)
    if sweep.rounds:  # analysed between rounds: only the Optuna engine drives it, and W&B says so
        with pytest.raises(SweepError, match="runs in rounds .* use --engine optuna"):
            to_wandb_config(sweep)
        return
    config = to_wandb_config(sweep)
    assert set(config) <= {"name", "method", "metric", "parameters", "description", "run_cap", "early_terminate"}
    assert config["method"] == sweep.method and config["metric"] == {"name": "val/dice", "goal": "maximize"}
    keys = spec_keys()
    assert all(k in keys or k in ("arm", "seed") for k in config["parameters"])
    if sweep.method != "grid":
        assert config["run_cap"] == sweep.spec.run_cap
        return
    # W&B's grid over `values` must enumerate exactly our cells x seeds, each to the same config.
    grid = {k: p["values"] for k, p in config["parameters"].items() if "values" in p}
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    assert len(combos) == len(sweep.cells) * len(sweep.seeds)
    translated = set()
    for combo in combos:
        overrides, seed = wandb_overrides(sweep, combo)
        translated.add(config_hash(sweep.trial_spec(overrides, seed, "x", "y")))
    assert translated == {cell_config_hash(sweep, c, s)[0] for c in sweep.cells for s in sweep.seeds}


def test_tpe_spec_maps_to_optuna_distributions_and_hyperband() -> None:
    import optuna

    from segsweep.sweeps.study import make_pruner, make_sampler

    sweep = load_sweep(REPO / "sweeps" / "lr_wd_tpe.yaml")
    assert isinstance(make_sampler(sweep), optuna.samplers.TPESampler)
    pruner = make_pruner(sweep)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (2, sweep.base.train.epochs, 3)
    assert sweep.base.loss.bce == 1.0 and set(sweep.searched) == {"optim.lr", "optim.weight_decay", "loss.dice"}


def test_wandb_engine_without_network_fails_fast_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_API_KEY="x" * 40)  # credentials present, network absent
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), str(REPO / "sweeps" / "quickstart_grid.yaml"),
                           "--engine", "wandb", "--results", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --engine wandb") and "Optuna engine" in lines[0]
    assert not (tmp_path / "results").exists()


def test_wandb_engine_without_credentials_names_them(cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    result = cli("sweep.py", REPO / "sweeps" / "seed_ablations.yaml", "--engine", "wandb")
    assert result.code == 2 and "credentials" in result.err and "Optuna engine" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_wandb_engine_runs_each_agent_run_in_process_through_the_same_overrides(
        tmp_path: Path, quiet: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in `wandb` whose agent enumerates the grid as W&B's would, writing each run's
    parameters where the real agent does (WANDB_SWEEP_PARAM_PATH) before calling the function."""
    import types

    from segsweep.sweeps import run_sweep

    log = tmp_path / "fits.log"
    monkeypatch.setenv("SWEEP_FAKE_LOG", str(log))
    created: dict[str, Any] = {}

    def sweep(config: dict, entity: Any = None, project: Any = None) -> str:
        created.update(config=config, project=project)
        return "sweep123"

    def agent(sweep_id: str, function: Any, entity: Any = None, project: Any = None, count: Any = None) -> None:
        params = created["config"]["parameters"]
        grid = {k: p["values"] for k, p in params.items() if "values" in p}
        for values in itertools.product(*grid.values()):
            param_file = tmp_path / f"config-{len(log.read_text().splitlines()) if log.exists() else 0}.yaml"
            chosen = {**{k: p["value"] for k, p in params.items() if "value" in p}, **dict(zip(grid, values))}
            param_file.write_text(yaml.safe_dump({"wandb_version": 1, **{k: {"value": v} for k, v in chosen.items()}}))
            monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(param_file))
            function()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(sweep=sweep, agent=agent))
    monkeypatch.setattr("segsweep.sweeps.wandb_engine.check_wandb_available", lambda timeout_s=5.0: "https://api.wandb.ai")
    path = write_sweep(tmp_path / "wb.yaml", parameters={"train.epochs": {"value": 2}},
                       arms=[{}, {"model.init": "he_normal"}, {"model.dropout": 0.3}])
    outcome = run_sweep(path, engine="wandb", results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    assert created["config"] == to_wandb_config(load_sweep(path)) and created["project"] == "segsweep"
    assert len(outcome.rows) == 6 and {r["status"] for r in outcome.rows} == {"completed"}
    assert Counter(line.split()[0] for line in log.read_text().splitlines()) == Counter(expected_hashes(path))
    assert all(not (Path(r["run_dir"]) / "checkpoints" / "last.pt").exists() for r in outcome.rows)


# --------------------------------------------------------------------------- bad input


BAD_SPECS = [
    ("unknown-parameter", {"parameters": {"model.dropuot": {"values": [0.0, 0.1]}}}, "did you mean 'model.dropout'"),
    ("invalid-value", {"parameters": {"optim.lr": {"values": [1e-3, -1.0]}}}, "parameters.optim.lr.values[1] = -1.0"),
    ("typo-top-key", {"paramters": {}}, "did you mean 'parameters'"),
    ("typo-parameter-field", {"parameters": {"optim.lr": {"vaules": [0.1]}}}, "did you mean 'values'"),
    ("unsupported-distribution", {"method": "random", "run_cap": 2, "parameters": {
        "optim.lr": {"min": 0.001, "max": 0.1, "distribution": "normal"}}}, "W&B-only"),
    ("range-in-grid", {"parameters": {"optim.lr": {"min": 0.001, "max": 0.1}}}, "parameters.optim.lr: grid enumerates"),
    ("random-without-run-cap", {"method": "random", "parameters": {"optim.lr": {"values": [0.1, 0.01]}}}, "run_cap"),
    ("float-range-on-int-key", {"method": "random", "run_cap": 2, "seeds": [0], "parameters": {
        "train.epochs": {"min": 1.0, "max": 4.0}}}, "parameters.train.epochs: a float range on an integer key"),
    ("seed-as-parameter", {"parameters": {"seed": {"values": [0, 1]}}}, "use `seeds: [...]`"),
    ("repeated-seeds", {"seeds": [0, 0]}, "seeds"),
    ("arm-equal-to-baseline", {"parameters": {}, "arms": [{}, {"model.init": "pytorch"}]}, "same configuration"),
    ("bad-metric", {"metric": {"name": "val/dise"}}, "metric.name"),
    ("missing-experiment", {"experiment": "nowhere.yaml"}, "experiment: 'nowhere.yaml' not found"),
]


@pytest.mark.parametrize("case, fields, expected", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_sweep_spec_exits_2_with_one_line(cli: Any, tmp_path: Path, case: str, fields: dict, expected: str) -> None:
    path = write_sweep(tmp_path / "bad.yaml", **fields)
    result = cli("sweep.py", path, "--results", tmp_path / "results")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], lines
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args, expected", [
    (["--storage", "sqlite:////nonexistent/dir/study.db"], "cannot open"),
    (["--storage", "postgresql://me:secret@127.0.0.1:1/db"], "me:***@127.0.0.1"),
    (["data.name=oxford_pet", "data.root=/nonexistent/pets"], "data root not found"),
    (["--workers", "0"], "--workers 0"),
    (["--sweep-id", "abc"], "--sweep-id joins a W&B sweep"),
], ids=["unreachable-sqlite", "unreachable-postgres", "missing-data", "zero-workers", "sweep-id-without-wandb"])
def test_bad_command_line_exits_2_and_leaves_nothing(cli: Any, tmp_path: Path, args: list, expected: str) -> None:
    result = cli("sweep.py", REPO / "sweeps" / "quickstart_grid.yaml", "--results", tmp_path / "results", *args)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and expected in result.err, result.err
    assert "secret" not in result.err and not (tmp_path / "results").exists()


def test_override_of_a_varied_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="model.init is varied by the sweep"):
        load_sweep(write_sweep(tmp_path / "s.yaml"), ["model.init=paper"])


def test_sqlite_with_several_workers_is_refused(cli: Any, tmp_path: Path) -> None:
    result = cli("sweep.py", REPO / "sweeps" / "quickstart_grid.yaml", "--workers", "2",
                 "--storage", f"sqlite:///{tmp_path}/s.db", "--results", tmp_path / "results")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "database is locked" in result.err and "postgresql://" in result.err and "journal" in result.err
    assert not (tmp_path / "results").exists() and not (tmp_path / "s.db").exists()


# --------------------------------------------------------------------------- exactly once


def test_claim_of_a_waiting_trial_succeeds_for_one_storage_client_only(tmp_path: Path) -> None:
    import optuna

    from segsweep.sweeps.storage import open_storage

    sweep = load_sweep(write_sweep(tmp_path / "s.yaml"))
    a, b = (open_storage(str(tmp_path / "j.log"), sweep.spec.optuna) for _ in range(2))  # two "processes"
    study = optuna.create_study(study_name="s", storage=a)
    study.enqueue_trial({"x": 1})
    trial_id = a.get_all_trials(0)[0]._trial_id
    claims = [a.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING),
              b.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)]
    assert claims == [True, False]


def test_optuna_internals_behind_storage_work_on_the_supported_versions(tmp_path: Path) -> None:
    """sweeps/storage.py is the one module touching Optuna's private API: the installed Optuna is
    one that pyproject allows, and every function there that touches it works on it."""
    import tomllib

    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState
    from packaging.requirements import Requirement

    from segsweep.sweeps import storage as st

    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    (declared,) = [d for d in deps if d.name == "optuna"]
    assert declared.specifier.contains(optuna.__version__, prereleases=True), (optuna.__version__, str(declared))

    sweep = load_sweep(write_sweep(tmp_path / "s.yaml"))  # heartbeat_interval 1 s
    journal = st.open_storage(str(tmp_path / "j.log"), sweep.spec.optuna)
    assert isinstance(journal, st.HeartbeatJournalStorage) and st.heartbeat_interval(journal) == 1
    study = optuna.create_study(study_name="s", storage=journal)
    study_id = journal.get_study_id_from_name("s")
    study.enqueue_trial({"x": 1})
    trial = st.claim_waiting(study, journal, study_id)
    assert trial is not None and st.claim_waiting(study, journal, study_id) is None
    frozen = journal.get_trial(st.trial_id(trial))
    assert frozen.number == trial.number and frozen.state == TrialState.RUNNING
    assert st.trial_id(frozen) == st.trial_id(trial)
    with st.Heartbeat(journal, st.trial_id(trial)):
        pass
    assert st.HEARTBEAT_ATTR in journal.get_trial(st.trial_id(trial)).system_attrs
    journal.grace_period = -1  # every running trial is stale now: Optuna must call our hook, then retry it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert [st.is_retry(t) for t in trials] == [False, True]

    rdb = st.open_storage(f"sqlite:///{tmp_path}/s.db", sweep.spec.optuna)  # Optuna's cache around an RDB
    assert isinstance(rdb, optuna.storages.BaseStorage) and st.heartbeat_interval(rdb) == 1


def test_sweep_engines_are_found_by_name(cli: Any, tmp_path: Path) -> None:
    from segsweep.cli import build_parser
    from segsweep.sweeps import SWEEP_ENGINES, SweepOutcome, run_sweep

    assert SWEEP_ENGINES.names() == ["optuna", "wandb"]
    _, subparsers = build_parser()
    (engine,) = [a for a in subparsers["sweep"]._actions if a.dest == "engine"]
    assert list(engine.choices) == SWEEP_ENGINES.names()
    path = write_sweep(tmp_path / "s.yaml")
    with pytest.raises(SweepError, match=r"^--engine nope: expected optuna or wandb$"):
        run_sweep(path, engine="nope")

    # A new engine is one registration: the command offers it and run_sweep hands it the sweep.
    seen: list[Any] = []

    def toy(sweep: Any, **options: Any) -> Any:
        seen.append((sweep.name, sorted(options)))
        return SweepOutcome(sweep_dir=tmp_path, rows=[], pending=0, exit_code=0)

    with SWEEP_ENGINES.registered("toy", toy):
        result = cli("sweep.py", path, "--engine", "toy", "--results", tmp_path / "results")
    assert result.code == 0, result.err
    assert seen == [("s", ["echo", "fit_fn", "results", "storage", "sweep_id", "workers"])]
    assert "toy" not in SWEEP_ENGINES


def test_a_cell_queued_twice_runs_once(tmp_path: Path, quiet: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from segsweep.sweeps import run_sweep
    from segsweep.sweeps.storage import open_storage
    from segsweep.sweeps.study import enqueue_grid, open_study

    log = tmp_path / "fits.log"
    monkeypatch.setenv("SWEEP_FAKE_LOG", str(log))
    path = write_sweep(tmp_path / "twice.yaml", seeds=[0])
    sweep = load_sweep(path)
    storage = open_storage(str(tmp_path / "results" / "sweeps" / "twice" / "journal.log"), sweep.spec.optuna)
    study = open_study(sweep, storage)
    assert enqueue_grid(study, sweep) == 4
    # A second driver that read the study before the first enqueued: queues every cell again.
    for trial in list(study.get_trials()):
        study.enqueue_trial({**trial.system_attrs["fixed_params"]}, user_attrs=dict(trial.user_attrs))
    outcome = run_sweep(path, results=tmp_path / "results", fit_fn=fake_fit, echo=lambda s: None)
    rows = read_trials(outcome.sweep_dir)
    assert Counter(r["status"] for r in rows) == {"completed": 4, "duplicate": 4}
    assert sorted(r["number"] for r in rows if r["status"] == "duplicate") == ["4", "5", "6", "7"]
    fits = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert set(fits.values()) == {1} and set(fits) == expected_hashes(path)
    assert outcome.exit_code == 0


def test_killed_worker_trial_is_retried_and_every_cell_completes_once(tmp_path: Path, quiet: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL a worker mid-trial: the surviving worker retries it after the grace period; then a
    driver killed mid-trial is rerun; every cell x seed ends COMPLETE exactly once."""
    from segsweep.sweeps import run_sweep

    log, hang = tmp_path / "fits.log", tmp_path / "hang.pid"
    monkeypatch.setenv("SWEEP_FAKE_LOG", str(log))
    monkeypatch.setenv("SWEEP_FAKE_HANG", str(hang))
    path = write_sweep(tmp_path / "kill.yaml")
    results = tmp_path / "results"
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(r=run_sweep(
        path, workers=2, results=results, fit_fn=fake_fit, echo=lambda s: None)))
    thread.start()
    wait_for(lambda: hang.exists() and hang.read_text(), "a worker to start its trial and hang")
    victim = int(hang.read_text())
    assert victim != os.getpid()  # a spawned worker process, not this one
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive() and outcome["r"].exit_code == 0
    rows = read_trials(results / "sweeps" / "kill")
    stale = [r for r in rows if r["status"] == "stale"]
    assert len(stale) == 1 and stale[0]["state"] == "FAIL"
    storage = open_like_dashboard(results / "sweeps" / "kill" / "journal.log")
    counts = complete_hashes(storage, "kill")
    assert set(counts) == expected_hashes(path) and set(counts.values()) == {1}
    retried = [t for t in storage.get_all_trials(0) if t.system_attrs.get("failed_trial") == int(stale[0]["number"])]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"

    # A whole (one-worker) command killed mid-trial, then the same command again.
    hang.unlink()
    path2 = write_sweep(tmp_path / "rerun.yaml")
    import multiprocessing

    from segsweep.sweeps import run_sweep as target

    child = multiprocessing.get_context("spawn").Process(target=target, args=(path2,), kwargs=dict(
        results=results, fit_fn=fake_fit))
    child.start()
    wait_for(lambda: hang.exists() and hang.read_text(), "a worker to start its trial and hang")
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    again = run_sweep(path2, workers=2, results=results, fit_fn=fake_fit, echo=lambda s: None)
    assert again.exit_code == 0
    counts = complete_hashes(open_like_dashboard(results / "sweeps" / "rerun" / "journal.log"), "rerun")
    assert set(counts) == expected_hashes(path2) and set(counts.values()) == {1}
    # Rerunning a finished sweep queues and trains nothing.
    fits_before = len(log.read_text().splitlines())
    lines: list[str] = []
    assert run_sweep(path2, results=results, fit_fn=fake_fit, echo=lines.append).exit_code == 0
    assert len(log.read_text().splitlines()) == fits_before and "0 queued now, 8 already held" in lines[0]


def test_diverged_is_the_cells_outcome_and_failed_is_rerun(tmp_path: Path, quiet: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from segsweep.sweeps import run_sweep

    path = write_sweep(tmp_path / "div.yaml", seeds=[0], parameters={"optim.lr": {"values": [0.001, 0.9]}})
    monkeypatch.setenv("SWEEP_FAKE_FAIL", "1")
    first = run_sweep(path, results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    assert first.exit_code == 1 and first.pending == 2
    assert [r["status"] for r in first.rows] == ["failed", "failed"]
    monkeypatch.delenv("SWEEP_FAKE_FAIL")
    second = run_sweep(path, results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    assert second.exit_code == 0 and second.pending == 0
    by_lr = {r["optim.lr"]: r for r in second.rows[2:]}
    assert by_lr[0.9]["state"] == "FAIL" and by_lr[0.9]["status"] == "diverged"
    assert by_lr[0.001]["state"] == "COMPLETE"
    assert [r["status"] for r in read_trials(second.sweep_dir)] == ["failed", "failed", "completed", "diverged"]
    third = run_sweep(path, results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    assert len(third.rows) == 4  # the diverged cell is not run again


def test_an_rdb_storage_runs_the_grid_with_heartbeats(tmp_path: Path, quiet: None) -> None:
    import optuna

    from segsweep.sweeps import run_sweep

    url = f"sqlite:///{tmp_path}/study.db"
    path = write_sweep(tmp_path / "rdb.yaml", seeds=[3])
    outcome = run_sweep(path, storage=url, results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    assert outcome.exit_code == 0 and [r["state"] for r in outcome.rows] == ["COMPLETE"] * 4
    study = optuna.load_study(study_name="rdb", storage=url)
    epochs = load_sweep(path).base.train.epochs
    assert all(t.user_attrs["seed"] == 3 and "seed" not in t.params
               and sorted(t.intermediate_values) == list(range(1, epochs + 1)) for t in study.trials)
    assert yaml.safe_load((outcome.sweep_dir / "sweep.yaml").read_text())["optuna"]["storage"] == url
    assert not (outcome.sweep_dir / "journal.log").exists()


def test_same_name_with_a_different_spec_is_refused(tmp_path: Path, quiet: None) -> None:
    from segsweep.sweeps import run_sweep

    path = write_sweep(tmp_path / "same.yaml", seeds=[0])
    run_sweep(path, results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    sweep_yaml = (tmp_path / "r" / "sweeps" / "same" / "sweep.yaml").read_text()
    with pytest.raises(SweepError, match="different spec"):
        run_sweep(path, ["train.epochs=3"], results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    write_sweep(path, seeds=[0, 1])
    with pytest.raises(SweepError, match="same.*different spec"):
        run_sweep(path, results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    assert (tmp_path / "r" / "sweeps" / "same" / "sweep.yaml").read_text() == sweep_yaml
    assert len(read_trials(tmp_path / "r" / "sweeps" / "same")) == 4


# --------------------------------------------------------------------------- real training


def test_quickstart_grid_with_two_workers_via_the_command(tmp_path: Path, tiny_overrides: dict) -> None:
    """The acceptance command, real fit on tiny synthetic data; then the study as the dashboard sees it."""
    import optuna

    overrides = [f"{k}={v}" for k, v in tiny_overrides.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), str(REPO / "sweeps" / "quickstart_grid.yaml"),
                           "--workers", "2", "--results", str(tmp_path / "results"), *overrides],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "results" / "sweeps" / "quickstart_grid"
    rows = read_trials(sweep_dir)
    assert len(rows) == 8 and all(r["state"] == "COMPLETE" and r["status"] == "completed" for r in rows)
    assert len({(r["cell"], r["seed"]) for r in rows}) == 8
    assert {r["model.init"] for r in rows} == {"pytorch", "he_normal"} and {r["seed"] for r in rows} == {"0", "1"}
    for row in rows:  # each trial is a normal run folder; last.pt deleted, best.pt kept
        run = Path(row["run_dir"])
        assert (run / "checkpoints" / "best.pt").is_file() and not (run / "checkpoints" / "last.pt").exists()
        assert yaml.safe_load((run / "config.yaml").read_text())["tracking"]["wandb"]["group"] == "quickstart_grid"
        assert str(run).startswith(str(sweep_dir / "runs"))
    assert "disk used by trial runs" in proc.stdout and "± " in proc.stdout
    assert (sweep_dir / "sweep.yaml").is_file()

    storage = open_like_dashboard(sweep_dir / "journal.log")
    assert [s.study_name for s in storage.get_all_studies()] == ["quickstart_grid"]
    study = optuna.load_study(study_name="quickstart_grid", storage=storage)
    assert study.user_attrs["sweep_hash"] == load_sweep(REPO / "sweeps" / "quickstart_grid.yaml", overrides).hash
    for trial in study.get_trials():
        assert set(trial.params) == {"model.init", "model.batchnorm"} and trial.user_attrs["seed"] in (0, 1)
        with open(Path(trial.user_attrs["run_dir"]) / "metrics.csv") as fh:
            curve = {int(r["epoch"]): float(r["val/dice"]) for r in csv.DictReader(fh)}
        assert trial.intermediate_values == pytest.approx(curve) and len(curve) == 2
        assert trial.value == pytest.approx(max(curve.values()))


def test_tpe_study_with_hyperband_prunes_some_trials(tmp_path: Path, tiny_overrides: dict, quiet: None) -> None:
    from segsweep.sweeps import run_sweep

    tree = yaml.safe_load((REPO / "sweeps" / "lr_wd_tpe.yaml").read_text())
    tree.update(experiment=str(QUICKSTART), run_cap=6, early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2})
    tree["optuna"]["n_startup_trials"] = 3
    # A tiny model's val/dice is often 0 for its first epochs (ties are never pruned); val/loss
    # always separates trials. The loss weights are fixed so that losses compare.
    tree["metric"] = {"name": "val/loss", "goal": "minimize"}
    tree["parameters"]["loss.dice"] = {"value": 1.0}
    path = tmp_path / "tpe.yaml"
    path.write_text(yaml.safe_dump(tree))
    # One torch thread: on 2 shared cores, two threads per process thrash (10x slower under load).
    outcome = run_sweep(path, {**tiny_overrides, "train.epochs": 3, "train.threads": 1}, results=tmp_path / "r",
                        echo=lambda s: None)
    states = Counter(r["state"] for r in outcome.rows)
    assert len(outcome.rows) == 6 and states["PRUNED"] >= 1 and states["COMPLETE"] >= 1, outcome.rows
    for row in outcome.rows:
        if row["state"] == "PRUNED":
            assert row["status"] == "pruned" and int(row["epochs"]) < 3
            summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
            assert summary["status"] == "pruned" and (Path(row["run_dir"]) / "checkpoints" / "best.pt").is_file()
