"""Figures of the reports, drawn with matplotlib's object API on an Agg canvas (no backend
switch: a notebook's backend is left alone; Optuna's own plots use pyplot and are closed once
saved), written atomically as PNGs whose bytes depend only on the pixels."""
from __future__ import annotations

import io
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..format import format_level
from ..record import atomic_write_bytes
from ..analysis.arms import Arm, Factor, Study, matched_pairs, same_level
from ..analysis.inference import ArmSummary, importance_evaluator
from .records import RunRecord, completed_trials


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` as a PNG at `path` (atomically). No "Software" text chunk: the bytes depend
    only on the pixels."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch
    return fig


def default_style() -> Any:
    """matplotlib's default rcParams for the duration (restored afterwards), so figures do not
    depend on a user's matplotlibrc or on styles set by earlier plots (Optuna sets ggplot)."""
    import matplotlib.style

    return matplotlib.style.context("default")


def plot_test_dice(summaries: Sequence[ArmSummary], path: Path, baseline_arm: Arm | None) -> None:
    """Box plot of test Dice per arm with every counted run as a point (x = diverged)."""
    fig = new_figure(max(5.0, 0.7 * len(summaries) + 2), 4.0)
    ax = fig.subplots()
    positions = list(range(1, len(summaries) + 1))
    data = [[s.arm.by_seed[k].test_dice for k in sorted(s.arm.by_seed)] or [math.nan] for s in summaries]
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False)
    for pos, s in zip(positions, summaries):
        runs = [s.arm.by_seed[k] for k in sorted(s.arm.by_seed)]
        offsets = np.linspace(-0.15, 0.15, len(runs)) if len(runs) > 1 else [0.0]
        for off, run in zip(offsets, runs):
            diverged = run.status == "diverged"
            ax.scatter(pos + off, run.test_dice, s=28, marker="x" if diverged else "o",
                       color="tab:red" if diverged else "tab:blue", zorder=3)
    labels = [s.arm.id + (" (base)" if baseline_arm is not None and s.arm is baseline_arm else "") for s in summaries]
    ax.set_xticks(positions, labels, rotation=45 if len(summaries) > 8 else 0)
    ax.set_ylabel("test Dice (mean per image)")
    ax.set_title("Test Dice per arm (points: seeds; x: diverged)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def level_curves(study: Study, factor: Factor) -> dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """level -> (epochs, mean, sd, n seeds) of val/dice over the arms in this factor's
    comparisons: per seed the curve is averaged over those arms, then mean and sd across seeds."""
    involved: dict[str, Arm] = {}
    for level in factor.levels:
        if same_level(level, factor.baseline):
            continue
        for treated, control in matched_pairs(study, factor.key, level):
            involved[treated.id], involved[control.id] = treated, control
    out = {}
    for level in factor.levels:
        arms = [a for a in involved.values() if same_level(a.levels[factor.key], level)]
        per_seed: dict[int, list[dict[int, float]]] = defaultdict(list)
        for arm in arms:
            for s, run in arm.by_seed.items():
                if run.curve.get("epoch"):
                    per_seed[s].append(dict(zip((int(e) for e in run.curve["epoch"]), run.curve["val/dice"])))
        if not per_seed:
            continue
        epochs = np.array(sorted(set().union(*(c.keys() for cs in per_seed.values() for c in cs))))
        seed_rows = []
        for s in sorted(per_seed):
            grid = np.array([[c.get(int(e), math.nan) for e in epochs] for c in per_seed[s]])  # (arms, epochs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                seed_rows.append(np.nanmean(grid, axis=0))
        rows = np.array(seed_rows)  # (seeds, epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(rows, axis=0)
            sd = np.nanstd(rows, axis=0, ddof=1) if len(rows) > 1 else np.zeros_like(mean)
        out[level] = (epochs, mean, np.nan_to_num(sd), len(rows))
    return out


def plot_curves(study: Study, factor: Factor, path: Path) -> bool:
    """val/dice against epoch per level of `factor` (mean line, band = +-1 sd across seeds)."""
    curves = level_curves(study, factor)
    if not curves:
        return False
    fig = new_figure(6.0, 4.0)
    ax = fig.subplots()
    for i, (level, (epochs, mean, sd, n)) in enumerate(curves.items()):
        color = f"C{i % 10}"
        base = " (baseline)" if same_level(level, factor.baseline) else ""
        ax.plot(epochs, mean, color=color, label=f"{format_level(level)}{base}, {n} seeds")
        ax.fill_between(epochs, mean - sd, mean + sd, color=color, alpha=0.2, linewidth=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val/dice")
    ax.set_title(f"val/dice by {factor.key} (band: ±1 sd across seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def plot_optuna(study: Any, out: Path) -> tuple[list[str], list[str]]:
    """Parameter importances (fANOVA with seed 0, or PED-ANOVA without scikit-learn) and
    parallel coordinates of the completed trials; returns (files written, notes)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    files, notes = [], []
    complete = completed_trials(study)
    if len(complete) < 2:
        return files, [f"Optuna study has {len(complete)} completed trial(s); need 2 for importances"]
    evaluator, how = importance_evaluator()
    notes.append(f"Parameter importances by {how}, over {len(complete)} completed trials.")
    plots = (
        ("optuna_importances.png", lambda: ovm.plot_param_importances(study, evaluator=evaluator)),
        ("optuna_parallel_coordinate.png", lambda: ovm.plot_parallel_coordinate(study)),
    )
    for filename, draw in plots:
        before = set(plt.get_fignums())
        with warnings.catch_warnings(), default_style():
            warnings.simplefilter("ignore")
            try:
                ax = draw()
                fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
                fig.set_size_inches(7, 4.5)
                fig.tight_layout()
                save_figure(fig, out / filename)
                files.append(filename)
            except Exception as exc:  # e.g. a single parameter, or all values equal
                notes.append(f"{filename}: Optuna could not draw it: {type(exc).__name__}: {exc}")
            finally:
                for number in set(plt.get_fignums()) - before:
                    plt.close(number)
    return files, notes


def plot_final_curves(groups: Mapping[str, Sequence[RunRecord]], path: Path) -> bool:
    """val/dice per epoch against the epoch and against training time, one line per run."""
    if not any(r.curve.get("val/dice") for runs in groups.values() for r in runs):
        return False
    fig = new_figure(11, 4.2)
    by_epoch, by_time = fig.subplots(1, 2)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for colour, (model, runs) in zip(colours * 4, groups.items()):
        for i, run in enumerate(runs):
            epochs, dice = run.curve.get("epoch", ()), run.curve.get("val/dice", ())
            if not dice:
                continue
            minutes = np.cumsum(run.curve.get("epoch_s", (math.nan,) * len(dice))) / 60
            label = f"{model} seed {run.seed}"
            style = dict(color=colour, alpha=0.85, lw=1.2, ls=("-", "--", ":", "-.")[i % 4], label=label)
            by_epoch.plot(epochs, dice, **style)
            by_time.plot(minutes, dice, **style)
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("training time (min, cumulative epoch time)")
    for ax in (by_epoch, by_time):
        ax.set_ylabel("val Dice (mean per image)")
        ax.grid(alpha=0.3)
    by_epoch.set_title("Final recipe: validation Dice per epoch")
    by_time.set_title("… against the time budget")
    by_time.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def plot_history(study: Any, path: Path) -> bool:
    """Each completed trial's value in trial order, with the best so far."""
    import optuna

    done = completed_trials(study)
    if not done:
        return False
    numbers, values = [t.number for t in done], [t.value for t in done]
    best = np.maximum.accumulate(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE \
        else np.minimum.accumulate(values)
    fig = new_figure(7, 4)
    ax = fig.subplots()
    ax.scatter(numbers, values, s=22, color="tab:blue", label="trial", zorder=3)
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    return True


