"""The "Honesty and method" section of an ablation report: checks on the records that its
claims rest on (selection on validation, equal budgets, seeds, the Dice definition, diverged
and failed runs, runs trained with the study's double sigmoid, provenance)."""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

import numpy as np

from ..format import fmt_float, format_level
from ..analysis.arms import Study
from ..analysis.inference import ArmSummary
from .markdown import distinct, table
from .records import RunRecord


def honesty_lines(study: Study, summaries: Sequence[ArmSummary], sweep: Mapping[str, Any]) -> list[str]:
    """Checks on the records that the claims in the report rest on."""
    counted = [r for a in study.arms for r in a.by_seed.values()]
    lines = ["## Honesty and method", ""]
    lines += _selection_lines(counted)
    lines += _budget_lines(summaries)
    lines.append(_seeds_line(study, sweep))
    lines.append(_dice_line(counted))
    lines.append(_outcome_line(study))
    lines += double_sigmoid_lines(study.runs, {id(r): a.id for a in study.arms for r in a.runs})
    lines += _wall_lines(study.runs)
    provenance = _provenance(counted)
    if provenance:
        lines.append(f"- **Provenance:** {'; '.join(provenance)}.")
    return lines + [""]


def _selection_lines(counted: Sequence[RunRecord]) -> list[str]:
    """Checkpoint selection on validation (each run's own `checkpoint.monitor` and floor); test
    evaluated once, on that checkpoint."""
    mismatched, peeked, no_curve, below_floor = [], [], 0, 0
    monitors = set()
    for run in counted:
        monitor = str(run.summary.get("checkpoint_monitor") or "val/dice")
        monitors.add(monitor)
        epochs, val = run.curve.get("epoch", ()), np.array(run.curve.get(monitor, ()), dtype=float)
        if any(col.startswith("test/") for col in run.curve):
            peeked.append(run)
        if not len(val) or not np.isfinite(val).any():
            no_curve += 1
            continue
        floor = run.summary.get("checkpoint_floor")
        if run.summary.get("floor_passed") is False and isinstance(floor, (int, float)) and not (val > floor).any():
            below_floor += 1  # no epoch passed the floor: the last epoch's weights were tested, as the rule says
            continue
        best = int(epochs[int(np.nanargmax(val))])
        if run.number("best_epoch") != best:
            recorded = format_level(run.summary.get("best_epoch"))
            mismatched.append(f"{run.run_dir.name} (best_epoch {recorded}, {monitor} peaks at {best})")
    by = " or ".join(sorted(monitors)) or "val/dice"
    if mismatched:
        check = f"**{len(mismatched)} run(s) whose `best_epoch` is not the {by} peak**: {', '.join(mismatched)}"
    else:
        kept = " and an epoch kept" if below_floor else ""
        check = (f"in all {len(counted) - no_curve - below_floor} runs with a val curve{kept}, `best_epoch` is the "
                 f"epoch of the highest {by}")
    if below_floor:
        check += (f"; in {below_floor} run(s) no epoch passed `checkpoint.floor`, so (as that rule says) the last "
                  "epoch's weights were tested")
    return [
        f"- **Model selection on validation only.** Each run's checkpoint was chosen by {by} and the test "
        f"split was evaluated once, on that checkpoint (trainer contract); check: {check}.",
        "- **Test split not used per epoch:** " + (
            "no `metrics.csv` has a `test/*` column." if not peeked
            else f"**{len(peeked)} run(s) log test metrics per epoch** ({', '.join(r.run_dir.name for r in peeked)}): "
                 "if those were used to choose anything, the test numbers are optimistic."
        ),
    ]


