"""`segsweep sweep --launcher slurm` against a real SLURM, `--status`, and the resume of a trial a
signal stopped.

The cluster tests need SEGSWEEP_TEST_SLURM=1 (a cluster answering `sinfo`; `.ci/run` starts a
one-node one via .ci/parts/40-slurm.sh) and SEGSWEEP_TEST_POSTGRES (the storage every node
shares); they skip without them and fail under CI=true. The others run anywhere.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY, wait_for
from test_faults import metric_table
from test_postgres import postgres_url  # noqa: F401  (the module's PostgreSQL fixture)
from test_sweeps import expected_hashes, write_sweep

SLURM_ENV = "SEGSWEEP_TEST_SLURM"
SWEEP = [sys.executable, "-m", "segsweep", "sweep"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="module")
def slurm() -> None:
    """A SLURM cluster that answers; skip (fail under CI=true) without one."""
    why = None
    if not os.environ.get(SLURM_ENV):
        why = f"{SLURM_ENV} is not set; run the tests through .ci/run, which starts a one-node SLURM"
    else:
        done = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            why = f"{SLURM_ENV} is set but sinfo fails: {done.stderr.strip()}"
    if why is not None:
        if _in_ci():
            pytest.fail(f"CI=true: the SLURM tests must run here, but {why}", pytrace=False)
        pytest.skip(why)


@pytest.fixture
def jobs() -> Any:
    """Job arrays a test submitted: every one is cancelled at teardown."""
    submitted: list[str] = []
    yield submitted
    for job in submitted:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)


def overrides(synthetic_root: Path, **more: Any) -> list[str]:
    values = {**TINY, "data.root": str(synthetic_root), "data.cache_dir": str(synthetic_root.parent / "cache"),
              "train.deterministic": True, **more}
    return [f"{k}={'true' if v is True else 'false' if v is False else v}" for k, v in values.items()]


def sweep_file(tmp_path: Path, **fields: Any) -> Path:
    """A grid on the quickstart experiment with a unique name (the PostgreSQL database is shared)."""
    return write_sweep(tmp_path / f"slurm_{uuid.uuid4().hex[:8]}.yaml",
                       optuna={"heartbeat_interval": 1, "grace_period": 6}, **fields)


def submit(path: Path, args: list[str], url: str, tmp_path: Path, jobs: list[str], workers: int = 2) -> str:
    done = subprocess.run([*SWEEP, str(path), *args, "--launcher", "slurm", "--workers", str(workers),
                           "--storage", url, "--results", str(tmp_path / "results"),
                           "--slurm", "cpus_per_task=1", "--slurm", "time=20"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("submitted job array "))
    array = line.removeprefix("submitted job array ").split(":")[0]
    jobs.append(array)
    for expected in (f"squeue -j {array}", f"scancel {array}", "--status", "storage: postgresql://"):
        assert expected in done.stdout, done.stdout
    return array


def trials(path: Path, url: str) -> list[Any]:
    from segsweep.sweeps import load_sweep
    from segsweep.sweeps.storage import open_storage

    sweep = load_sweep(path)
    storage = open_storage(url, sweep.spec.optuna)
    return storage.get_all_trials(storage.get_study_id_from_name(sweep.name), deepcopy=False)


def wait_settled(path: Path, url: str, args: list[str]) -> list[Any]:
    """Wait until every cell x seed is done (a bounded wait); returns the study's trials."""
    from optuna.trial import TrialState

    hashes = expected_hashes(path, args)

    def settled() -> bool:
        done = {t.user_attrs.get("config_hash") for t in trials(path, url) if t.state == TrialState.COMPLETE}
        return done >= hashes

    wait_for(settled, "every cell x seed to complete on SLURM", limit_s=900, poll_s=0.5)
    return trials(path, url)


def first_epoch_done(path: Path, url: str) -> Any:
    """A running trial whose metrics.csv has its first epoch (the observed event to signal on)."""
    from optuna.trial import TrialState

    found: list[Any] = []

    def ready() -> bool:
        for t in trials(path, url):
            run_dir = t.user_attrs.get("run_dir")
            if t.state == TrialState.RUNNING and t.user_attrs.get("slurm_job") and run_dir \
                    and (Path(run_dir) / "metrics.csv").is_file() and len(metric_table(Path(run_dir))) >= 1:
                found.append(t)
                return True
        return False

    wait_for(ready, "a trial's first epoch on SLURM", limit_s=600, poll_s=0.2)
    return found[0]


