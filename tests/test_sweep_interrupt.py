"""A sweep trial stopped by Ctrl-C keeps its epochs: rerunning the sweep continues it from its own
last.pt in its own folder, and its metrics.csv equals an uninterrupted trial's (deterministic CPU);
every cell still completes exactly once. A trial whose worker died shows as stale in --status."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from conftest import wait_for
from test_faults import DRIVER, SPEC_ARGS, TIMING

REPO = Path(__file__).resolve().parents[1]
SWEEP_DRIVER = DRIVER.replace('main(["run", *sys.argv[1:]])', 'main(["sweep", *sys.argv[1:]])')


def write_sweep(path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "interrupted", "experiment": str(REPO / "experiments" / "quickstart.yaml"), "method": "grid",
        "parameters": {"model.dropout": {"values": [0.0, 0.1]}}, "seeds": [0],
        "optuna": {"heartbeat_interval": 1, "grace_period": 2},
    }))
    return path


def sweep(path: Path, results: Path, data: Path, faults: str = "") -> subprocess.CompletedProcess:
    args = [str(path), *[a for a in SPEC_ARGS if not a.startswith("train.early_stopping")],
            f"data.root={data}", f"data.cache_dir={data.parent / 'cache'}", "--results", str(results)]
    env = {**os.environ, "SEGSWEEP_TEST_FAULTS": faults, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-c", SWEEP_DRIVER, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def finished_runs(results: Path) -> dict[str, Path]:
    """dropout value -> the run folder with a summary.json."""
    out = {}
    for summary in (results / "sweeps" / "interrupted" / "runs").rglob("summary.json"):
        config = yaml.safe_load((summary.parent / "config.yaml").read_text())
        assert str(config["model"]["dropout"]) not in out, "a cell ran twice"
        out[str(config["model"]["dropout"])] = summary.parent
    return out


def test_an_interrupted_trial_resumes_in_its_own_folder_and_ends_as_if_never_stopped(
        tmp_path: Path, synthetic_root: Path) -> None:
    path = write_sweep(tmp_path / "interrupted.yaml")
    reference = sweep(path, tmp_path / "reference", synthetic_root)
    assert reference.returncode == 0, reference.stderr[-2000:]
    want = {k: rows(v) for k, v in finished_runs(tmp_path / "reference").items()}

    results = tmp_path / "results"
    stopped = sweep(path, results, synthetic_root, faults="metrics:2:SIGINT")  # Ctrl-C after the first trial's epoch 2
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    runs = list((results / "sweeps" / "interrupted" / "runs").glob("*/*"))
    assert len(runs) == 1
    assert not (runs[0] / "summary.json").exists() or \
        json.loads((runs[0] / "summary.json").read_text())["status"] == "interrupted"
    first = runs[0]
    assert len(rows(first)) == 2

    again = sweep(path, results, synthetic_root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{first} (resumed)" in again.stdout + again.stderr
    got = finished_runs(results)
    assert set(got) == set(want) and first in got.values()  # continued in its own folder
    for dropout, run_dir in got.items():
        assert rows(run_dir) == want[dropout], dropout
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    import optuna

    journal = results / "sweeps" / "interrupted" / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="interrupted", storage=storage).get_trials(deepcopy=False)
    done = Counter(t.user_attrs["config_hash"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(done) == 2 and set(done.values()) == {1}


def test_status_says_a_dead_workers_trial_is_stale(tmp_path: Path) -> None:
    """A RUNNING trial with no heartbeat (its worker was killed, or a double Ctrl-C) is shown stale
    once its heartbeat is older than the grace period, not running."""
    import optuna

    from segsweep.sweeps.status import status_lines, sweep_status
    from segsweep.sweeps.spec import load_sweep
    from segsweep.sweeps.running import trial_id
    from segsweep.sweeps.storage import open_storage
    from segsweep.sweeps.study import planned_cells

    path = write_sweep(tmp_path / "interrupted.yaml")
    sweep_ = load_sweep(path)
    journal = str(tmp_path / "journal.log")
    store = open_storage(journal, sweep_.spec.optuna)
    study = optuna.create_study(study_name="interrupted", storage=store)
    trial = study.ask()  # RUNNING, and nobody beats for it
    store.record_heartbeat(trial_id(trial))
    (_, config_hash), = planned_cells(sweep_, set())["model.dropout=0"]  # the grid cell it holds
    trial.set_user_attr("cell", "model.dropout=0")
    trial.set_user_attr("config_hash", config_hash)
    wait_for(lambda: any(r.stale for r in sweep_status(sweep_, journal).running), "the trial to go stale")
    lines = status_lines(sweep_status(sweep_, journal))
    assert any(line.startswith(f"stale: trial {trial.number} model.dropout=0") and "its worker is gone" in line
               for line in lines)
    assert "1 stale" in lines[0] and "0 running" in lines[0]
