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
from .contract import Echo, FitFn, SweepOutcome, WorkerPlan
from .prepare import prepare, queue_line
from .resume import slurm_job_id
from .slurm_spec import SlurmSpec, slurm_options
from .storage import SECRET_QUERY_KEYS, is_rdb_url, masked_url
from .study import pending_trials

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
    """One worker process on the node, on its GPU. The warning signal stops it: during a trial
    `fit` finishes the step, saves last.pt and the trial is queued to resume; between trials
    it raises KeyboardInterrupt, the worker loop's clean stop."""
    from .worker import worker_entry

    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    signal.signal(signal.SIGUSR2, signal.default_int_handler)
    worker_entry(plan)


class SlurmWorker:
    """What each array task runs (pickled by submitit): one worker process per GPU it was given
    (else one), the task's CPUs split among them, each claiming trials until the sweep is settled.

    Signals and requeue are submitit's, in one place: sbatch's `--signal=USR2@signal_delay_s`
    warns the task before its time limit (or a preemption) and submitit's handler calls
    `checkpoint`, which passes the warning to the workers and waits while they finish the
    current step, save `last.pt`, queue their trial to resume from it (`resume.py`) and stop;
    submitit then requeues the task (`scontrol requeue`), and whichever worker claims the
    trial next continues it in the same run folder. A SIGTERM without that warning
    (`scancel`, a preemption without `--signal`) reaches the workers from SLURM itself and
    stops them the same way; the task is not requeued: a cancelled job stays cancelled, and
    SLURM requeues a preempted one itself (the array is `--requeue`). A worker killed without
    warning leaves a stale trial, retried after the heartbeat grace period as on one machine.
    """

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self._children: list[multiprocessing.process.BaseProcess] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan}  # what submitit pickles, also for a requeue: never the processes

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["plan"])  # type: ignore[misc]

    def __call__(self, task: int) -> str:
        from ..logs import install_log_handler

        install_log_handler()
        resources = resource_plan()
        ctx = multiprocessing.get_context("spawn")
        for index, device in enumerate(resources.devices):
            plan = replace(self.plan, worker=task * len(resources.devices) + index, threads=resources.threads)
            self._children.append(ctx.Process(target=_child, args=(plan, device), name=f"sweep-worker-{index}"))
            self._children[-1].start()
        log.info(f"worker task {task} ({slurm_job_id()}): {len(self._children)} worker(s) on "
                 f"{', '.join(d or 'cpu' for d in resources.devices)}, {resources.threads} thread(s) each")
        self._join()
        if any(child.exitcode == 2 for child in self._children):
            raise SweepError(f"worker task {task}: a worker stopped with an error (see above)")
        return "done"

    def _join(self) -> None:
        for child in self._children:
            child.join()
        for child in self._children:
            if child.exitcode is not None and child.exitcode < 0:
                log.warning(f"worker {child.name} (pid {child.pid}) was killed by "
                            f"{signal.Signals(-child.exitcode).name}; its trial is retried once its heartbeat is stale")

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on the warning signal: the workers save and stop, then submitit
        requeues the task to run again (its trials resume from their last.pt)."""
        import submitit

        for child in self._children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGUSR2)  # in case only the task's process got the warning
        self._join()
        log.info(f"{slurm_job_id()}: workers stopped; submitit requeues the task and its trials resume from last.pt")
        return submitit.helpers.DelayedSubmission(SlurmWorker(self.plan), *args, **kwargs)


# --------------------------------------------------------------------------- submitting


def submit_slurm_sweep(sweep: Sweep, *, workers: int, storage: str | None, results: Path, fit_fn: FitFn | None,
                       pairs: Sequence[str], echo: Echo) -> SweepOutcome:
    """Queue the sweep in its shared storage and submit `workers` array tasks; returns at once."""
    if fit_fn is not None:
        raise SweepError("--launcher slurm trains with segsweep.train.fit in the job; fit_fn= is for local workers")
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
    # `auto` speed settings are decided by the first worker task on a compute node, not here
    ready = prepare(sweep, sweep_dir, location, prepare_data=True, decide_speed=False)
    echo(queue_line(ready))
    plan = WorkerPlan(sweep=sweep, sweep_dir=sweep_dir, storage=location, show_logs=True, progress_bars=False,
                      resume_interrupted=True)
    array = _submit(plan, options, workers, sweep_dir / "slurm")
    status = shlex.join(["segsweep", "sweep", str(sweep.path), *sweep.overrides, "--status",
                         *(["--storage", location] if storage else []),  # no password (refused above)
                         *(["--results", str(results)] if str(results) != "results" else [])])
    for line in (f"submitted job array {array}: {workers} worker(s) on partition {options.partition or '(default)'}",
                 f"storage: {ready.where}", f"logs: {sweep_dir / 'slurm'}", f"watch: squeue -j {array}",
                 f"status: {status}", f"cancel: scancel {array}"):
        echo(line)
    pending = pending_trials(ready.store.get_all_trials(ready.study_id, deepcopy=False), sweep)
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
