"""A fraction's section of the report: its defining relation and alias chains, every main effect
and estimable interaction chain with its CI, and the figures people read first: main effects
with their CIs, a half-normal plot of the effects, and an interaction plot for each flagged
interaction."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..analysis.fraction import effect_name, format_chain
from ..analysis.records import RunRecord, run_arm_hash
from ..analysis.verdicts import Effect, fraction_effects
from ..format import fmt_ci, fmt_delta
from .claims import ClaimsView
from .figures import new_figure, save_figure
from .markdown import table


def fraction_lines(view: ClaimsView | None, figures: Mapping[str, Any]) -> list[str]:
    if view is None or view.analysis.design.kind != "fraction" or view.analysis.rounds_done == 0:
        return []
    design = view.analysis.design
    f = design.fraction
    letters = ", ".join(f"{x.letter} = `{x.key}` ({x.levels[0]} vs {x.levels[1]})" for x in design.factors)
    lines = ["## The fraction", "", f"Factors: {letters}. Level 1 (coded +1) is the recipe's."]
    if f.p:
        words = ", ".join(f"{'-' if s < 0 else ''}{effect_name(w)}" for w, s in f.defining_relation())
        chains = "; ".join(format_chain(c) for c in f.chains(2) if len(c) > 1)
        lines += [f"Generators {', '.join(f.generators)}; defining relation I = {words}; resolution {f.resolution()}. "
                  f"Alias chains up to two-factor interactions: {chains or 'none'} (interactions of three or more "
                  "factors are assumed negligible).", ""]
    else:
        lines += ["The full factorial: no effect is aliased.", ""]
    effects = fraction_effects(design, view.values, view.analysis.rounds_done)
    lines += table(["effect", "kind", "estimate (Dice)", "95% CI", "t (df)"],
                   [(e.name, e.kind, fmt_delta(e.estimate.value), fmt_ci(e.estimate.ci),
                     f"{e.estimate.t:.2f} ({e.estimate.df:.0f})") for e in effects])
    lines += ["A main effect is the change from the factor's second level to its first (the recipe's), averaged over "
              "every other factor at both levels; a chain's estimate is how much the effect of either of its "
              "factors moves when the other is at its recipe level. Side-arm runs are left out of this table.", ""]
    for key in ("main_effects", "half_normal", *sorted(k for k in figures if k.startswith("interaction_")),
                "curves_by_level"):
        if key in figures:
            lines += [f"![{key.replace('_', ' ')}]({figures[key]})", ""]
    return lines


def draw_fraction_figures(view: ClaimsView | None, out_dir: Path,
                          runs: Sequence[RunRecord] = ()) -> dict[str, str]:
    """The fraction's figures (main effects, half-normal plot, interaction plots of flagged chains,
    validation curves by level of each factor and of each side arm against its recipe runs)."""
    if view is None or view.analysis.design.kind != "fraction" or view.analysis.rounds_done == 0:
        return {}
    effects = fraction_effects(view.analysis.design, view.values, view.analysis.rounds_done)
    if not effects:
        return {}
    out = {"main_effects": "main_effects.png", "half_normal": "half_normal.png"}
    if _level_curves(view, runs, out_dir / "curves_by_level.png"):
        out["curves_by_level"] = "curves_by_level.png"
    _main_effects(effects, view.analysis.settings.margin, out_dir / out["main_effects"])
    _half_normal(effects, out_dir / out["half_normal"])
    flagged = {ch.members for r in view.analysis.claims for ch in r.chains if ch.flagged}
    for i, members in enumerate(sorted(flagged)):
        name = f"interaction_{i + 1}.png"
        _interaction(view, members[0], out_dir / name)
        out[f"interaction_{i + 1}"] = name
    return out


def _main_effects(effects: Sequence[Effect], margin: float, path: Path) -> None:
    mains = [e for e in effects if e.kind == "main"]
    fig = new_figure(6.5, 0.45 * len(mains) + 1.5)
    ax = fig.subplots()
    y = np.arange(len(mains))
    values = [e.estimate.value for e in mains]
    lows = [e.estimate.value - e.estimate.ci[0] for e in mains]
    highs = [e.estimate.ci[1] - e.estimate.value for e in mains]
    ax.errorbar(values, y, xerr=[lows, highs], fmt="o", color="tab:blue", capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.axvspan(-margin, margin, color="tab:green", alpha=0.12, label=f"±{margin:g} (equivalence margin)")
    ax.set_yticks(y, [e.name for e in mains], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("main effect on test Dice (recipe level - other level), 95% CI")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path)


def _half_normal(effects: Sequence[Effect], path: Path) -> None:
    """|effect| against half-normal quantiles: effects off the line through the bulk stand out."""
    from scipy import stats

    order = sorted(effects, key=lambda e: abs(e.estimate.value))
    n = len(order)
    quantiles = stats.halfnorm.ppf((np.arange(1, n + 1) - 0.5) / n)
    fig = new_figure(6.0, 4.5)
    ax = fig.subplots()
    values = [abs(e.estimate.value) for e in order]
    colors = ["tab:blue" if e.kind == "main" else "tab:orange" for e in order]
    ax.scatter(quantiles, values, c=colors, zorder=3)
    for q, v, e in list(zip(quantiles, values, order))[-min(5, n):]:
        ax.annotate(e.name if len(e.name) < 40 else e.name[:37] + "...", (q, v), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    bulk = np.median(values) / np.median(quantiles) if n and np.median(quantiles) > 0 else 0.0
    ax.plot([0, quantiles[-1] if n else 1], [0, bulk * (quantiles[-1] if n else 1)], color="grey", lw=0.8)
    ax.set_xlabel("half-normal quantile")
    ax.set_ylabel("|effect| on test Dice")
    ax.set_title("half-normal plot (blue: main effects, orange: interaction chains)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def _interaction(view: ClaimsView, member: str, path: Path) -> None:
    """Mean test Dice at the four level pairs of the chain's first two factors (fraction runs)."""
    design = view.analysis.design
    a_key, b_key = member.split("*")
    keys = [f.key for f in design.factors]
    ia, ib = keys.index(a_key), keys.index(b_key)
    cells: dict[tuple[int, int], list[float]] = {}
    for run in design.runs_through(view.analysis.rounds_done):
        cell = design.cell(run.cell)
        if cell.side is None and (run.cell, run.seed) in view.values:
            cells.setdefault((cell.codes[ia], cell.codes[ib]), []).append(view.values[(run.cell, run.seed)])
    fig = new_figure(5.5, 4.0)
    ax = fig.subplots()
    fa, fb = design.factors[ia], design.factors[ib]
    for code_b, style in ((1, "o-"), (-1, "s--")):
        ys = [float(np.mean(cells.get((code_a, code_b), [math.nan]))) for code_a in (-1, 1)]
        ax.plot([0, 1], ys, style, label=f"{b_key} = {fb.levels[0 if code_b == 1 else 1]}")
    ax.set_xticks([0, 1], [str(fa.levels[1]), str(fa.levels[0])])
    ax.set_xlabel(a_key)
    ax.set_ylabel("mean test Dice")
    ax.set_title(f"interaction {member}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def _level_curves(view: ClaimsView, runs: Sequence[RunRecord], path: Path) -> bool:
    """val/dice per epoch: one panel per factor (the fraction's runs at each level: mean, band
    ±1 sd across runs) and one for the side arms (each against the recipe runs it is paired with)."""
    design = view.analysis.design
    by_hash = {c.arm_hash: c for c in design.cells}
    curves: dict[str, list[tuple[Any, np.ndarray, np.ndarray]]] = {}  # cell label -> (seed, epochs, val/dice)
    for run in runs:
        cell = by_hash.get(run_arm_hash(run)) if run.counted else None
        if cell is not None and run.curve.get("epoch") and run.curve.get("val/dice"):
            curves.setdefault(cell.label, []).append(
                (run.seed, np.asarray(run.curve["epoch"], float), np.asarray(run.curve["val/dice"], float)))
    if not curves:
        return False
    fraction = [c for c in design.cells if c.side is None and c.codes is not None]
    sides = [c for c in design.cells if c.side is not None]
    panels = [(f"{x.letter} = {x.key}", [(f"{x.levels[j]}" + (" (recipe)" if j == 0 else ""),
                                         [r for c in fraction if c.codes[i] == (1 if j == 0 else -1)
                                          for r in curves.get(c.label, ())]) for j in (0, 1)])
              for i, x in enumerate(design.factors)]
    if sides:
        side_seeds = {seed for c in sides for seed, _, _ in curves.get(c.label, ())}
        recipe = [r for c in fraction if all(v == 1 for v in c.codes) for r in curves.get(c.label, ())
                  if r[0] in side_seeds]
        panels.append(("side arms (paired recipe runs)", [("recipe", recipe)] +
                       [(c.side, list(curves.get(c.label, ()))) for c in sides]))
    cols = 3
    rows = -(-len(panels) // cols)
    fig = new_figure(4.2 * cols, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (title, groups) in zip(axes, panels):
        for k, (label, members) in enumerate(groups):
            if not members:
                continue
            epochs = np.array(sorted({float(e) for _, es, _ in members for e in es}))
            grid = np.array([[dict(zip(es, vs)).get(e, math.nan) for e in epochs] for _, es, vs in members])
            with np.errstate(all="ignore"):
                mean = np.nanmean(grid, axis=0)
                sd = np.nanstd(grid, axis=0, ddof=1) if len(members) > 1 else np.zeros_like(mean)
            ax.plot(epochs, mean, color=f"C{k}", label=f"{label[:40]}, {len(members)} runs")
            ax.fill_between(epochs, mean - sd, mean + sd, color=f"C{k}", alpha=0.18, linewidth=0)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("val/dice", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Validation Dice per epoch by level (band: ±1 sd across runs)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return True