def completed_once(all_trials: list[Any], path: Path, args: list[str]) -> list[Any]:
    from optuna.trial import TrialState

    done = [t for t in all_trials if t.state == TrialState.COMPLETE]
    hashes = [t.user_attrs["config_hash"] for t in done]
    assert sorted(hashes) == sorted(expected_hashes(path, args)), "every cell x seed exactly once"
    return done


# --------------------------------------------------------------------------- on a real SLURM


def test_grid_as_a_job_array_runs_every_cell_and_seed_once(
        slurm: None, postgres_url: str, synthetic_root: Path, tmp_path: Path, jobs: list[str]) -> None:  # noqa: F811
    path, args = sweep_file(tmp_path), overrides(synthetic_root)
    array = submit(path, args, postgres_url, tmp_path, jobs)
    done = completed_once(wait_settled(path, postgres_url, args), path, args)
    assert len(done) == 8
    assert {t.user_attrs["slurm_job"] for t in done} <= {f"{array}_0", f"{array}_1"}
    status = subprocess.run([*SWEEP, str(path), *args, "--status", "--storage", postgres_url],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0].startswith(f"sweep {path.stem}: 8 done, 0 running, 0 waiting, 0 failed")
    assert sum(1 for line in status.stdout.splitlines() if line.rstrip().endswith("2        0        0        0")) == 4


def test_warning_signal_resumes_the_trial_from_last_pt(
        slurm: None, postgres_url: str, synthetic_root: Path, tmp_path: Path, jobs: list[str]) -> None:  # noqa: F811
    """SIGUSR2 (what sbatch --signal sends before a time limit) to the worker holding a trial, after
    its first epoch: the trial saves last.pt, a copy resumes it in the same run folder, and the
    finished metrics.csv equals an uninterrupted run's."""
    from optuna.trial import TrialState

    from segsweep.spec import load_spec
    from segsweep.train import fit

    path = sweep_file(tmp_path, parameters={"model.init": {"values": ["pytorch", "he_normal"]}}, seeds=[0])
    args = overrides(synthetic_root, **{"train.epochs": 4})
    submit(path, args, postgres_url, tmp_path, jobs)
    target = first_epoch_done(path, postgres_url)
    subprocess.run(["scancel", "--signal=USR2", target.user_attrs["slurm_job"]], check=True, timeout=60)
    all_trials = wait_settled(path, postgres_url, args)
    completed_once(all_trials, path, args)
    original = next(t for t in all_trials if t.number == target.number)
    assert original.state == TrialState.FAIL and original.user_attrs["status"] == "interrupted"
    copy = next(t for t in all_trials if t.system_attrs.get("segsweep:resumes") == target.number)
    assert copy.state == TrialState.COMPLETE and copy.user_attrs["run_dir"] == original.user_attrs["run_dir"]
    job = target.user_attrs["slurm_job"]

    def requeued() -> bool:  # the signalled task requeued itself once its worker had saved
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
        return "Restarts=1" in shown.stdout

    wait_for(requeued, f"job {job} to requeue itself", limit_s=300, poll_s=0.5)
    run_dir = Path(copy.user_attrs["run_dir"])
    reference = tmp_path / "reference"
    fit(load_spec(run_dir / "config.yaml"), reference)
    assert metric_table(run_dir) == metric_table(reference)


def test_worker_killed_without_warning_is_retried_after_the_grace_period(
        slurm: None, postgres_url: str, synthetic_root: Path, tmp_path: Path, jobs: list[str]) -> None:  # noqa: F811
    from optuna.trial import TrialState

    path = sweep_file(tmp_path, parameters={"model.init": {"values": ["pytorch", "he_normal"]}}, seeds=[0])
    args = overrides(synthetic_root, **{"train.epochs": 4})
    submit(path, args, postgres_url, tmp_path, jobs)
    target = first_epoch_done(path, postgres_url)
    # SIGKILL of the process training the trial (an OOM kill, a lost node): no signal to catch.
    # (`scancel`, even `--signal=KILL`, cancels the job, and SLURM warns with SIGTERM first: the
    # trial then saves and is resumed, as with the warning signal.)
    os.kill(int(target.user_attrs["pid"]), signal.SIGKILL)
    all_trials = wait_settled(path, postgres_url, args)
    done = completed_once(all_trials, path, args)
    killed = next(t for t in all_trials if t.number == target.number)
    assert killed.state == TrialState.FAIL
    retry = next(t for t in done if t.user_attrs["config_hash"] == killed.user_attrs["config_hash"])
    assert retry.system_attrs.get("failed_trial") == killed.number  # Optuna's stale-trial retry
    assert retry.user_attrs["run_dir"] != killed.user_attrs["run_dir"]  # from scratch: nothing to resume


