"""What every launcher does before any worker starts: open the storage (an unreachable database
fails here), prepare the data once (a data problem leaves nothing behind), open or create the
study, decide the sweep's `auto` speed settings where asked, and record the resolved sweep in
sweep.yaml. A launcher then queues the trials and starts its workers (`launchers.py`).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.storages import BaseStorage

from ..errors import SegsweepError
from ..record import atomic_write_text
from .cells import Sweep
from .storage import is_rdb_url, masked_url, open_storage, quiet_optuna
from .study import enqueue_grid, open_study


@dataclass(frozen=True)
class Prepared:
    """A sweep whose storage, data and study are ready for workers."""

    sweep: Sweep
    sweep_dir: Path
    location: str  # the storage: an RDB URL or a journal file path
    where: str  # the storage as the console shows it (a URL without its password)
    store: BaseStorage
    study: optuna.Study
    study_id: int
    speed_choices: dict | None  # the sweep's `auto` speed settings; None: each worker's node decides (SLURM)


def prepare(sweep: Sweep, sweep_dir: Path, location: str, *, prepare_data: bool, decide_speed: bool,
            threads: int | None = None) -> Prepared:
    """Open, prepare and record the sweep. `decide_speed`: decide the `auto` speed settings here,
    once, for workers of `threads` threads (None: torch's default); else each worker's node
    decides (a SLURM task, on its compute node; the first to decide wins)."""
    quiet_optuna()
    store = open_before_any_work(sweep, sweep_dir, location, prepare_data=prepare_data)
    study = open_study(sweep, store)
    study_id = store.get_study_id_from_name(sweep.name)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    choices = speed_choices(study, sweep, threads, sweep_dir) if decide_speed else None
    where = write_sweep_yaml(sweep, sweep_dir, location, choices)
    return Prepared(sweep, sweep_dir, location, where, store, study, study_id, choices)


def open_before_any_work(sweep: Sweep, sweep_dir: Path, location: str, prepare_data: bool) -> BaseStorage:
    """Open the storage and prepare the data; a data problem leaves nothing behind (not even
    the journal file the storage just created)."""
    created = next((p for p in reversed((sweep_dir, *sweep_dir.parents)) if not p.exists()), None)
    store = open_storage(location, sweep.spec.optuna)
    if prepare_data:
        try:
            prepare_sweep_data(sweep)
        except SegsweepError:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
    return store


def prepare_sweep_data(sweep: Sweep) -> None:
    """Generate/cache each distinct dataset once here, so workers do not all do it at once.

    It also turns a data problem (missing root, corrupt file) into one error before any trial.
    """
    from ..data import build_data
    from ..spec import override_spec, spec_to_dict

    specs = [override_spec(sweep.base, cell.overrides) for cell in sweep.cells] or [sweep.base]
    seen: set[str] = set()
    for spec in specs:
        key = json.dumps(spec_to_dict(spec)["data"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            build_data(spec)


def speed_choices(study: optuna.Study, sweep: Sweep, threads: int | None, sweep_dir: Path) -> dict[str, dict]:
    """`train.channels_last: auto` decided once for the whole sweep (`segsweep.train.speed.sweep_choices`),
    stored in the study so that every trial on every machine, and every rerun, uses it."""
    stored = study.user_attrs.get("speed_choices")
    if isinstance(stored, dict):
        return stored
    from ..train.speed import sweep_choices

    specs = [sweep.trial_spec(c.overrides, sweep.base.seed, "probe", c.label) for c in sweep.cells] or [sweep.base]
    choices = sweep_choices(specs, threads, sweep_dir / "speed_choices.json")
    study.set_user_attr("speed_choices", choices)
    return choices


def write_sweep_yaml(sweep: Sweep, sweep_dir: Path, location: str, choices: dict | None = None) -> str:
    """Record the resolved sweep in sweep.yaml; returns where the storage is, for the console."""
    if is_rdb_url(location):
        where = recorded = masked_url(location)
    else:
        where = location
        default = Path(location).resolve() == (sweep_dir / "journal.log").resolve()
        recorded = "journal.log" if default else str(Path(location).resolve())
    tree = sweep.resolved(recorded)
    if choices:
        tree["speed_choices"] = choices
    atomic_write_text(sweep_dir / "sweep.yaml", yaml.safe_dump(tree, sort_keys=False))
    return where


def queue_line(ready: Prepared) -> str:
    """Queue a grid's missing cells x seeds (idempotent); returns the line that says what the sweep runs."""
    sweep = ready.sweep
    if sweep.method == "grid":
        queued = enqueue_grid(ready.study, sweep)
        total = len(sweep.cells) * len(sweep.seeds)
        return (f"sweep {sweep.name}: {len(sweep.cells)} cells x {len(sweep.seeds)} seeds = {total} trials; "
                f"{queued} queued now, {total - queued} already held; storage {ready.where}")
    return (f"sweep {sweep.name}: {sweep.method} search, run_cap {sweep.spec.run_cap}, pruner {sweep.spec.pruner}, "
            f"sampler seed {sweep.spec.optuna.sampler_seed}; storage {ready.where}")
