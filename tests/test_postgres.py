"""Sweeps on a real PostgreSQL server: two "machines" (sweep drivers with their own results
folders) join one study with 3 worker processes in all; one is SIGKILLed mid-trial. Every grid
cell x seed completes exactly once, with the same values as a one-worker run, and the report
reads every trial.

Needs SEGSWEEP_TEST_POSTGRES (a database URL; `.ci/run` starts a throwaway server and sets it).
Without a reachable server the test is skipped, except under CI=true, where it fails.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from test_sweeps import expected_hashes, hang_once_if_asked, read_trials, write_sweep

POSTGRES_ENV = "SEGSWEEP_TEST_POSTGRES"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """The server's URL; skip (fail under CI=true) when there is none or it does not answer."""
    from segsweep.sweeps.storage import masked_url, resolve_rdb_url

    url = os.environ.get(POSTGRES_ENV, "").strip()
    why = None
    if not url:
        why = (f"{POSTGRES_ENV} is not set; point it at a database, e.g. postgresql://postgres@127.0.0.1:5432/"
               "segsweep_test, or run the tests through .ci/run, which starts a throwaway server")
    else:
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(resolve_rdb_url(url), connect_args={"connect_timeout": 5})
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("select 1"))
            engine.dispose()
        except Exception as exc:  # driver missing, server down, bad credentials
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            why = f"{POSTGRES_ENV}={masked_url(url)}: cannot connect ({reason})"
    if why is not None:
        if _in_ci():
            pytest.fail(f"CI=true: the PostgreSQL sweep test must run here, but {why}", pytrace=False)
        pytest.skip(why)
    return url


def hanging_fit(spec: Any, run_dir: Any, tracker: Any = None, on_epoch_end: Any = None) -> Any:
    """segsweep.train.fit, except that the one call (of all processes) that creates the file named by
    SWEEP_FAKE_HANG writes its pid there and hangs until killed. SWEEP_FAKE_LOG gets
    "config_hash pid" for every real training (module level: picklable for spawned workers)."""
    from segsweep.spec import config_hash
    from segsweep.train import fit

    hang_once_if_asked()
    if os.environ.get("SWEEP_FAKE_LOG"):
        with open(os.environ["SWEEP_FAKE_LOG"], "a") as fh:
            fh.write(f"{config_hash(spec)} {os.getpid()}\n")
    return fit(spec, run_dir, tracker=tracker, on_epoch_end=on_epoch_end)


def completed(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """config hash -> (val/dice, test/dice) of the COMPLETE trials (one each, asserted)."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert len({r["config_hash"] for r in done}) == len(done), "a cell completed twice"
    return {r["config_hash"]: (float(r["val/dice"]), float(r["test/dice"])) for r in done}


def test_two_machines_three_workers_one_killed_run_every_cell_once_like_one_worker(
        postgres_url: str, tmp_path: Path, tiny_overrides: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from segsweep.reports.ablation import group_arms, load_runs, write_report
    from segsweep.sweeps import load_sweep, run_sweep
    from segsweep.sweeps.storage import open_storage

    for var in ("SWEEP_FAKE_HANG", "SWEEP_FAKE_LOG", "SWEEP_FAKE_FAIL"):
        monkeypatch.delenv(var, raising=False)
    name = f"pg_{uuid.uuid4().hex[:8]}"  # a fresh study, also on a long-lived local server
    path = write_sweep(tmp_path / f"{name}.yaml", parameters={"model.init": {"values": ["pytorch", "he_normal"]}})
    # Deterministic CPU training, one thread: the two runs of a cell give identical numbers.
    overrides = {**tiny_overrides, "train.epochs": 1, "train.deterministic": True, "train.device": "cpu",
                 "train.precision": "fp32"}
    cells = expected_hashes(path, overrides)
    assert len(cells) == 4  # 2 cells x 2 seeds

    # Reference: one worker, the default journal storage, in this process.
    one = run_sweep(path, overrides, results=tmp_path / "one", fit_fn=hanging_fit, echo=lambda s: None)
    assert one.exit_code == 0
    reference = completed(one.rows)
    assert set(reference) == cells

    # Machine A: 2 workers (this process drives them); machine B: 1 worker in its own process.
    log, hang = tmp_path / "fits.log", tmp_path / "hang.pid"
    monkeypatch.setenv("SWEEP_FAKE_LOG", str(log))
    monkeypatch.setenv("SWEEP_FAKE_HANG", str(hang))
    storage = open_storage(postgres_url, load_sweep(path).spec.optuna)
    try:
        outcome: dict[str, Any] = {}
        machine_a = threading.Thread(target=lambda: outcome.update(a=run_sweep(
            path, overrides, workers=2, storage=postgres_url, results=tmp_path / "a", fit_fn=hanging_fit,
            echo=lambda s: None)))
        machine_b = multiprocessing.get_context("spawn").Process(target=run_sweep, args=(path, overrides), kwargs=dict(
            storage=postgres_url, results=tmp_path / "b", fit_fn=hanging_fit))
        machine_a.start()
        machine_b.start()
        wait_for(lambda: hang.exists() and hang.read_text(), "a worker to start its trial and hang")
        victim = int(hang.read_text())
        assert victim != os.getpid()
        os.kill(victim, signal.SIGKILL)  # a worker of A, or all of B: either way a trial dies RUNNING
        machine_a.join(timeout=600)
        machine_b.join(timeout=600)
        assert not machine_a.is_alive() and not machine_b.is_alive()
        assert outcome["a"].exit_code == 0
        assert machine_b.exitcode in (0, -signal.SIGKILL)

        # Exactly once: one COMPLETE trial and one real training per cell x seed.
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        done = Counter(t.user_attrs["config_hash"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
        assert set(done) == cells and set(done.values()) == {1}
        assert Counter(line.split()[0] for line in log.read_text().splitlines()) == Counter(cells)
        stale = [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("status") == "running"]
        assert len(stale) == 1  # the killed one: failed as stale, then retried
        # Its retry ran the cell, or stood aside for a copy queued by the other machine's driver.
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == stale[0].number]
        assert len(retried) == 1 and retried[0].user_attrs.get("status") in ("completed", "duplicate")

        # The same results as one worker: same cells (config hashes) and, deterministic, same values.
        rows_a = read_trials(tmp_path / "a" / "sweeps" / name)  # trials.csv lists every machine's trials
        assert completed(rows_a) == reference
        assert {r["host"] for r in rows_a if r["state"] == "COMPLETE"} == {socket.gethostname()}

        # The report reads every trial, wherever its run folder lives (one per machine here).
        folders = [p / "sweeps" / name for p in (tmp_path / "a", tmp_path / "b") if (p / "sweeps" / name / "runs").is_dir()]
        runs = [r for r in load_runs(folders) if r.status == "completed"]
        assert len(runs) == 4
        study = group_arms(runs)
        assert len(study.arms) == 2 and all(sorted(arm.by_seed) == [0, 1] for arm in study.arms)
        report = write_report(folders, out=tmp_path / "report").read_text()
        assert "he_normal" in report and "pytorch" in report
    finally:
        optuna.delete_study(study_name=name, storage=storage)
