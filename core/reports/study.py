"""Report of a search study (TPE/random over a recipe) and of the recipe it chose.

`write_study_report(sweep_dir, final_runs, out)` reads the sweep folder (sweep.yaml and the
Optuna storage) and the final recipe's run folders (trained once per seed, then tested), and
writes `report.md` with figures: parameter importances, the optimisation history, parallel
coordinates, and the final runs' Dice curves. The study's trials are ranked on the metric they
were tuned on (val); test Dice appears only for the final runs.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..format import fmt_float, fmt_interval, fmt_value
from ..record import atomic_write_text
from .honesty import DOUBLE_SIGMOID, double_sigmoid, double_sigmoid_lines
from .figures import default_style, plot_final_curves, plot_history, plot_optuna
from ..analysis.inference import importance_evaluator
from .markdown import relative_path, table
from .records import ReportError, RunRecord, completed_trials, find_run_dirs, load_optuna_study, load_run, read_sweep_spec
from ..analysis.stats import mean_sd, t_interval

TOP_TRIALS = 10
# Keys fixed by every trial that say how a trial ran rather than what it trained.
SETTING_KEYS = ("train.time_budget_s", "train.threads", "train.final_test")


def _space_rows(parameters: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for key, p in parameters.items():
        if not isinstance(p, Mapping):
            continue
        if "value" in p:
            rows.append([key, "fixed", fmt_value(p["value"])])
        elif "values" in p:
            rows.append([key, "choice", ", ".join(fmt_value(v) for v in p["values"])])
        else:
            rows.append([key, str(p.get("distribution", "uniform")),
                         f"{fmt_value(p.get('min'))} … {fmt_value(p.get('max'))}"])
    return rows


def _final_groups(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Final runs by experiment name and model ("pets_mini_best (unet)"), seeds sorted."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[f"{run.config.get('name', '?')} ({run.config.get('model.name', '?')})"].append(run)
    return {k: sorted(v, key=lambda r: r.seed) for k, v in sorted(groups.items())}


def _choice_rows(done: Sequence[Any], params: Mapping[str, Any]) -> list[list[str]]:
    """For each categorical parameter and choice: trials, best and median objective."""
    rows = []
    for key, p in params.items():
        if not isinstance(p, Mapping) or "values" not in p:
            continue
        for choice in p["values"]:
            values = [t.value for t in done if t.params.get(key) == choice]
            rows.append([key, fmt_value(choice), str(len(values)),
                         fmt_float(max(values)) if values else "—",
                         fmt_float(float(np.median(values))) if values else "—"])
    return rows


def _importances(study: Any) -> list[tuple[str, float]]:
    import optuna

    if len(completed_trials(study)) < 2:
        return []
    try:
        return list(optuna.importance.get_param_importances(study, evaluator=importance_evaluator()[0]).items())
    except Exception:  # e.g. one distinct value everywhere
        return []


def _final_row(model: str, runs: Sequence[RunRecord]) -> list[str]:
    tests = [r.test_dice for r in runs if math.isfinite(r.test_dice)]
    mean, sd = mean_sd(tests)
    walls = [r.number("wall_s") for r in runs]
    budgets = {r.summary.get("time_budget_s") for r in runs}
    return [
        model, ", ".join(str(r.seed) for r in runs), f"{fmt_float(mean)} ± {fmt_float(sd)}",
        fmt_interval(t_interval(tests)),
        ", ".join(fmt_float(r.test_dice) for r in runs),
        ", ".join(fmt_float(r.val_dice) for r in runs),
        ", ".join(str(r.summary.get("epochs_run", "—")) for r in runs),
        f"{max(walls):.0f}" if walls and all(map(math.isfinite, walls)) else "—",
        ", ".join(fmt_value(b) for b in sorted(budgets, key=str)),
    ]


def _final_lines(groups: Mapping[str, Sequence[RunRecord]], figures: Mapping[str, str],
                 target: float | None) -> list[str]:
    """The final recipe's test Dice per model, with the verdict against `target`."""
    lines = ["## Final recipe, tested once per seed", ""]
    if not groups:
        return lines + ["No final runs were given (`--final RUN_DIR ...`).", ""]
    rows, verdicts = [], []
    for model, runs in groups.items():
        rows.append(_final_row(model + (" (double sigmoid)" if any(map(double_sigmoid, runs)) else ""), runs))
        tests = [r.test_dice for r in runs if math.isfinite(r.test_dice)]
        if target is not None and tests:
            mean = mean_sd(tests)[0]
            ok = mean >= target
            verdicts.append(f"- **{model}**: mean test/dice {fmt_float(mean)} over {len(tests)} seed(s) "
                            f"{'≥' if ok else '<'} target {target:.3f}: {'met' if ok else 'not met'}.")
    lines += table(["recipe (model)", "seeds", "test/dice mean ± sd", "95% CI (t, seeds)", "test/dice per seed",
                    "val/dice per seed", "epochs", "max wall s", "train.time_budget_s"], rows)
    lines += verdicts + ([""] if verdicts else [])
    marked = double_sigmoid_lines([r for runs in groups.values() for r in runs])
    lines += marked + ([""] if marked else [])
    lines += ["Test Dice is the mean per-image Dice at threshold 0.5 of the best-on-val checkpoint. "
              "Wall s is summary.json's `wall_s`: from the start of training (data, model, epochs, "
              "validation, the test pass) to the records; the process start-up comes on top."]
    if "curves" in figures:
        lines += ["", f"![final curves]({figures['curves']})"]
    return lines + [""]


