"""A sweep's planned trials are resolved once, lazily: `--status` on a sweep whose seed schedule
has the largest `max` accepted builds no more seeds, planned trials or spec validations than
the same sweep with a small `max` (counted, not timed), and answers the same."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, max_seeds: int) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "bounded", "experiment": str(REPO / "experiments" / "quickstart.yaml"), "method": "grid",
        "parameters": {"optim.lr": {"values": [0.001, 0.003]}},
        "seeds": {"initial": [0, 1, 2], "max": max_seeds, "step": 1, "until": "conclusive"},
    }, sort_keys=False))
    return path


def status_with_counts(tmp_path: Path, max_seeds: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], dict]:
    """Queue round 1 of the sweep (as its driver does), then answer `segsweep sweep --status`
    in-process from a fresh load, counting what the status builds."""
    from segsweep.cli import main
    from segsweep.sweeps.spec import load_sweep
    from segsweep.sweeps.storage import open_storage
    from segsweep.sweeps.study import enqueue_grid, open_study

    folder = tmp_path / f"max{max_seeds}"
    folder.mkdir()
    path = write(folder / "bounded.yaml", max_seeds)
    journal = folder / "results" / "sweeps" / "bounded" / "journal.log"
    sweep = load_sweep(path)
    store = open_storage(str(journal), sweep.spec.optuna)
    enqueue_grid(open_study(sweep, store), sweep, sweep.planned(1))

    counts = count(monkeypatch)
    monkeypatch.chdir(folder)
    lines: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    with pytest.raises(SystemExit) as done:
        main(["sweep", str(path), "--status"])
    assert done.value.code == 0
    monkeypatch.undo()
    return lines, dict(counts)


def count(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counters of planned runs and seeds built and experiment specs validated, from now on."""
    import segsweep.analysis.design as design_module
    from segsweep.spec import ExperimentSpec

    counts = {"planned runs": 0, "seeds": 0, "validations": 0}
    real_run, real_seeds = design_module.PlannedRun, design_module.Design.round_seeds
    real_validate = ExperimentSpec.model_validate.__func__

    class CountedRun(real_run):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            counts["planned runs"] += 1
            super().__init__(*args, **kwargs)

    def counted_seeds(self: Any, round_: int) -> tuple[int, ...]:
        seeds = real_seeds(self, round_)
        counts["seeds"] += len(seeds)
        return seeds

    def counted_validate(cls: Any, *args: Any, **kwargs: Any) -> Any:
        counts["validations"] += 1
        return real_validate(cls, *args, **kwargs)

    monkeypatch.setattr(design_module, "PlannedRun", CountedRun)
    monkeypatch.setattr(design_module.Design, "round_seeds", counted_seeds)
    monkeypatch.setattr(ExperimentSpec, "model_validate", classmethod(counted_validate))
    return counts


def test_status_of_the_largest_schedule_builds_what_a_small_one_builds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segsweep.sweeps.schedule import MAX_SEEDS

    small_lines, small = status_with_counts(tmp_path, 8, monkeypatch)
    large_lines, large = status_with_counts(tmp_path, MAX_SEEDS, monkeypatch)
    assert large == small, (large, small)
    # Bounded by what was queued (round 1: 3 seeds x 2 cells) and the next round, not by max.
    assert large["planned runs"] <= 2 * (3 + 1) * 2 and large["seeds"] <= 2 * (3 + 1)
    assert small_lines[0] == large_lines[0] and "0 done" in large_lines[0] and "6 waiting" in large_lines[0]


def test_a_round_is_resolved_once(tmp_path: Path) -> None:
    from segsweep.sweeps.spec import load_sweep

    sweep = load_sweep(write(tmp_path / "bounded.yaml", 20))
    first = sweep.planned(1)
    assert sweep.planned(1) is first  # the same objects: every reader shares one resolution
    assert [(t.cell.label, t.seed) for t in first] == [(c.label, s) for s in (0, 1, 2) for c in sweep.cells]
    assert {t.round for t in first} == {1} and len({t.config_hash for t in first}) == 6
    assert [t.seed for t in sweep.planned(2)] == [3, 3]
    assert set(sweep._planned) == {1, 2}  # rounds nobody asked for are not resolved


def test_a_status_poll_resolves_and_validates_nothing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress bar asks for the status every 2 s: after the first answer, the sweep's
    planned trials and cell specs are all known."""
    from segsweep.sweeps.schedule import MAX_SEEDS
    from segsweep.sweeps.spec import load_sweep
    from segsweep.sweeps.status import sweep_status
    from segsweep.sweeps.storage import open_storage
    from segsweep.sweeps.study import enqueue_grid, open_study

    sweep = load_sweep(write(tmp_path / "bounded.yaml", MAX_SEEDS))
    journal = str(tmp_path / "journal.log")
    enqueue_grid(open_study(sweep, open_storage(journal, sweep.spec.optuna)), sweep, sweep.planned(1))
    first = sweep_status(sweep, journal)
    counts = count(monkeypatch)
    assert sweep_status(sweep, journal) == first
    assert counts == {"planned runs": 0, "seeds": 0, "validations": 0}