def _budget_lines(summaries: Sequence[ArmSummary]) -> list[str]:
    """Whether every arm had the same epochs, time budget and early stopping (a table if not)."""
    budget_rows = []
    for s in summaries:
        cfg = s.arm.config
        budget_rows.append((
            s.arm.id, format_level(cfg.get("train.epochs")), format_level(cfg.get("train.time_budget_s")),
            format_level(cfg.get("train.early_stopping_patience")), fmt_float(s.epochs_run, 1), fmt_float(s.wall_s, 1),
        ))
    notes = []
    for col, what in ((1, "configured epochs"), (2, "time budgets"), (3, "early-stopping patience"), (4, "epochs run")):
        values = sorted({row[col] for row in budget_rows})
        if len(values) > 1:
            notes.append(f"{what} differ across arms ({', '.join(values)})")
    walls = [s.wall_s for s in summaries if math.isfinite(s.wall_s)]
    ratio = ""
    if walls and min(walls) > 0:
        ratio = f"; mean wall time ranges {min(walls):.1f}–{max(walls):.1f} s (max/min {max(walls) / min(walls):.2f})"
    lines = [
        "- **Budgets:** " + ("equal across arms (same configured epochs, time budget, early stopping and epochs run)"
                             if not notes else "**not equal**: " + "; ".join(notes)) + ratio + "."
    ]
    if notes:
        header = ["arm", "train.epochs", "train.time_budget_s", "early stopping", "epochs run (mean)", "wall s (mean)"]
        lines += [""] + table(header, budget_rows)
    return lines


def _seeds_line(study: Study, sweep: Mapping[str, Any]) -> str:
    expected = sweep.get("seeds") if isinstance(sweep.get("seeds"), list) else None
    all_seeds = sorted(set(expected or []) | {s for a in study.arms for s in a.by_seed})
    short = [f"{a.id} lacks seed(s) {', '.join(map(str, sorted(set(all_seeds) - set(a.by_seed))))}"
             for a in study.arms if set(a.by_seed) != set(all_seeds)]
    return (
        f"- **Seeds:** {', '.join(map(str, all_seeds))}" + (" in every arm" if not short else "; " + "; ".join(short) +
        " (comparisons use only seeds present in every arm involved)") + "."
    )


def _dice_line(counted: Sequence[RunRecord]) -> str:
    """The Dice definition (with the study's soft batch Dice when recorded), and its consistency
    with the per-image file."""
    inconsistent = []
    for run in counted:
        if run.per_image and not run.imputed:
            mean = float(np.mean(list(run.per_image.values())))
            if abs(mean - run.test_dice) > 1e-4:
                inconsistent.append(f"{run.run_dir.name} ({mean:.4f} vs {run.test_dice:.4f})")
    return (
        "- **Dice:** `test/dice` is the mean over test images of per-image Dice at threshold 0.5 (an image with "
        "empty mask and empty prediction scores 1; ignored pixels skipped); `test/dice_global` (Dice of the pixel "
        "counts pooled over the test set) is shown beside it in the arms table. "
        + (_SOFT_DICE if any(math.isfinite(r.number("test/dice_soft_batch8")) for r in counted) else "")
        + ("Per-image files agree with `test/dice` in every run that has one." if not inconsistent
           else f"**Per-image files disagree with `test/dice`** in {', '.join(inconsistent)}.")
        + empty_truth_sentence(counted)
    )


def empty_truth_sentence(runs: Sequence[RunRecord]) -> str:
    """' k of n test images have no foreground; ...' when summary.json records it and k > 0
    (there the both-empty convention, not the model, decides those images' scores)."""
    counts = sorted({(r.summary["test/empty_masks"], r.summary["test/images"]) for r in runs
                     if isinstance(r.summary.get("test/empty_masks"), int) and isinstance(r.summary.get("test/images"), int)})
    if not counts or all(empty == 0 for empty, _ in counts):
        return ""
    told = "; ".join(f"{empty} of {n}" for empty, n in counts)
    return (f" {told} test images have no foreground (truth mask empty at the training size); per-image Dice "
            "counts each of them as 1 when the prediction is empty too and 0 otherwise, so they pull `test/dice` "
            "towards whether the model predicts nothing there.")


DOUBLE_SIGMOID = "BCE-with-logits applied to the sigmoid head's output (a second sigmoid)"  # what the switch trains