def _study_header(sweep: Mapping[str, Any], study: Any, metric: str, params: Mapping[str, Any]) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    states = defaultdict(int)
    for t in trials:
        states[t.state.name.lower()] += 1
    fixed = {k: p["value"] for k, p in params.items() if isinstance(p, Mapping) and "value" in p}
    return [
        f"Method `{sweep.get('method')}` (Optuna sampler seed {(sweep.get('optuna') or {}).get('sampler_seed')}), "
        f"objective `{metric}` ({(sweep.get('metric') or {}).get('goal', 'maximize')}), "
        f"seeds {sweep.get('seeds')}; {len(trials)} trials: "
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".",
        "Every trial ran with " + ", ".join(f"`{k}={fmt_value(fixed[k])}`" for k in SETTING_KEYS if k in fixed)
        + " on the base experiment `" + str(sweep.get("experiment")) + "`.", "",
        "### Search space", "",
    ]


def _trial_lines(study: Any, metric: str, params: Mapping[str, Any]) -> list[str]:
    """The best completed trials, and every trial by categorical choice."""
    import optuna

    done = sorted((t for t in completed_trials(study) if t.value is not None),
                  key=lambda t: -t.value if study.direction == optuna.study.StudyDirection.MAXIMIZE else t.value)
    varied = [k for k, p in params.items() if isinstance(p, Mapping) and "value" not in p]
    lines = []
    if done:
        lines += [f"### Best {min(TOP_TRIALS, len(done))} of {len(done)} completed trials", ""]
        rows = [[str(t.number), fmt_float(t.value), str(t.user_attrs.get("epochs", "—")),
                 *(fmt_value(t.params.get(k, "—")) for k in varied)] for t in done[:TOP_TRIALS]]
        lines += table(["trial", metric, "epochs", *varied], rows)
    choices = _choice_rows(done, params)
    if choices:
        lines += ["### Choices", "", "Every completed trial, by the value of each categorical parameter.", ""]
        lines += table(["parameter", "choice", "trials", f"best {metric}", f"median {metric}"], choices)
    return lines


def _importance_lines(study: Any) -> list[str]:
    importances = _importances(study)
    if not importances:
        return []
    return ["### Parameter importances", "",
            "How much each parameter's distribution among the best trials differs from the rest "
            "(Optuna's evaluator, below). A sampler that settles on one choice early (TPE) leaves "
            "that choice in nearly every trial, so it can rank low even when it matters: read it "
            "with the choices table.", ""] + table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in importances])


