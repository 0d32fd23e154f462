"""What reports read beyond the run records of `segsweep.analysis.records` (re-exported here):
the Optuna study in a sweep's storage."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..analysis.records import (  # noqa: F401  (re-exported: reports read records through here)
    DATA_KEYS, ReportError, RunRecord, base_experiment, check_same_data, data_identity, find_run_dirs, load_run,
    load_runs, read_sweep_spec,
)


def load_optuna_study(sweep_dir: Path, sweep: Mapping[str, Any]) -> tuple[Any, str]:
    """The sweep's Optuna study (journal.log in the sweep folder, or sweep.yaml optuna.storage),
    or (None, why not). Opened as sweeps open it (`segsweep.sweeps.storage.open_storage`)."""
    import optuna

    from ..sweeps.spec import OptunaSpec
    from ..sweeps.storage import open_storage, quiet_optuna

    quiet_optuna()
    opt = sweep.get("optuna") if isinstance(sweep.get("optuna"), Mapping) else {}
    setting = opt.get("storage") if isinstance(opt.get("storage"), str) else None
    journal = sweep_dir / "journal.log"
    if journal.is_file():
        location, where = str(journal), "journal.log"
    elif setting and "://" in setting:
        location, where = setting, setting
    elif setting and (Path(setting).is_file() or (sweep_dir / setting).is_file()):
        location = str(Path(setting) if Path(setting).is_file() else sweep_dir / setting)  # as given, or beside sweep.yaml
        where = setting
    else:
        return None, "no Optuna storage found (no journal.log in the sweep folder, no optuna.storage in sweep.yaml)"
    try:
        storage = open_storage(location, OptunaSpec())
        names = sorted(optuna.get_all_study_names(storage))
    except Exception as exc:  # any storage problem is a note in the report, not a failure
        return None, f"Optuna storage {where} could not be opened: {type(exc).__name__}: {exc}"
    if not names:
        return None, f"Optuna storage {where} holds no study"
    wanted = [opt.get("study_name"), sweep.get("name"), sweep_dir.name]
    name = next((n for n in wanted if n in names), names[0])
    return optuna.load_study(study_name=name, storage=storage), f"study {name!r} in {where}"


def completed_trials(study: Any) -> list[Any]:
    """The study's trials that completed (they hold a value), in trial order."""
    import optuna

    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