def double_sigmoid(run: RunRecord) -> bool:
    """Whether a run trained with `loss.double_sigmoid_bce` (BCE-with-logits on sigmoid outputs)."""
    weight = run.config.get("loss.double_sigmoid_bce", 0)
    return run.summary.get("double_sigmoid") is True or (isinstance(weight, int | float) and weight > 0)


def double_sigmoid_lines(runs: Sequence[RunRecord], arm_of: Mapping[int, str] | None = None) -> list[str]:
    """A marked line when any run trained with the study's double sigmoid; nothing otherwise."""
    marked = [r for r in runs if double_sigmoid(r)]
    if not marked:
        return []
    arms = sorted({arm_of[id(r)] for r in marked if arm_of and id(r) in arm_of}, key=lambda a: (len(a), a))
    where = f"arm(s) {', '.join(arms)}, " if arms else ""
    return [
        f"- **Double sigmoid:** {where}{len(marked)} run{'s' if len(marked) > 1 else ''} trained with "
        f"`loss.double_sigmoid_bce`: {DOUBLE_SIGMOID}, "
        "reproducing the study's BCE term on purpose; it is not the usual BCE, so those arms measure the "
        "study's training, not a correct sigmoid head."
    ]


_SOFT_DICE = ("`test/dice_soft_batch8` is the study's own measure: soft Dice on the probabilities (no threshold), "
              "pooled over each batch of 8 test images in file order, averaged over batches. ")


def _outcome_line(study: Study) -> str:
    return (
        "- **Diverged and failed runs:** a diverged run (NaN) is an outcome of its arm: it counts in every mean and "
        "comparison with the test Dice the trainer recorded for its best-on-validation checkpoint, or 0 on every "
        "test image when none was recorded. Failed, interrupted and pruned runs are not outcomes of the arm "
        "(crash, kill, sweep pruning): they are shown in the counts and left out of means and comparisons."
        + (f" {len(study.duplicates)} counted run(s) were repeated for the same arm and seed; "
           "the latest folder is used."
           if study.duplicates else "")
    )


def _wall_lines(runs: Sequence[RunRecord]) -> list[str]:
    """When the runs took place: from the first run folder's start stamp to the last run's end
    (stamp + `wall_s`), and the run-minutes in that span; nothing when a folder has no stamp."""
    spans = []
    for run in runs:
        try:
            start = datetime.strptime(run.run_dir.name[:15], "%Y%m%d-%H%M%S")
        except ValueError:
            return []
        wall = run.number("wall_s")
        if not math.isfinite(wall):
            return []
        spans.append((start, start + timedelta(seconds=wall)))
    if not spans:
        return []
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    minutes = (last - first).total_seconds() / 60
    busy = sum((b - a).total_seconds() for a, b in spans) / 60
    at_once = f" ({busy / minutes:.1f} runs at a time on average)" if minutes > 0 else ""
    return [f"- **Wall time:** the {len(spans)} runs ran from {first:%Y-%m-%d %H:%M} to {last:%H:%M}"
            f"{'' if first.date() == last.date() else f' on {last:%Y-%m-%d}'}: {minutes:.0f} min of wall time, "
            f"{busy:.0f} run-minutes in all{at_once} (each run's `wall_s` from its folder's start stamp; process "
            "start-ups between runs are inside the span)."]


def _provenance(counted: Sequence[RunRecord]) -> list[str]:
    """git, device, precision and torch version of the counted runs, flagged when mixed."""
    prov = []
    for key, label in (("git_sha", "git"), ("device", "device"), ("precision", "precision")):
        values = distinct(r.summary.get(key) for r in counted)
        if values:
            prov.append(f"{label} {', '.join(values)}" + (" (**mixed**)" if len(values) > 1 else ""))
    versions = [r.summary.get("versions") for r in counted]
    torch_versions = distinct(v.get("torch") for v in versions if isinstance(v, dict))
    if torch_versions:
        prov.append(f"torch {', '.join(torch_versions)}" + (" (**mixed**)" if len(torch_versions) > 1 else ""))
    return prov
