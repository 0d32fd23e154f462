"""Ablation reports: which choices change test Dice, by how much, and how sure we are.

Reads run records (`config.yaml`, `summary.json`, `metrics.csv`, `test_per_image.csv`) found
below one or more folders, groups them into arms (config without seed), compares each factor
level with its baseline at the seed level and the test-image level, and writes `report.md`
with PNG figures. Everything is deterministic: the same records give byte-identical output.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..format import fmt_ci, fmt_delta, fmt_float, fmt_interval, fmt_mean_sd, fmt_p, format_level
from ..record import atomic_write_text
from .claims import ClaimsView, claims_lines, claims_view, read_claims, sequential_lines, target_keys
from .fraction import draw_fraction_figures, fraction_lines
from ..analysis.arms import MAX_CURVE_LEVELS, Study, group_arms, parse_baseline, same_level
from .figures import default_style, plot_curves, plot_optuna, plot_test_dice
from .honesty import double_sigmoid, honesty_lines
from ..analysis.inference import ArmSummary, Effect, TwoWay, compute_effects, compute_interactions, summarize_arm
from .markdown import levels_text, relative_path, soft_dice_mean, table
from ..analysis.power import SeedsNeeded, method_text, needed_cell, needed_sentence, seeds_needed
from .records import ReportError, base_experiment, check_same_data, load_optuna_study, load_runs, read_sweep_spec

__all__ = [
    "ReportError", "ReportOptions", "compute_effects", "compute_interactions", "group_arms", "load_runs",
    "render_report", "summarize_arm", "write_report",
]


@dataclass(frozen=True)
class ReportOptions:
    margin: float = 0.005  # equivalence margin in Dice
    alpha: float = 0.05
    resamples: int = 10_000  # bootstrap resamples
    seed: int = 0  # bootstrap seed
    detect: float | None = None  # the difference "seeds needed" is for; None: the margin
    power: float = 0.8  # of "seeds needed"
    allow_mixed_data: bool = False  # runs scored on different data/splits: report them (with a warning)


def render_report(
    study: Study,
    effects: Sequence[Effect],
    skipped: Sequence[str],
    tables: Sequence[TwoWay],
    summaries: Sequence[ArmSummary],
    figures: Mapping[str, Any],
    sweep: Mapping[str, Any],
    sources: Sequence[str],
    options: ReportOptions,
    title: str = "",
) -> str:
    """The whole report.md as text (figures are referenced by file name, beside it)."""
    title = sweep.get("name") if isinstance(sweep.get("name"), str) else title
    view = figures.get("claims_view")
    lines = _header_lines(study, sweep, sources, options, title, view)
    lines += claims_lines(view, study)
    fraction = view is not None and view.analysis.design.kind == "fraction"
    if fraction:  # a fraction's cells pair with nothing one factor apart: its own section instead
        lines += fraction_lines(view, figures)
        lines += _arms_lines(study, summaries, figures)
    else:
        lines += _findings_lines(effects, options)
        lines += _factors_lines(study)
        lines += _arms_lines(study, summaries, figures)
        lines += _effects_lines(study, effects, skipped, options)
    lines += sequential_lines(view)
    if not fraction:
        lines += _interactions_lines(tables)
    if not fraction:  # a fraction's curves are by level, in its own section
        lines += _curves_lines(study, figures)
    lines += _optuna_lines(sweep, figures)
    lines += honesty_lines(study, summaries, sweep)
    lines += _runs_lines(study)
    return "\n".join(lines)


def _header_lines(study: Study, sweep: Mapping[str, Any], sources: Sequence[str], options: ReportOptions,
                  title: str, view: ClaimsView | None = None) -> list[str]:
    n_excluded = sum(not r.counted for r in study.runs)
    lines = [f"# Ablation report: {title}", ""]
    planned, missing = planned_runs(study, sweep, view)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        lines += [f"> **Unfinished sweep:** {len(missing)} of the {planned} planned runs have no counted record "
                  f"({shown}); every number below stands on the runs that exist.", ""]
    metric = sweep.get("metric") if isinstance(sweep.get("metric"), Mapping) else {}
    of_planned = f" of {planned} planned" if planned else ""
    return lines + [
        f"- Sources: {', '.join(f'`{s}`' for s in sources)}",
        f"- Runs: {len(study.runs)} ({len(study.runs) - n_excluded} counted, {n_excluded} not counted){of_planned} in "
        f"{len(study.arms)} arm(s); design: **{design_name(study, sweep, view)}**"
        + (f"; sweep method `{sweep['method']}`" if sweep.get("method") else "")
        + (f", sweep metric `{metric.get('name')}` ({metric.get('goal', 'maximize')})" if metric.get("name") else ""),
        "- Outcome: test Dice (mean per-image Dice at 0.5) of each run's best-on-validation checkpoint. "
        + (f"Claims: the sweep file's margin ±{view.analysis.settings.margin:g} Dice and α = "
           f"{view.analysis.settings.alpha:g} (see *Claims*); the other comparisons: equivalence "
           if view is not None and not view.derived else "Equivalence ")
        + f"margin ±{options.margin:g} Dice, α = {options.alpha:g}, "
        f"bootstrap {options.resamples} resamples (seed {options.seed}).",
        "",
    ]


def _needed(e: Effect, options: ReportOptions, comparisons: int) -> SeedsNeeded:
    detect = options.detect if options.detect is not None else options.margin
    return seeds_needed(e.contrast.seed_values, detect, options.margin, options.alpha, comparisons, options.power)


def _findings_lines(effects: Sequence[Effect], options: ReportOptions) -> list[str]:
    if not effects:
        return []
    lines = ["## Findings", ""]
    for e in effects:
        image = f", images {fmt_ci(e.by_image.ci)}" if e.by_image else ""
        more = needed_sentence(e.verdict, e.by_seed.n, _needed(e, options, len(effects)), options.margin)
        lines.append(f"- **{e.label}** → **{e.verdict}**: Δ test Dice {fmt_delta(e.by_seed.mean)} "
                     f"(95% CI seeds {fmt_ci(e.by_seed.ci)}{image}; {e.by_seed.n} seeds)" + (f"; {more}" if more else ""))
    return lines + [""]


def _factors_lines(study: Study) -> list[str]:
    if not study.factors:
        return []
    lines = ["## Factors", ""]
    lines += table(
        ["factor", "levels", "baseline", "baseline chosen by"],
        [(f.key, levels_text(f.levels), format_level(f.baseline),
          {"--baseline": "`--baseline`", "base experiment": "the base experiment's value"}.get(
              f.chosen_by, "most arms (ties: first in sorted order)"))
         for f in study.factors],
    )
    if study.baseline_arm is None:
        lines += ["No arm has every factor at its baseline level.", ""]
    return lines


def _arms_lines(study: Study, summaries: Sequence[ArmSummary], figures: Mapping[str, Any]) -> list[str]:
    lines = ["## Arms", ""]
    header = ["arm", *[f.key for f in study.factors], "n", "val/dice", "test/dice", "test 95% CI (t)",
              "test/dice_global", "best epoch", "diverged", "not counted", "wall s"]
    rows = []
    soft = any(math.isfinite(soft_dice_mean(s.arm)) for s in summaries)  # only records that have it
    for s in summaries:
        mark = " (base)" if s.arm is study.baseline_arm else ""
        mark += " (double sigmoid)" if any(double_sigmoid(r) for r in s.arm.runs) else ""
        not_counted = ", ".join(f"{n} {st}" for st, n in s.excluded.items()) or "0"
        div = str(s.diverged) + (f" ({s.imputed} scored 0)" if s.imputed else "")
        rows.append((
            s.arm.id + mark, *[format_level(s.arm.levels[f.key]) for f in study.factors], str(s.n),
            fmt_mean_sd(s.val), fmt_mean_sd(s.test), fmt_interval(s.test_ci), fmt_float(s.test_global),
            fmt_float(s.best_epoch, 1), div, not_counted, fmt_float(s.wall_s, 1),
        ) + ((fmt_float(soft_dice_mean(s.arm)),) if soft else ()))
    lines += table(header + (["test/dice_soft_batch8"] if soft else []), rows)
    lines += ["val/dice is each run's best validation Dice; ± is the sd across seeds; n counts seeds with a completed "
              "or diverged run.", ""]
    if "test_dice" in figures:
        lines += [f"![Test Dice per arm]({figures['test_dice']})", ""]
    return lines


def _effects_method(options: ReportOptions) -> list[str]:
    return [
        "Each comparison is the change in test Dice from the baseline level, averaged over every pair of arms "
        "that differ only in that factor (the *pairs* column: in a full factorial this is the marginal effect "
        "over the other factors; one-factor-at-a-time: the single pair with the baseline arm), paired by seed "
        "and by test image. *seeds up* counts the seeds where the level beat the baseline.",
        "",
        "- **Seed level** (replicates: training runs; test set held fixed): the per-seed differences, 95% CI "
        "from the t distribution, paired t-test. A bootstrap over 3–5 seeds can take only 10–126 distinct "
        "values and is too narrow; a Wilcoxon test cannot reach p < 0.05 with fewer than 6 seeds.",
        "- **Image level** (replicates: test images; trained models held fixed): per image, the difference "
        "averaged over seeds (so no image counts more than once), 95% percentile bootstrap CI resampling "
        f"test images ({options.resamples} resamples, seed {options.seed}), Wilcoxon signed-rank test "
        "(Pratt's zero handling).",
        f"- **Equivalence:** two one-sided paired t-tests (TOST) at each level against ±{options.margin:g}.",
        "- **Holm:** p-values are Holm-adjusted over all comparisons in this table, separately for each of the "
        "four tests.",
        f"- **Verdict:** *equivalent* when TOST is significant (adjusted p < {options.alpha:g}) at every level "
        "available (it takes precedence: a difference smaller than the margin is declared not to matter); "
        "*better* / *worse* when the difference test is significant at every level and each CI excludes 0 on "
        "that side; otherwise *inconclusive*. A claim must therefore hold across training seeds and across test "
        "images; one seed is always inconclusive. The CIs shown are not adjusted, so a comparison whose CI "
        "excludes 0 can still be inconclusive after Holm.",
        "",
    ]


def _effect_row(e: Effect) -> tuple[str, ...]:
    img = e.by_image
    return (
        e.label, str(e.pairs), str(e.by_seed.n),
        f"{sum(v > 0 for v in e.contrast.seed_values)}/{len(e.contrast.seed_values)}",
        fmt_delta(e.by_seed.mean), fmt_ci(e.by_seed.ci), fmt_p(e.by_seed.p_holm),
        str(img.n) if img else "—", fmt_delta(img.mean) if img else "—", fmt_ci(img.ci) if img else "—",
        fmt_p(img.p_holm) if img else "—",
        fmt_p(e.by_seed.p_tost_holm) + (f" / {fmt_p(img.p_tost_holm)}" if img else ""),
        fmt_delta(float(np.mean(e.contrast.global_values))), e.verdict,
    )


def _effects_lines(study: Study, effects: Sequence[Effect], skipped: Sequence[str],
                   options: ReportOptions) -> list[str]:
    if not study.factors:
        return []
    if not effects:
        return ["## Effects against the baseline", "", "No comparison could be made:", ""] + [
            f"- {s}" for s in skipped] + [""]
    lines = ["## Effects against the baseline", ""] + _effects_method(options)
    detect = options.detect if options.detect is not None else options.margin
    lines += [method_text(detect, options.margin, options.alpha, len(effects), options.power), ""]
    lines += table(
        ["comparison", "pairs", "seeds", "seeds up", "Δ test Dice", "95% CI (t, seeds)", "p t (Holm)",
         "images", "Δ per image", "95% CI (bootstrap, images)", "p Wilcoxon (Holm)",
         "TOST p (Holm) seeds / images", "Δ test/dice_global", "verdict", "seeds needed (detect / equivalence)"],
        [(*_effect_row(e), needed_cell(_needed(e, options, len(effects)))) for e in effects],
    )
    if skipped:
        lines += ["Not compared:", ""] + [f"- {s}" for s in skipped] + [""]
    return lines


def _interactions_lines(tables: Sequence[TwoWay]) -> list[str]:
    if not tables:
        return []
    lines = ["## Interactions", ""]
    lines += ["For each pair of factors crossed in full (in every slice of the other factors, for a full "
              "factorial), the mean test Dice per level pair over those slices, and the interaction "
              "(Δ of the first factor at the second factor's level) − (Δ of the first factor at the second "
              "factor's baseline), with the same two levels of inference as the effects (no Holm, no verdict).", ""]
    for t in tables:
        fa, fb = t.factors
        lines += [f"### {fa} × {fb}", "", f"Mean test Dice over {t.slices} slice(s):", ""]
        header = [f"{fa} \\ {fb}", *[format_level(v) for v in t.levels[1]]]
        cells = [(format_level(la), *[fmt_float(t.means[(la, lb)]) for lb in t.levels[1]]) for la in t.levels[0]]
        lines += table(header, cells)
        rows = [(f"{fa}={format_level(i.levels[0])} × {fb}={format_level(i.levels[1])}", str(i.by_seed.n),
                 fmt_delta(i.by_seed.mean), fmt_ci(i.by_seed.ci),
                 fmt_ci(i.by_image.ci) if i.by_image else "—") for i in t.interactions]
        if rows:
            lines += table(["interaction (vs baselines)", "seeds", "estimate", "95% CI (t, seeds)",
                            "95% CI (bootstrap, images)"], rows)
    return lines


def _curves_lines(study: Study, figures: Mapping[str, Any]) -> list[str]:
    if not study.factors:
        return []
    lines = ["## Validation curves", ""]
    for f in study.factors:
        name = figures.get("curves", {}).get(f.key)
        if name:
            lines += [f"![val/dice by {f.key}]({name})", ""]
        else:
            why = figures.get("curve_notes", {}).get(f.key, "no curves")
            lines += [f"- {f.key}: {why}", ""]
    return lines


def _optuna_lines(sweep: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    method = sweep.get("method")
    if not method or method == "grid":
        return []
    lines = ["## Optuna study", ""]
    if figures.get("optuna_note"):
        lines += [figures["optuna_note"], ""]
    for name in figures.get("optuna", []):
        lines += [f"![{name}]({name})", ""]
    lines += [f"- {n}" for n in figures.get("optuna_notes", [])] + ([""] if figures.get("optuna_notes") else [])
    return lines


def _runs_lines(study: Study) -> list[str]:
    lines = ["## Runs", "", "<details><summary>Every run folder</summary>", ""]
    run_rows = []
    for a in study.arms:
        for r in a.runs:
            used = "counted" if a.by_seed.get(r.seed) is r else ("superseded" if r.counted else "not counted")
            run_rows.append((
                a.id, str(r.seed), r.status, used, fmt_float(r.test_dice), format_level(r.summary.get("epochs_run")),
                f"`{r.run_dir.parent.name}/{r.run_dir.name}`", str(r.summary.get("error") or "")[:80],
            ))
    lines += table(["arm", "seed", "status", "used", "test/dice", "epochs", "run", "error"], run_rows)
    lines += ["</details>", "", "<details><summary>Settings shared by every arm</summary>", "", "```yaml"]
    lines += [f"{k}: {json.dumps(v, default=str)}" for k, v in sorted(study.common.items())]
    lines += ["```", "", "</details>", ""]
    return lines


def write_report(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    baseline: Mapping[str, Any] | Sequence[str] = (),
    options: ReportOptions = ReportOptions(),
) -> Path:
    """Analyse the runs below `paths` and write `report.md` plus PNGs into `out`
    (default: the first path). Returns the report's path. Everything is read and analysed
    before anything is written."""
    if not paths:
        raise ReportError("no sweep or run folder given")
    first = Path(paths[0])
    out_dir = Path(out) if out is not None else (first if first.is_dir() else first.parent)
    if not (isinstance(options.margin, float | int) and options.margin > 0):
        raise ReportError(f"--margin: expected a positive Dice difference, got {options.margin!r}")
    if options.detect is not None and not (math.isfinite(options.detect) and options.detect > 0):
        raise ReportError(f"--detect: expected a positive Dice difference, got {options.detect!r}")
    base = dict(baseline) if isinstance(baseline, Mapping) else parse_baseline(baseline)
    runs = load_runs(paths)
    sweep = read_sweep_spec(first) if first.is_dir() else {}
    declared = target_keys(read_claims(sweep))  # another target on purpose: no Dice compared across it
    mixed = check_same_data(runs, options.allow_mixed_data, declared)  # refused unless allowed; then a warning
    study = group_arms(runs, base, base_experiment(sweep))
    view = claims_view(study, runs, sweep, first if first.is_dir() else None, None)
    compared = replace(study, factors=tuple(f for f in study.factors if f.key not in declared))
    effects, skipped = compute_effects(compared, options.margin, options.alpha, options.resamples, options.seed)
    skipped += [f"{f.key}: not compared, the target changes (a claim says so), so its levels' Dice measure "
                "different tasks" for f in study.factors if f.key in declared]
    tables = compute_interactions(compared, options.margin, options.resamples, options.seed)
    summaries = [summarize_arm(a) for a in study.arms]

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _draw_figures(compared, summaries, out_dir, view)
    figures["claims_view"] = view
    method = sweep.get("method")
    if method and method != "grid" and first.is_dir():
        optuna_study, note = load_optuna_study(first, sweep)
        figures["optuna_note"] = f"Source: {note}." if optuna_study is not None else f"Skipped: {note}."
        if optuna_study is not None:
            figures["optuna"], figures["optuna_notes"] = plot_optuna(optuna_study, out_dir)

    sources = [relative_path(Path(p), out_dir) for p in paths]
    title = Path(paths[0]).resolve().name
    text = render_report(study, effects, skipped, tables, summaries, figures, sweep, sources, options, title)
    if mixed:  # right below the title
        head, _, rest = text.partition("\n\n")
        text = f"{head}\n\n> **Warning (--allow-mixed-data):** {mixed}.\n\n{rest}"
    report = out_dir / "report.md"
    atomic_write_text(report, text)
    return report


def _draw_figures(study: Study, summaries: Sequence[ArmSummary], out_dir: Path,
                  view: ClaimsView | None = None) -> dict[str, Any]:
    """The test Dice box plot and one curves figure per factor (a fraction: its own figures);
    returns what render_report links."""
    figures: dict[str, Any] = {"curves": {}, "curve_notes": {}}
    with default_style():
        plot_test_dice(summaries, out_dir / "test_dice_by_arm.png", study.baseline_arm)
        figures["test_dice"] = "test_dice_by_arm.png"
        if view is not None and view.analysis.design.kind == "fraction":
            figures.update(draw_fraction_figures(view, out_dir, study.runs))
            return figures
        for f in study.factors:
            if len(f.levels) > MAX_CURVE_LEVELS:
                figures["curve_notes"][f.key] = f"{len(f.levels)} levels: too many for curves (see the Optuna plots)"
            elif plot_curves(study, f, out_dir / f"curves_{f.key}.png"):
                figures["curves"][f.key] = f"curves_{f.key}.png"
            else:
                figures["curve_notes"][f.key] = "no comparison uses this factor, or no run has a metrics.csv"
    return figures


def planned_runs(study: Study, sweep: Mapping[str, Any], view: ClaimsView | None) -> tuple[int, list[str]]:
    """(runs the sweep planned, the planned runs without a counted record): from the design's
    rounds, else the sweep's cells x seeds; (0, []) for run folders without a sweep.yaml."""
    if view is not None and not view.derived:
        return view.planned, list(view.missing)
    cells, seeds = sweep.get("cells"), sweep.get("seeds")
    if not isinstance(cells, list) or not isinstance(seeds, list) or not cells:
        return 0, []
    keys = sorted({k for c in cells for k in (c.get("overrides") or {})})
    base = base_experiment(sweep)
    counted = [(r.config, r.seed) for a in study.arms for r in a.by_seed.values()]
    missing = []
    for cell in cells:
        values = {k: (cell.get("overrides") or {}).get(k, base.get(k)) for k in keys}
        for seed in seeds:
            if not any(seed == s and all(same_level(config.get(k), v) for k, v in values.items())
                       for config, s in counted):
                missing.append(f"{cell.get('label')} seed {seed}")
    return len(cells) * len(seeds), missing


def design_name(study: Study, sweep: Mapping[str, Any], view: ClaimsView | None) -> str:
    """The design as the sweep file declares it (the runs' own grouping only without a sweep.yaml)."""
    if view is not None and not view.derived and view.analysis.design.kind == "fraction":
        f = view.analysis.design.fraction
        sides = len(view.analysis.design.side_arms)
        what = f"2^({f.k}-{f.p}) fraction, resolution {f.resolution()}" if f.p else f"2^{f.k} full factorial"
        return what + (f", with {sides} side arm(s)" if sides else "")
    arms = sweep.get("arms")
    grid = [k for k, p in (sweep.get("parameters") or {}).items() if isinstance(p, Mapping) and "values" in p]
    if isinstance(arms, list):
        ofat = all(len(a) <= 1 for a in arms) and {} in arms
        kind = "one-factor-at-a-time" if ofat else "arms"
        return kind + (f" x grid over {', '.join(grid)}" if grid else "")
    if grid:
        return "full factorial" if len(grid) > 1 else "one factor"
    return study.design
