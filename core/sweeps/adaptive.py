"""Rounds: a sweep with a design (a seed schedule over a grid of arms, or a fraction) runs round
after round on the Optuna engine. Each round's runs are queued, the workers run them, and the
complete rounds are analysed by `segsweep.analysis.analyse` (the report's own analysis, from the
same outcomes under the same rule); the next round starts only while some claim is open, the last
planned round has not run, another round can still settle something (futility), the budget
allows and the code has not changed.

Every round is derived again from the finished trials, so rerunning the command replays the
same decisions and queues only what is missing: each cell x seed still runs exactly once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..analysis import SequentialRecord, analyse, outcome
from ..analysis.verdicts import Analysis
from ..format import fmt_ci, fmt_delta

if TYPE_CHECKING:
    from .cells import Sweep


def trial_values(sweep: Sweep, trials: Sequence[Any]) -> dict[tuple[str, int], float]:
    """(cell label, seed) -> the value each finished trial counts with, by the outcome rule
    (`segsweep.analysis.records.outcome`, the one the report applies to summary.json)."""
    from optuna.trial import TrialState

    labels = {c.label for c in sweep.cells}
    values: dict[tuple[str, int], float] = {}
    for t in trials:
        a = t.user_attrs
        if a.get("cell") not in labels or a.get("seed") is None:
            continue
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        value, _ = outcome(str(a.get("status")), a.get("test/dice"))
        if value is not None:
            values[(str(a["cell"]), int(a["seed"]))] = value
    return values


def describe(sweep: Sweep) -> str:
    """One line naming the design: what is crossed, how many runs a round has, the rounds."""
    design = sweep.design
    s = design.schedule
    if design.kind == "fraction":
        f = design.fraction
        what = (f"2^({f.k}-{f.p}) fraction, generators {', '.join(f.generators)}, resolution {f.resolution()}"
                if f.p else f"2^{f.k} full factorial")
        sides = f" + {len(design.side_arms)} side arm(s) paired by seed with a recipe run" if design.side_arms else ""
        add = {"replicate": "a replicate", "foldover": "a full fold-over"}.get(s.add, f"a fold-over on {s.add}")
        return (f"{what} over {f.k} factors{sides}; {design.round_size(1)} runs a round, each with its own seed "
                f"from {s.first_seed}; {s.initial} round(s) before the first look, then {add} per look, at most "
                f"{s.max} rounds ({design.planned_runs()} runs)")
    return (f"{len(design.cells)} cells, every cell at each seed; seeds {list(s.seeds)} in round 1, then {s.step} "
            f"more a round, at most {s.max} rounds ({design.planned_runs()} runs)")


def _schedule(sweep: Sweep) -> Any:
    return sweep.spec.rounds if sweep.design.kind == "fraction" else sweep.spec.seeds


def run_rounds(study: Any, storage: Any, study_id: int, sweep: Sweep, sweep_dir: Path, run_round: Any,
               echo: Any, where: str) -> tuple[bool, int]:
    """Queue, run and analyse rounds until the rule stops them; returns (interrupted, planned
    cells x seeds not finished). `run_round()` runs the workers until the queue is empty and
    returns True when a signal stopped them."""
    from ..record import code_state
    from .study import enqueue_grid, holds

    design, settings = sweep.design, sweep.settings()
    schedule = _schedule(sweep)
    code = code_state()  # each round's workers import the code anew: it must not change between rounds
    if "+dirty" in code:
        echo(f"sweep {sweep.name}: warning: the code is {code}, not a clean commit: its runs will not show "
             "one clean sha; a study to commit runs from a clean checkout (git worktree add ../study HEAD)")
    if not sweep.claims:
        echo(f"sweep {sweep.name}: nothing to compare (no claims, and no baseline arm to compare the others with): "
             "only the initial round runs")
    target, analysis, stopped_by, unplanned = design.schedule.initial, None, "", 0
    while True:
        planned = [trial for round_ in range(1, target + 1) for trial in sweep.planned(round_)]
        runs = [(t.cell.label, t.seed) for t in planned]
        # the side arms of every round first (one may be a slower network): the rounds end sooner
        queued = enqueue_grid(study, sweep, sorted(planned, key=lambda t: design.cell(t.cell.label).side is None))
        echo(f"sweep {sweep.name}: rounds 1-{target} of at most {design.rounds_max}: {len(runs)} runs planned so far; "
             f"{queued} queued now; storage {where}")
        if run_round():
            values = trial_values(sweep, storage.get_all_trials(study_id, deepcopy=False))
            return True, sum(run not in values for run in runs)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        values = trial_values(sweep, trials)
        missing = [run for run in runs if run not in values]
        if missing:
            stopped_by = f"{len(missing)} planned run(s) did not finish; rerun the command to resume"
            break
        analysis = analyse(design, sweep.claims, values, settings, rounds=target)
        why = _why_stop(analysis, sweep)
        if why:
            stopped_by = why
            analysis = analyse(design, sweep.claims, values, settings, rounds=target, ended=True)
            break
        following = sweep.planned(target + 1)
        held = {t.user_attrs.get("config_hash") for t in trials if holds(t)}
        started = any(trial.config_hash in held for trial in following)
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
        why = schedule.budget_left(len(runs) + len(following), min(starts, default=None))
        if why and not started:
            stopped_by = why
            analysis = analyse(design, sweep.claims, values, settings, rounds=target, ended=True)
            break
        now = code_state()
        if now != code:
            unplanned = len(following)
            stopped_by = (f"the code changed after round {target} ({code} -> {now}): round {target + 1} "
                          "would train on other code than the rounds before it; commit or undo the change, "
                          "then rerun the command to go on (the rounds done are kept)")
            break
        target += 1
    if analysis is None:
        analysis = analyse(design, sweep.claims, values, settings, rounds=max(0, target - 1))
    ended = not (stopped_by.endswith("rerun the command to resume") or stopped_by.startswith("the code changed"))
    record = SequentialRecord.from_analysis(analysis, describe(sweep), stopped_by, ended)
    from ..record import atomic_write_text

    atomic_write_text(sweep_dir / "sequential.json", record.to_json())
    for line in summary_lines(record):
        echo(line)
    return False, len(missing) + unplanned


def _why_stop(analysis: Analysis, sweep: Sweep) -> str:
    """Why no further round starts after this look ('' when one does)."""
    if not sweep.claims:
        return "nothing to compare"
    if analysis.looks_done and all(c.looks and c.looks.verdict not in ("open", "inconclusive") for c in analysis.claims):
        return "every claim is decided"
    if analysis.final or analysis.rounds_done >= analysis.design.rounds_max:
        return f"the last planned round ({analysis.design.rounds_max}) has run"
    if analysis.looks_done and not analysis.open:
        return "no claim is open"
    if analysis.futile:
        return (f"futility: no open claim has a conditional power of 0.1 or more to be settled by round "
                f"{analysis.design.rounds_max}")
    return ""


def summary_lines(record: SequentialRecord) -> list[str]:
    """The console's account of the rounds: one line per claim."""
    lines = [f"rounds: {record.rounds_done} of at most {record.rounds_max} ({record.runs_used} runs), "
             f"{record.looks_done} look(s); stopped: {record.stopped_by}"]
    for c in record.claims:
        if c.estimate is None:
            lines.append(f"  {c.id}: {c.verdict}")
            continue
        text = (f"  {c.id}: {c.verdict}" + (f" at look {c.look}" if c.verdict not in ("open", "inconclusive") else "")
                + f"; Δ {fmt_delta(c.estimate)} (95% CI {fmt_ci((_num(c.ci_low), _num(c.ci_high)))}, "
                f"t {_num(c.t):.2f} on {_num(c.df):.0f} df)")
        if c.verdict in ("open", "inconclusive"):
            text += (f"; about {_runs(c.runs_to_detect)} runs would detect ±{record.margin:g}, "
                     f"{_runs(c.runs_for_equivalence)} would show equivalence")
        lines.append(text)
    return lines


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _runs(n: int | None) -> str:
    return str(n) if n is not None else "more than 10000 rounds of"


def planned_runs_of(sweep: Sweep, rounds: int) -> Mapping[str, list[int]]:
    """Seeds per cell over the first `rounds` rounds (for messages and tests)."""
    out: dict[str, list[int]] = {c.label: [] for c in sweep.cells}
    for run in sweep.design.runs_through(rounds):
        out[run.cell].append(run.seed)
    return out