def _double_sigmoid_trials(sweep: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """A marked line when the study's trials trained with the double sigmoid (base experiment or search space)."""
    base = ((sweep.get("experiment_spec") or {}).get("loss") or {}).get("double_sigmoid_bce") or 0
    if "loss.double_sigmoid_bce" in params:
        where = "the search space varies `loss.double_sigmoid_bce`: trials with a weight above 0 trained"
    elif isinstance(base, int | float) and base > 0:
        where = f"every trial trained (the base experiment sets `loss.double_sigmoid_bce: {base:g}`)"
    else:
        return []
    return [f"- **Double sigmoid:** {where} with {DOUBLE_SIGMOID}, the study's BCE term reproduced on purpose, not a "
            "correct sigmoid head.", ""]


def render(sweep: Mapping[str, Any], study: Any, study_note: str, groups: Mapping[str, Sequence[RunRecord]],
           figures: Mapping[str, str], notes: Sequence[str], target: float | None, sources: Sequence[str]) -> str:
    name = sweep.get("name", "study")
    metric = (sweep.get("metric") or {}).get("name", "value")
    params = sweep.get("parameters") or {}
    lines = [f"# Recipe study: {name}", ""]
    lines += _final_lines(groups, figures, target)
    lines += ["## Study", "", f"Source: {study_note}."]
    if study is None:
        return "\n".join(lines + [""] + [f"- {n}" for n in notes] + [""])
    lines += _study_header(sweep, study, metric, params)
    lines += table(["key", "kind", "range or choices"], _space_rows(params))
    lines += _double_sigmoid_trials(sweep, params)
    lines += _trial_lines(study, metric, params)
    lines += _importance_lines(study)
    for key in ("importances", "history", "parallel"):
        if key in figures:
            lines += [f"![{key}]({figures[key]})", ""]
    if notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Sources: " + ", ".join(f"`{s}`" for s in sources), ""]
    return "\n".join(lines)


def write_study_report(sweep_dir: str | Path, final: Sequence[str | Path] = (), out: str | Path | None = None,
                       target: float | None = None) -> Path:
    """Write `report.md` and its figures into `out` (default: the sweep folder); returns its path."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "sweep.yaml").is_file():
        raise ReportError(f"{sweep_dir}: not a sweep folder (no sweep.yaml); expected results/sweeps/<name>")
    sweep = read_sweep_spec(sweep_dir)
    if sweep.get("method") in (None, "grid"):
        raise ReportError(f"{sweep_dir / 'sweep.yaml'}: method {sweep.get('method')!r} is not a search; "
                          "ablation grids get `segsweep report`")
    runs = [load_run(d) for d in find_run_dirs(final)] if final else []  # an untested run is refused there
    study, note = load_optuna_study(sweep_dir, sweep)
    out_dir = Path(out) if out is not None else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _final_groups(runs)
    figures, notes = _draw_figures(study, groups, out_dir)
    sources = [relative_path(sweep_dir, out_dir)] + [relative_path(r.run_dir, out_dir) for rs in groups.values() for r in rs]
    text = render(sweep, study, note, groups, figures, notes, target, sources)
    report = out_dir / "report.md"
    atomic_write_text(report, text)
    return report


def _draw_figures(study: Any, groups: Mapping[str, Sequence[RunRecord]], out_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The final runs' curves and, with a study, its history, importances and parallel coordinates."""
    figures: dict[str, str] = {}
    notes: list[str] = []
    with default_style():
        if plot_final_curves(groups, out_dir / "final_curves.png"):
            figures["curves"] = "final_curves.png"
        if study is not None:
            if plot_history(study, out_dir / "optuna_history.png"):
                figures["history"] = "optuna_history.png"
            files, notes = plot_optuna(study, out_dir)
            for file in files:
                figures["importances" if "importances" in file else "parallel"] = file
    return figures, notes
