"""`segsweep sweep SWEEP --plan`: what a sweep in rounds will do before it does it. The design (the
fraction, its alias chains, the side arms, the claims as compared), the runs per round and in
all, the power of each claim at the margin by simulating the whole procedure at a seed sd given
or measured, and the expected wall time from one timed run. Nothing is trained beyond that one run.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from ..analysis.fraction import format_chain
from ..analysis.operating import Simulator
from .adaptive import describe
from .cells import Sweep

STUDIES = 2000  # simulated studies per scenario


def plan_lines(sweep: Sweep, sd: float, run_s: float | None, workers: int, where_sd: str,
               studies: int = STUDIES) -> list[str]:
    """The plan as lines to print."""
    design, settings = sweep.design, sweep.settings()
    lines = [f"sweep {sweep.name}: {describe(sweep)}"]
    if design.kind == "fraction" and design.fraction.p:
        chains = [format_chain(c) for c in design.fraction.chains(2) if len(c) > 1]
        letters = ", ".join(f"{f.letter}={f.key}" for f in design.factors)
        lines.append(f"  factors: {letters}; alias chains: {'; '.join(chains) or 'none'}")
    for arm in design.side_arms:
        lines.append(f"  side arm {arm.label}: paired by seed with the recipe run of each round")
    sizes = [design.round_size(r) for r in range(1, design.rounds_max + 1)]
    first = sum(sizes[:design.schedule.initial])
    lines.append(f"  runs: {sizes[0]} a round; {first} before the first look (round {design.schedule.initial}); "
                 f"{sum(sizes)} at most ({design.rounds_max} rounds); looks after rounds "
                 f"{', '.join(map(str, design.looks()))}")
    if not sweep.claims:
        return lines + ["  no claims: nothing to settle, only the initial rounds run"]
    sim = Simulator(design, sweep.claims, settings)
    null = sim.run(lambda cell: 0.8, sd, studies=studies, seed=1)
    lines.append(f"  at seed sd {sd:g} ({where_sd}), margin ±{settings.margin:g}, alpha {settings.alpha:g} "
                 f"({studies} simulated studies per line):")
    lines.append(f"    no true effect anywhere: any false better/worse {null.any_false_difference:.3f}; runs used "
                 f"{null.mean_runs:.0f} on average")
    for j, claim in enumerate(sweep.claims):
        if claim.primary == "equivalence":
            power = null.equivalent[j]
            lines.append(f"    {claim.id}: shown equivalent with probability {power:.2f} if the true effect is 0")
            continue
        rates = sim.run(_shifted(design, claim, settings.margin), sd, studies=studies, seed=2 + j)
        found = rates.better[j]  # the shift is in the claim's own direction: arm above against
        lines.append(f"    {claim.id}: a true effect of {settings.margin:g} found with probability {found:.2f} "
                     f"(runs used {rates.mean_runs:.0f} on average); equivalent with probability "
                     f"{null.equivalent[j]:.2f} if it is 0")
    if run_s is not None:
        per_round = sizes[0] * run_s / max(1, workers)
        lines.append(f"  time at {run_s:.0f} s a run on {workers} worker(s): about {per_round / 60:.0f} min a round, "
                     f"{first * run_s / max(1, workers) / 60:.0f} min to the first look, "
                     f"{sum(sizes) * run_s / max(1, workers) / 3600:.1f} h at most (cells with another network or "
                     "size take their own time: time one with segsweep run)")
    return lines


def _shifted(design: Any, claim: Any, margin: float) -> Callable[[str], float]:
    """True cell means with an effect of `margin` in the claim's direction and none elsewhere."""
    if claim.factor is not None:
        j = [f.key for f in design.factors].index(claim.factor)
        return lambda cell: 0.8 + margin / 2 * design.cell(cell).codes[j] * (claim.sign or 1)
    arm, _ = claim.pairs[0]
    return lambda cell: 0.8 + (margin if cell == arm else 0.0)


def measured_sd(sweep: Sweep, sweep_dir: Path) -> float | None:
    """The pooled residual sd of the sweep's own complete rounds, if any have run."""
    from ..analysis import Settings, analyse
    from ..analysis.records import find_run_dirs, load_run, run_arm_hash

    if not sweep_dir.is_dir() or not any(sweep_dir.rglob("summary.json")):
        return None
    by_hash = {c.arm_hash: c.label for c in sweep.design.cells}
    values = {}
    for run_dir in find_run_dirs([sweep_dir]):
        run = load_run(run_dir)
        label = by_hash.get(run_arm_hash(run)) if run.counted else None
        if label is not None:
            values[(label, run.seed)] = run.test_dice
    analysis = analyse(sweep.design, sweep.claims, values, Settings(paths=1000))
    return analysis.s if math.isfinite(analysis.s) else None


def time_one_run(sweep: Sweep, results: Path) -> float:
    """Train the recipe once (the base experiment at the first planned seed) and return its wall time."""
    from ..record import new_run_dir
    from ..train import fit

    first = sweep.design.runs(1)[0]
    spec = sweep.trial_spec({}, first.seed, f"{sweep.name}.plan", "plan")
    run_dir = new_run_dir(results / "sweeps" / sweep.name / "plan", spec.name)
    result = fit(spec, run_dir)
    return float(result.metrics.get("wall_s", math.nan))
