"""`segsweep sweep SWEEP --launcher slurm --workers N`: the sweep's workers as one SLURM job array,
submitted through submitit (Meta's maintained submission library); the command returns at once,
and each array task is a worker like a `--workers` process, on the same shared storage."""
from __future__ import annotations

import logging
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import SegsweepError, SweepError
from ..record import check_writable
from .cells import Sweep
from .engines import Echo, SweepOutcome
from .launch_resume import slurm_job_id
from .launch_spec import SlurmSpec, slurm_options
from .storage import SECRET_QUERY_KEYS, is_rdb_url, masked_url
from .trial import WorkerPlan

log = logging.getLogger(__name__)

NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run")  # private to each node on a cluster
NODE_LOCAL_FS = ("tmpfs", "ramfs", "devtmpfs")


# --------------------------------------------------------------------------- checks before submitting


def check_shared_storage(location: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a storage the cluster's nodes cannot share: SQLite, or a journal on a node-local path."""
    if location.startswith("sqlite"):
        raise SweepError(f"--launcher slurm with --storage {location}: SQLite locks the whole file and breaks on "
                         "network filesystems; use PostgreSQL (--storage postgresql://USER@HOST/DB) or a journal "
                         "file on a filesystem every node mounts")
    if is_rdb_url(location):
        return
    path = Path(os.path.abspath(os.path.expanduser(location)))
    where = node_local(path, environ)
    if where:
        raise SweepError(f"--launcher slurm: the journal {path} is {where}, which is local to each node, so "
                         "workers on other nodes would each see their own; put it on a filesystem every node "
                         "mounts (e.g. --storage $HOME/sweeps/journal.log or --results under $HOME) or use "
                         "--storage postgresql://USER@HOST/DB")


def check_no_password(location: str) -> None:
    """Refuse a database URL with a password: the job array's pickled plan would store it on disk."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not is_rdb_url(location) or location.startswith("sqlite"):
        return
    try:
        parsed = make_url(location)
    except (ArgumentError, ValueError):
        return  # opening the storage says what is wrong with the URL
    if parsed.password is not None or any(key.lower() in SECRET_QUERY_KEYS for key in parsed.query):
        raise SweepError(f"--launcher slurm with --storage {masked_url(location)}: the URL holds a password, which the "
                         "submitted job would store in its files; keep it in PGPASSWORD or ~/.pgpass (the workers' "
                         "environment passes it on) and give postgresql://USER@HOST/DB; nothing was submitted")


def node_local(path: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """Why `path` is private to each node ("under /tmp", "on a tmpfs filesystem"), or None."""
    env = os.environ if environ is None else environ
    local = [*NODE_LOCAL, *([env["TMPDIR"]] if env.get("TMPDIR") else [])]
    root = next((p for p in local if path == Path(p) or Path(p) in path.parents), None)
    if root:
        return f"under {root}"
    fstype = _filesystem(path)
    return f"on a {fstype} filesystem" if fstype in NODE_LOCAL_FS else None


def _filesystem(path: Path) -> str | None:
    """The type of the filesystem `path` is on (Linux /proc/mounts), or None when unknown."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    best: tuple[int, str | None] = (-1, None)
    for point, fstype in (m for m in mounts if len(m) == 2):
        if (path == Path(point) or Path(point) in path.parents) and len(point) > best[0]:
            best = (len(point), fstype)
    return best[1]


def check_slurm_installed() -> None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise SweepError("--launcher slurm: SLURM's sbatch/sinfo are not on PATH; run this on a machine that can "
                         "submit jobs (a cluster's login node), or use --workers N on this machine")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise SweepError("--launcher slurm needs submitit: pip install 'segsweep[slurm]'") from None


def check_partition(options: SlurmSpec) -> None:
    """The partition must exist (sinfo lists it); None means the cluster's default one."""
    found = _run(["sinfo", "--noheader", "--format=%R"], "sinfo")
    partitions = sorted({line.strip() for line in found.splitlines() if line.strip()})
    if options.partition is not None and options.partition not in partitions:
        raise SweepError(f"--slurm partition={options.partition}: no such partition on this cluster; "
                         f"sinfo lists: {', '.join(partitions) or 'none'}; nothing was submitted")


def _run(command: Sequence[str], what: str) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SweepError(f"--launcher slurm: {what} failed ({exc}); nothing was submitted") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise SweepError(f"--launcher slurm: {what} failed ({reason}); nothing was submitted")
    return done.stdout


# --------------------------------------------------------------------------- on the node


@dataclass(frozen=True)
class ResourcePlan:
    devices: tuple[str | None, ...]  # one worker process per entry: a GPU id, or None (CPU)
    threads: int  # torch threads of each


def resource_plan(environ: Mapping[str, str] | None = None, cpus: int | None = None) -> ResourcePlan:
    """One worker per visible GPU (`CUDA_VISIBLE_DEVICES`), else one; the task's CPUs split among them."""
    env = os.environ if environ is None else environ
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    gpus = tuple(d for d in visible if d and d not in ("-1", "NoDevFiles"))
    if cpus is None:
        given = env.get("SLURM_CPUS_PER_TASK", "")
        cpus = int(given) if given.isdigit() else len(os.sched_getaffinity(0))
    devices: tuple[str | None, ...] = gpus or (None,)
    return ResourcePlan(devices=devices, threads=max(1, cpus // len(devices)))


def _child(plan: WorkerPlan, device: str | None) -> None:
    """One worker process on the node: its GPU, and SIGUSR2 between trials stops it cleanly."""
    from .optuna_engine import _worker_entry

    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    signal.signal(signal.SIGUSR2, _stop_between_trials)
    _worker_entry(plan)


def _stop_between_trials(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the worker loop's clean stop; during a trial fit handles SIGUSR2 itself


class SlurmWorker:
    """What each array task runs (pickled by submitit): one worker process per GPU it was given
    (else one), the task's CPUs split among them, each claiming trials until the sweep is settled.

    sbatch's `--signal=USR2@signal_delay_s` warns the task before its time limit (or a
    preemption): its workers finish the current step, save `last.pt`, queue their trial to
    resume from it (`launch_resume`) and stop; the task then requeues itself (`scontrol
    requeue`), and whichever worker claims the trial next continues it in the same run folder.
    A SIGTERM without that warning (`scancel`, a preemption without `--signal`) stops the
    workers the same way, but the task does not requeue itself: a cancelled job stays
    cancelled, and SLURM requeues a preempted one itself (the array is `--requeue`); the
    queued trials go to any other worker, or to the next run of the command. A worker killed
    without warning leaves a stale trial, retried after the heartbeat grace period as on one
    machine.
    """

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan

    def __call__(self, task: int) -> str:
        from ..cli import install_log_handler

        install_log_handler()
        resources = resource_plan()
        warned: list[int] = []
        children: list[multiprocessing.process.BaseProcess] = []

        def on_warning(signum: int, frame: Any) -> None:  # forwarded in case only this process got it
            warned.append(signum)
            for child in children:
                if child.pid is not None and child.is_alive():
                    os.kill(child.pid, signum)

        signal.signal(signal.SIGUSR2, on_warning)
        signal.signal(signal.SIGTERM, lambda signum, frame: log.warning("worker task: SIGTERM; workers save and stop"))
        ctx = multiprocessing.get_context("spawn")
        for index, device in enumerate(resources.devices):
            plan = replace(self.plan, worker=task * len(resources.devices) + index, threads=resources.threads)
            children.append(ctx.Process(target=_child, args=(plan, device), name=f"sweep-worker-{index}"))
            children[-1].start()
        log.info(f"worker task {task} ({slurm_job_id()}): {len(children)} worker(s) on "
                 f"{', '.join(d or 'cpu' for d in resources.devices)}, {resources.threads} thread(s) each")
        for child in children:
            child.join()
        for child in children:
            if child.exitcode is not None and child.exitcode < 0:
                log.warning(f"worker {child.name} (pid {child.pid}) was killed by {signal.Signals(-child.exitcode).name}; "
                            "its trial is retried once its heartbeat is stale")
        if any(child.exitcode == 2 for child in children):
            raise SweepError(f"worker task {task}: a worker stopped with an error (see above)")
        if warned:
            return self._requeue()
        return "done"

    def _requeue(self) -> str:
        job = slurm_job_id()
        done = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True, timeout=60,
                              check=False)
        if done.returncode != 0:
            log.warning(f"warning: scontrol requeue {job} failed: {done.stderr.strip()}")
            return "stopped"
        log.info(f"requeued {job}: its trials resume from their last.pt")
        return "requeued"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook when its own handler sees the warning (before any worker started): run again."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# --------------------------------------------------------------------------- submitting


def submit_slurm_sweep(sweep: Sweep, *, workers: int, storage: str | None, results: Path,
                       pairs: Sequence[str], echo: Echo) -> SweepOutcome:
    """Queue the sweep in its shared storage and submit `workers` array tasks; returns at once."""
    from .optuna_engine import _open_before_any_work, _queue, _write_sweep_yaml, quiet_optuna
    from .study import open_study, pending_trials

    if sweep.rounds:
        raise SweepError(f"{sweep.path}: {'rounds' if sweep.design.kind == 'fraction' else 'seeds'}: a sweep in "
                         "rounds needs the driver that analyses each round, which runs with the local launcher "
                         "(its workers may still be on other machines: --storage postgresql://...); with "
                         "--launcher slurm list fixed seeds (seeds: [0, 1, 2]) on a grid of arms")
    options = slurm_options(sweep.spec.slurm, pairs, str(sweep.path))
    sweep_dir = (results / "sweeps" / sweep.name).resolve()
    location = storage or sweep.spec.optuna.storage or str(sweep_dir / "journal.log")
    if not is_rdb_url(location):
        location = os.path.abspath(os.path.expanduser(location))
    check_no_password(location)
    check_slurm_installed()
    check_shared_storage(location)
    check_partition(options)
    check_writable(sweep_dir)
    if node_local(sweep_dir):
        log.warning(f"warning: the run folders go to {sweep_dir}, {node_local(sweep_dir)}: fine on one node, but a "
                    "trial resumed on another node needs its last.pt there: put --results on a shared filesystem")
    quiet_optuna()
    store = _open_before_any_work(sweep, sweep_dir, location, prepare_data=True)
    study = open_study(sweep, store)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    where = _write_sweep_yaml(sweep, sweep_dir, location)
    echo(_queue(study, sweep, where))
    plan = WorkerPlan(sweep=sweep, sweep_dir=sweep_dir, storage=location, show_logs=True, progress_bars=False,
                      resume_interrupted=True)
    array = _submit(plan, options, workers, sweep_dir / "slurm")
    status = shlex.join(["segsweep", "sweep", str(sweep.path), *sweep.overrides, "--status",
                         *(["--storage", location] if storage else []),  # no password (refused above)
                         *(["--results", str(results)] if str(results) != "results" else [])])
    for line in (f"submitted job array {array}: {workers} worker(s) on partition {options.partition or '(default)'}",
                 f"storage: {where}", f"logs: {sweep_dir / 'slurm'}", f"watch: squeue -j {array}",
                 f"status: {status}", f"cancel: scancel {array}"):
        echo(line)
    pending = pending_trials(store.get_all_trials(store.get_study_id_from_name(sweep.name), deepcopy=False), sweep)
    return SweepOutcome(sweep_dir=sweep_dir, rows=[], pending=pending, exit_code=0)


def _submit(plan: WorkerPlan, options: SlurmSpec, workers: int, folder: Path) -> str:
    """Submit the job array through submitit; returns its id (what squeue and scancel take)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=1000)
    parameters: dict[str, Any] = {
        "job_name": f"segsweep-{plan.sweep.name}", "time": options.minutes, "cpus_per_task": options.cpus_per_task,
        "ntasks_per_node": 1, "signal_delay_s": options.signal_delay_s, "setup": list(options.setup),
        "array_parallelism": options.array_parallelism or workers, "additional_parameters": {
            "requeue": True, **options.extra_options()},
    }
    for key in ("partition", "mem", "account", "qos"):
        if getattr(options, key) is not None:
            parameters[key] = getattr(options, key)
    if options.gpus_per_task:
        parameters["gpus_per_task"] = options.gpus_per_task
    executor.update_parameters(**parameters)
    try:
        jobs = executor.map_array(SlurmWorker(plan), list(range(workers)))
    except (subprocess.CalledProcessError, SegsweepError, RuntimeError, OSError, ValueError) as exc:
        output = getattr(exc, "stderr", None) or getattr(exc, "output", None) or str(exc)
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        reason = (text.strip().splitlines() or [type(exc).__name__])[-1]
        raise SweepError(f"--launcher slurm: sbatch refused the job array ({reason})") from None
    return str(jobs[0].job_id).split("_")[0]