def test_missing_partition_is_refused_before_submitting(
        slurm: None, postgres_url: str, synthetic_root: Path, tmp_path: Path) -> None:  # noqa: F811
    path = sweep_file(tmp_path)
    done = subprocess.run([*SWEEP, str(path), *overrides(synthetic_root), "--launcher", "slurm", "--storage",
                           postgres_url, "--slurm", "partition=no_such_partition", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "partition=no_such_partition: no such partition" in done.stderr and "debug" in done.stderr
    queued = subprocess.run(["squeue", "--noheader", f"--name=segsweep-{path.stem}"], capture_output=True, text=True)
    assert queued.stdout.strip() == ""


# --------------------------------------------------------------------------- anywhere


@pytest.mark.parametrize("case", ["no sbatch", "node-local journal", "unknown key", "password", "password in query"])
def test_bad_launcher_input_is_one_line_and_exit_2(synthetic_root: Path, tmp_path: Path, case: str) -> None:
    path = sweep_file(tmp_path)
    env = dict(os.environ)
    args = ["--launcher", "slurm", "--results", str(tmp_path / "results")]
    shared_journal = REPO / "results" / "sweeps" / path.stem / "journal.log"
    if case == "no sbatch":
        (tmp_path / "bin").mkdir()
        env["PATH"] = str(tmp_path / "bin")  # no SLURM commands at all
        args += ["--storage", str(shared_journal)]
        expected = "SLURM's sbatch/sinfo are not on PATH"
    elif case == "node-local journal":  # refused before sbatch would run: stand-ins that fail if called
        (tmp_path / "bin").mkdir()
        for tool in ("sbatch", "sinfo"):
            (tmp_path / "bin" / tool).write_text("#!/bin/sh\nexit 97\n")
            (tmp_path / "bin" / tool).chmod(0o755)
        env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
        args += ["--storage", f"/dev/shm/segsweep-test-{uuid.uuid4().hex[:8]}/journal.log"]
        expected = "is under /dev/shm, which is local to each node"
    elif case == "unknown key":
        args += ["--storage", str(shared_journal), "--slurm", "partiton=gpu"]
        expected = "--slurm partiton=gpu: unknown key; did you mean 'partition'?"
    else:  # the submitted job would pickle the URL into <sweep>/slurm/: refused before sbatch is even looked for
        (tmp_path / "bin").mkdir()
        env["PATH"] = str(tmp_path / "bin")
        url = "postgresql://me:s3cret@127.0.0.1/db" if case == "password" else "postgresql://me@127.0.0.1/db?password=s3cret"
        args += ["--storage", url]
        expected = "the URL holds a password, which the submitted job would store in its files; keep it in PGPASSWORD"
    done = subprocess.run([*SWEEP, str(path), *overrides(synthetic_root), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert not shared_journal.exists() and not (tmp_path / "journal.log").exists() and not (tmp_path / "results").exists()


def test_resource_plan_one_trial_per_gpu_threads_split() -> None:
    from segsweep.sweeps.slurm import resource_plan

    plan = resource_plan({"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_CPUS_PER_TASK": "8"})
    assert plan.devices == ("2", "3") and plan.threads == 4
    assert resource_plan({"CUDA_VISIBLE_DEVICES": "1", "SLURM_CPUS_PER_TASK": "6"}).devices == ("1",)
    cpu = resource_plan({"SLURM_CPUS_PER_TASK": "3"})
    assert cpu.devices == (None,) and cpu.threads == 3
    assert resource_plan({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, cpus=2).devices == (None,)
    assert resource_plan({"CUDA_VISIBLE_DEVICES": "0,1,2"}, cpus=2).threads == 1


def test_signalled_trial_is_queued_and_resumed_from_last_pt(synthetic_root: Path, tmp_path: Path) -> None:
    """In one process, no SLURM: SIGUSR2 after a trial's first epoch stops it with last.pt saved;
    the next worker (the requeued task) continues it in the same folder, and its metrics.csv
    equals an uninterrupted run's. `--status` meanwhile shows the resume copy waiting."""
    from optuna.trial import TrialState

    from segsweep.spec import load_spec
    from segsweep.sweeps import load_sweep
    from segsweep.sweeps.status import status_lines, sweep_status
    from segsweep.sweeps.optuna_engine import run_worker
    from segsweep.sweeps.storage import open_storage
    from segsweep.sweeps.study import enqueue_grid, open_study
    from segsweep.sweeps.trial import WorkerPlan
    from segsweep.train import fit

    path = sweep_file(tmp_path, parameters={"model.init": {"values": ["pytorch"]}}, seeds=[0])
    sweep = load_sweep(path, overrides(synthetic_root, **{"train.epochs": 3}))
    journal = tmp_path / "journal.log"
    storage = open_storage(str(journal), sweep.spec.optuna)
    enqueue_grid(open_study(sweep, storage), sweep)
    signalled: list[int] = []

    def fit_signalled_once(spec: Any, run_dir: Any, tracker: Any = None, on_epoch_end: Any = None, **kw: Any) -> Any:
        def hook(epoch: int, metrics: dict) -> None:
            on_epoch_end(epoch, metrics)
            if not signalled:
                signalled.append(epoch)
                os.kill(os.getpid(), signal.SIGUSR2)

        return fit(spec, run_dir, tracker=tracker, on_epoch_end=hook, **kw)

    plan = WorkerPlan(sweep=sweep, sweep_dir=tmp_path / "sweep", storage=str(journal), fit_fn=fit_signalled_once,
                      resume_interrupted=True)
    assert run_worker(plan) is True  # stopped by the signal
    lines = status_lines(sweep_status(sweep, str(journal)))
    assert lines[0].startswith(f"sweep {sweep.name}: 0 done, 0 running, 1 waiting, 0 failed"), lines
    assert run_worker(plan) is False  # the next worker: resumes, then nothing is left
    study_id = storage.get_study_id_from_name(sweep.name)
    first, copy = storage.get_all_trials(study_id, deepcopy=False)
    assert first.state == TrialState.FAIL and first.user_attrs["status"] == "interrupted"
    assert copy.state == TrialState.COMPLETE and copy.user_attrs["run_dir"] == first.user_attrs["run_dir"]
    assert copy.value == max(copy.intermediate_values.values())  # the first epoch's value counts too
    run_dir = Path(copy.user_attrs["run_dir"])
    fit(load_spec(run_dir / "config.yaml"), tmp_path / "reference")
    assert metric_table(run_dir) == metric_table(tmp_path / "reference")


def test_status_names_the_job_holding_a_running_trial(synthetic_root: Path, tmp_path: Path) -> None:
    from segsweep.sweeps import load_sweep
    from segsweep.sweeps.status import status_lines, sweep_status
    from segsweep.sweeps.storage import claim_waiting, open_storage
    from segsweep.sweeps.study import enqueue_grid, open_study

    path = sweep_file(tmp_path)
    sweep = load_sweep(path, overrides(synthetic_root))
    journal = tmp_path / "journal.log"
    assert status_lines(sweep_status(sweep, str(journal)))[0].startswith(f"sweep {sweep.name}: not started")
    assert not journal.exists()
    storage = open_storage(str(journal), sweep.spec.optuna)
    study = open_study(sweep, storage)
    enqueue_grid(study, sweep)
    trial = claim_waiting(study, storage, storage.get_study_id_from_name(sweep.name))
    trial.set_user_attr("worker", "node7:4242")
    trial.set_user_attr("slurm_job", "77_1")
    lines = status_lines(sweep_status(sweep, str(journal)))
    assert lines[0].startswith(f"sweep {sweep.name}: 0 done, 1 running, 7 waiting, 0 failed")
    assert any(line.startswith(f"running: trial {trial.number} ") and "held by slurm job 77_1 (node7:4242)" in line
               for line in lines), lines


def test_slurm_block_in_the_sweep_file_with_command_line_pairs_over_it(tmp_path: Path) -> None:
    from segsweep.errors import SpecError, SweepError
    from segsweep.sweeps import load_sweep
    from segsweep.sweeps.slurm_spec import slurm_options

    path = sweep_file(tmp_path, slurm={"partition": "gpu", "time": "01:30:00", "gpus_per_task": 2,
                                       "extra": ["--constraint=a100"]})
    sweep = load_sweep(path)
    options = slurm_options(sweep.spec.slurm, ["partition=debug", "extra=--exclude=node3", "cpus_per_task=8"], "x")
    assert (options.partition, options.minutes, options.gpus_per_task, options.cpus_per_task) == ("debug", 90, 2, 8)
    assert options.extra_options() == {"constraint": "a100", "exclude": "node3"}
    with pytest.raises(SweepError, match=r"slurm\.time: expected minutes or \[D-\]HH:MM\[:SS\]"):
        slurm_options(sweep.spec.slurm, ["time=soon"], str(path))
    with pytest.raises(SpecError, match=r"slurm\.partiton: unknown key; did you mean 'partition'\?"):
        load_sweep(sweep_file(tmp_path, slurm={"partiton": "gpu"}))


@pytest.mark.parametrize("pair, expected", [
    ("partition=gpu\n#SBATCH --uid=0", "slurm.partition: expected a SLURM name of letters, digits and _ . , : + -"),
    ("account=lab x", "slurm.account: expected a SLURM name"),
    ("qos=normal;rm", "slurm.qos: expected a SLURM name"),
    ("extra=--comment=a\n#SBATCH --uid=0", "slurm.extra: expected an sbatch option like --constraint=a100 (a value "
                                            "without spaces or quotes)"),
    ("extra=--comment='x'", "without spaces or quotes"),
    ("extra=--signal=USR1@60", "--signal in extra: set it with its own key, slurm.signal_delay_s"),
    ("extra=--cpus_per_task=4", "--cpus_per_task in extra: set it with its own key, slurm.cpus_per_task"),
    ("extra=--time=10", "--time in extra: set it with its own key, slurm.time"),
    ("extra=--job-name=x", "--job-name in extra: segsweep sets it"),
    ("extra=--open_mode=truncate", "--open_mode in extra: segsweep sets it"),
    ("extra=#SBATCH --array=0-99", "--array in extra: segsweep sets it"),
    ("extra=--wrap=hostname", "--wrap in extra: segsweep sets it"),
    ("time=2", "slurm: signal_delay_s (120 s) must be shorter than time ('2' = 120 s)"),
    ("signal_delay_s=3600", "slurm: signal_delay_s (3600 s) must be shorter than time"),
])
def test_slurm_options_that_could_break_the_job_script_are_refused(pair: str, expected: str) -> None:
    from segsweep.errors import SweepError
    from segsweep.sweeps.slurm_spec import slurm_options

    with pytest.raises(SweepError) as caught:
        slurm_options(None, [pair], "sweep.yaml")
    message = str(caught.value)
    assert message.startswith("sweep.yaml: slurm") and expected in message and "\n" not in message, message
    kept = slurm_options(None, ["partition=gpu,debug", "account=my-lab.x", "time=00:03:00", "signal_delay_s=170",
                                "extra=--constraint=a100|h100", "extra=#SBATCH --exclude=node[1-3]"], "sweep.yaml")
    assert kept.extra_options() == {"constraint": "a100|h100", "exclude": "node[1-3]"} and kept.minutes == 3


def test_sigterm_after_the_warning_signal_continues_the_same_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM sends SIGTERM at the time limit after the SIGUSR2 warning: the stop the warning began
    goes on (no exit at once); a second SIGTERM after a first one still exits at once."""
    from segsweep.train.stop import SignalCatcher

    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    with SignalCatcher() as catcher:
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGUSR2)
    assert catcher.signum == signal.SIGUSR2 and exits == []
    with SignalCatcher() as catcher:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
    assert catcher.signum == signal.SIGTERM and exits == [128 + signal.SIGTERM]


def test_resumed_trial_counts_the_metrics_csv_epochs_up_to_last_pt(tmp_path: Path) -> None:
    import torch

    from segsweep.record import write_metrics
    from segsweep.schema import METRIC_COLUMNS
    from segsweep.sweeps.resume import reported_before

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 2, "model": {}}, run_dir / "checkpoints" / "last.pt")
    # metrics.csv is written before last.pt: epoch 3 is ahead of the checkpoint and is trained again
    row = dict.fromkeys(METRIC_COLUMNS, 0.25)
    write_metrics(run_dir, [{**row, "epoch": 1, "val/dice": 0.5}, {**row, "epoch": 2, "val/dice": float("nan")},
                            {**row, "epoch": 3, "val/dice": 0.9}])
    assert reported_before(run_dir, "val/dice") == [0.5]


@pytest.mark.filterwarnings("ignore:The reported value is ignored")  # Optuna keeps the carried step 1
def test_fresh_run_of_a_resume_copy_counts_only_its_own_epochs(synthetic_root: Path, tmp_path: Path) -> None:
    """A resume copy (or its heartbeat retry) whose folder lost last.pt trains from scratch: the
    original's reported values, carried in the copy's intermediate values, are not its best."""
    from types import SimpleNamespace

    from segsweep.sweeps import load_sweep
    from segsweep.sweeps.optuna_engine import run_worker
    from segsweep.sweeps.storage import open_storage
    from segsweep.sweeps.study import enqueue_grid, open_study
    from segsweep.sweeps.trial import WorkerPlan

    path = sweep_file(tmp_path, parameters={"model.init": {"values": ["pytorch"]}}, seeds=[0])
    sweep = load_sweep(path, overrides(synthetic_root))
    journal = tmp_path / "journal.log"
    storage = open_storage(str(journal), sweep.spec.optuna)
    enqueue_grid(open_study(sweep, storage), sweep)
    study_id = storage.get_study_id_from_name(sweep.name)
    (waiting,) = storage.get_all_trials(study_id, deepcopy=False)
    (tmp_path / "gone" / "checkpoints").mkdir(parents=True)  # its last.pt is gone
    storage.set_trial_user_attr(waiting._trial_id, "resume_from", str(tmp_path / "gone"))
    storage.set_trial_intermediate_value(waiting._trial_id, 1, 0.99)  # the original's epoch 1
    calls: list[dict] = []

    def fake_fit(spec: Any, run_dir: Any, tracker: Any = None, on_epoch_end: Any = None, **kw: Any) -> Any:
        calls.append(kw)
        for epoch, value in ((1, 0.5), (2, 0.6)):
            on_epoch_end(epoch, {"val/dice": value})
        return SimpleNamespace(status="completed", metrics={"val/dice": 0.6}, signal=None)

    plan = WorkerPlan(sweep=sweep, sweep_dir=tmp_path / "sweep", storage=str(journal), fit_fn=fake_fit,
                      resume_interrupted=True)
    assert run_worker(plan) is False
    (done,) = storage.get_all_trials(study_id, deepcopy=False)
    assert calls == [{}] and done.value == 0.6  # trained from scratch; 0.99 is not this run's


def test_status_creates_nothing_in_a_database(synthetic_root: Path, tmp_path: Path) -> None:
    """--status on a database URL: a missing SQLite file is a sweep not started (no file made), a
    database without Optuna's tables is refused (none made), a masked URL is refused."""
    import sqlite3

    from segsweep.errors import SweepError
    from segsweep.sweeps import load_sweep
    from segsweep.sweeps.status import status_lines, status_location, sweep_status
    from segsweep.sweeps.storage import open_storage
    from segsweep.sweeps.study import enqueue_grid, open_study

    sweep = load_sweep(sweep_file(tmp_path), overrides(synthetic_root))
    missing = tmp_path / "missing.db"
    assert status_lines(sweep_status(sweep, f"sqlite:///{missing}"))[0].startswith(f"sweep {sweep.name}: not started")
    assert not missing.exists()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (x INTEGER)")
    with pytest.raises(SweepError, match="no segsweep/optuna study in this database"):
        sweep_status(sweep, f"sqlite:///{other}")
    with sqlite3.connect(other) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["notes"]
    used = f"sqlite:///{tmp_path / 'used.db'}"
    enqueue_grid(open_study(sweep, open_storage(used, sweep.spec.optuna)), sweep)
    assert status_lines(sweep_status(sweep, used))[0].startswith(f"sweep {sweep.name}: 0 done, 0 running, 8 waiting")
    with pytest.raises(SweepError, match=r"has its password hidden \(\*\*\*\); give the URL without it"):
        status_location(sweep, "postgresql://me:***@db.example/sweeps", tmp_path)
    assert status_location(sweep, "postgresql://me@db.example/sweeps", tmp_path) == "postgresql://me@db.example/sweeps"
