"""The W&B engine: a sweep translated to W&B's sweep configuration (and each agent run's config
back to overrides), and W&B's agent running the trials in this process through the same `fit`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..errors import SpecError, SweepError
from ..record import check_writable, new_run_dir
from ..spec import override_spec
from .cells import Sweep, base_values
from .contract import Echo, FitFn, SweepOutcome, real_fit, trial_tracker
from .outputs import disk_usage, human_size
from .spec import cell_label

WANDB_HINT = ("run the Optuna engine instead (drop --engine wandb; it works offline, and "
              "tracking.wandb.mode=offline logs every trial to W&B for a later `wandb sync`)")


def to_wandb_config(sweep: Sweep) -> dict[str, Any]:
    """The W&B sweep configuration for `sweep` (a pure function of it).

    Our additions are translated: `seeds` becomes the `seed` parameter (a grid over it), `arms`
    a categorical `arm` parameter whose labels the in-process agent maps back to overrides;
    `experiment`, `keep_last` and `optuna` are dropped (the agent runs in-process, so no
    `program`). Constant parameters stay W&B constants.
    """
    if sweep.rounds:
        raise SweepError(f"{sweep.path}: this sweep runs in rounds analysed one after another (a seed schedule or a "
                         "fraction), which W&B's sweep server cannot drive: use --engine optuna (its runs still log "
                         "to W&B)")
    spec = sweep.spec
    base = base_values(sweep)
    parameters: dict[str, Any] = {}
    if spec.arms is not None:
        parameters["arm"] = {"values": [cell_label(arm) for arm in spec.arms]}
    for key, param in spec.parameters.items():
        entry = param.model_dump(mode="json", exclude_none=True, exclude={"value"})
        if param.kind == "constant":
            entry = {"value": base[key]}  # as resolved: a command-line override has the last word
        if "values" in entry:
            entry["values"] = list(entry["values"])
        parameters[key] = entry
    parameters["seed"] = {"values": list(sweep.seeds)} if spec.method == "grid" else {"value": sweep.seeds[0]}
    config: dict[str, Any] = {
        "name": sweep.name, "method": spec.method,
        "metric": {"name": spec.metric.name, "goal": spec.metric.goal}, "parameters": parameters,
    }
    if spec.description:
        config["description"] = spec.description
    if spec.run_cap is not None:
        config["run_cap"] = spec.run_cap
    if spec.early_terminate is not None:
        config["early_terminate"] = spec.early_terminate.model_dump(mode="json", exclude_none=True)
    return config


def wandb_overrides(sweep: Sweep, config: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """(overrides, seed) from a W&B run's config: the inverse of `to_wandb_config`'s parameters."""
    arms = {cell_label(arm): dict(arm) for arm in (sweep.spec.arms or ())}
    overrides: dict[str, Any] = {}
    if sweep.spec.arms is not None:
        label = config.get("arm")
        if label not in arms:
            raise SpecError(f"W&B run config: arm {label!r} is not an arm of {sweep.path} (valid: {', '.join(arms)})")
        overrides.update(arms[label])
    for key, param in sweep.spec.parameters.items():
        if param.kind != "constant" and key in config:
            overrides[key] = config[key]
    return overrides, int(config.get("seed", sweep.seeds[0]))


def check_wandb_available(timeout_s: float = 5.0) -> str:
    """Fail fast (one line, within `timeout_s`) when W&B sweeps cannot work here; return the server URL."""
    from ..tracking import DEFAULT_WANDB_URL, server_answers, wandb_credentials

    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        raise SweepError(f"--engine wandb needs the W&B server, but WANDB_MODE={mode}; {WANDB_HINT}")
    base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_URL
    if wandb_credentials(base_url) is None:
        raise SweepError(f"--engine wandb needs W&B credentials (WANDB_API_KEY or `wandb login`) and network; {WANDB_HINT}")
    if not server_answers(base_url, timeout_s):
        raise SweepError(f"--engine wandb: the W&B server {base_url} did not answer within {timeout_s:.0f} s "
                         f"(no network?); {WANDB_HINT}")
    return base_url


def _agent_params() -> dict[str, Any]:
    """The parameters `wandb.agent` chose for this run (it writes them before calling the function)."""
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path or not Path(path).is_file():
        raise SweepError("wandb.agent gave no sweep parameters (WANDB_SWEEP_PARAM_PATH is unset)")
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {k: v["value"] for k, v in data.items() if isinstance(v, dict) and "value" in v}


def run_wandb_sweep(sweep: Sweep, *, workers: int, storage: str | None, results: Path, sweep_id: str | None,
                    fit_fn: FitFn | None, echo: Echo, launcher: str = "local",
                    pairs: Sequence[str] = ()) -> SweepOutcome:
    """Create (or join with `sweep_id`) a W&B sweep and run its trials in this process (W&B's
    agent: the local launcher only; `run_sweep` refuses another).

    `workers` and `storage` are the Optuna engine's: W&B's server holds the sweep."""
    check_wandb_available()
    import wandb

    w = sweep.base.tracking.wandb
    sweep_dir = results / "sweeps" / sweep.name
    check_writable(sweep_dir)
    if sweep_id is None:
        sweep_id = wandb.sweep(to_wandb_config(sweep), entity=w.entity, project=w.project)
    echo(f"W&B sweep {sweep_id} ({w.entity or 'default entity'}/{w.project}); results in {sweep_dir}")
    fit = fit_fn or real_fit()
    rows: list[dict[str, Any]] = []

    def one_run() -> None:
        overrides, seed = wandb_overrides(sweep, _agent_params())
        label = cell_label(overrides)
        spec = sweep.trial_spec(overrides, seed, f"{sweep.name}.w{len(rows):04d}", label)
        spec = override_spec(spec, {"tracking.wandb.mode": "online"})  # joins the agent's run
        run_dir = new_run_dir(sweep_dir, spec.name, create=False)
        result = fit(spec, run_dir, tracker=trial_tracker(spec, run_dir))
        if not sweep.spec.keep_last and result.status != "interrupted":
            (run_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)
        rows.append({"cell": label, "seed": seed, "status": result.status, "run_dir": str(run_dir),
                     "val/dice": result.metrics.get("val/dice")})

    count = sweep.spec.run_cap if sweep.method != "grid" else None
    wandb.agent(sweep_id, function=one_run, entity=w.entity, project=w.project, count=count)
    runs = sweep_dir / "runs"
    echo(f"{len(rows)} runs; disk used by trial runs: {human_size(disk_usage(runs))} in {runs}")
    return SweepOutcome(sweep_dir=sweep_dir, rows=rows, pending=0, exit_code=0)
