"""`scripts/benchmark.py --quick` runs end to end and writes every figure; its helpers compute
what they claim. No wall-clock time is asserted: speed is reported, not tested."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from segsweep.bench import FIGURES, TARGETS
from segsweep.bench.contenders import QUICK
from segsweep.bench.measure import interleaved, median_ci, paired_ratio, step_pairs, target_text, verdict
from segsweep.record import git_sha

REPO = Path(__file__).resolve().parents[1]

NUMBER = (int, float)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    # One thread: the smoke test shares the cores with the rest of the suite.
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--threads", "1",
         "--out", str(out), "--cache-dir", str(tmp / "cache")],
        capture_output=True, text=True, timeout=1200, cwd=tmp,  # a hang guard: --quick shares the cores
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_writes_every_figure(quick_report: tuple[dict, str]) -> None:
    report, _ = quick_report
    assert report["quick"] is True and report["schema"] == 1
    sha = report["code"].split("+")[0]  # the commit it measured (+dirty: the tree may be edited meanwhile)
    assert sha == git_sha().split("+")[0] and len(sha) == 40
    assert set(report["figures"]) == set(FIGURES)
    for name, fig in report["figures"].items():
        if fig.get("skipped"):  # only the optional peer, and the compile (a minute) in --quick
            assert (name == "peer_ratio" and "bench extra" in fig["note"]) or \
                (name == "study_compile" and "--quick" in fig["note"]), name
            continue
        assert isinstance(fig["value"], NUMBER) and math.isfinite(fig["value"]) and fig["value"] > 0, name
        assert isinstance(fig["peak_rss_mb"], NUMBER) and fig["peak_rss_mb"] > 0, name
        if name in TARGETS:
            assert fig["target"] == target_text(name) and fig["met"] in (True, False), name
    figures = report["figures"]
    assert figures["trainer_vs_raw"]["raw_img_s"] == pytest.approx(figures["raw_step"]["value"], rel=1e-3)
    # trainer_vs_raw pairs each trainer step with a raw step beside it: one pair per training batch.
    pairs = figures["trainer_vs_raw"]["step_pairs_s"]
    assert figures["trainer_vs_raw"]["pairs"] == len(pairs) == QUICK.reps * QUICK.batches
    assert all(t > 0 and r > 0 for t, r in pairs) and figures["trainer_vs_raw"]["ci95"] is None  # too few
    assert set(figures["fast_vs_naive"]["per_model"]) == set(QUICK.naive_models)
    assert 0 < figures["trial_overhead"]["value"] <= 1 and 0 < figures["study_trial_overhead"]["value"] <= 1
    assert figures["study_trial_overhead"]["breakdown_s"]["test"] == 0 < figures["trial_overhead"]["breakdown_s"]["test"]
    in_line = figures["trial_overhead"]["in_line_saves"]  # the contender: each checkpoint save joined at once
    assert 0 < in_line["share"] <= 1 and in_line["epochs"] >= 1 and in_line["breakdown_s"]["test"] > 0
    assert in_line["overhead_ratio"] > 0
    reps = figures["trial_overhead"]["repetitions"]
    assert len(reps["ours"]) == len(reps["in_line_saves"]) == 2
    assert figures["trial_overhead"]["value"] == pytest.approx(sum(r["share"] for r in reps["ours"]) / 2, abs=1e-4)
    assert figures["memory"]["workers"] == QUICK.workers
    # The study workload: its recipe, two workers side by side, each with its own paired ratios.
    workers = figures["study_raw_step"]["workers"]
    assert [w["worker"] for w in workers] == [0, 1]
    assert figures["study_trainer_vs_raw"]["value"] == pytest.approx(min(w["trainer_vs_raw"] for w in workers), abs=1e-4)
    assert all(w["pairs"] == len(w["step_pairs_s"]) == QUICK.study_reps * QUICK.study_batches for w in workers)
    assert figures["study_fast_vs_naive"]["value"] == pytest.approx(min(w["fast_vs_naive"] for w in workers), abs=1e-4)
    assert all(w["naive"]["channels_last"] is False and w["naive"]["cache"] is False for w in workers)
    runs = figures["study_run_overhead"]["runs"]
    assert len(runs) == 2
    assert figures["study_run_overhead"]["value"] == pytest.approx(max(r["share"] for r in runs), abs=1e-4)
    assert all(r["epochs"] == QUICK.study_epochs and r["breakdown_s"]["test"] > 0 for r in runs)
    machine = report["machine"]
    assert machine["torch_threads"] == 1 and "avx512_bf16" in machine["flags"]


def test_quick_prints_the_table(quick_report: tuple[dict, str]) -> None:
    report, stdout = quick_report
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["figure", *FIGURES]
    assert len(rows) == len(report["figures"]) + 1
    assert "python scripts/benchmark.py --quick --threads 1" in stdout


def test_interleaving_alternates_the_order() -> None:
    calls: list[str] = []
    results = interleaved({"a": lambda: calls.append("a") or 1.0,
                                     "b": lambda: calls.append("b") or 2.0}, reps=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert results == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}


def test_paired_ratio_is_the_median_of_per_repetition_ratios() -> None:
    # Load that comes and goes hits both sides of a pair: the paired median ignores it.
    assert paired_ratio([10, 2, 9], [5, 1, 3]) == 2.0
    assert verdict("trainer_vs_raw", 0.98) is True and verdict("trainer_vs_raw", 0.96) is False  # target >= 0.98
    assert verdict("peer_ratio", 1.01) is False
    assert verdict("trial_overhead", 0.05) is False
    assert verdict("mfu", None) is None


def test_median_interval_is_the_binomial_order_statistics() -> None:
    # n = 10: x(2)..x(9) covers the median with 1 - 2 * 11/1024 = 0.979; x(3)..x(8) only 0.891.
    assert median_ci([float(x) for x in range(10, 0, -1)]) == (2.0, 9.0)
    assert median_ci(list(range(1, 21))) == (6, 15) and median_ci(list(range(1, 101))) == (40, 61)
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # 5 values: no interval reaches 95%


def test_step_pairs_compare_each_trainer_step_with_its_raw_step() -> None:
    # (trainer s, raw s): trainer 10% slower on every step but one outlier that the median ignores.
    pairs = [(1.1, 1.0)] * 6 + [(5.0, 1.0)]
    out = step_pairs(pairs, images=8)
    assert out["ratio"] == pytest.approx(1 / 1.1) and out["pairs"] == 7
    assert out["trainer_img_s"] == pytest.approx(8 / 1.1, abs=1e-3) and out["raw_img_s"] == 8.0
    assert out["ci95"] == [pytest.approx(0.2), pytest.approx(1 / 1.1, abs=1e-4)]  # n = 7: x(1), x(7)


def test_training_flops_match_a_hand_count() -> None:
    """FlopCounterMode on a one-conv model: forward 2*k*k*cin*cout*H*W, backward twice that
    (input and weight gradients); the benchmark counts multiply-adds as 2 FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        conv(x).sum().backward()
    forward = 2 * 3 * 3 * 4 * 8 * 16 * 16 * 2
    assert counter.get_total_flops() == 3 * forward


def test_reps_and_only_measure_just_the_trainer_with_more_pairs(tmp_path: Path) -> None:
    """`--only trainer_vs_raw --reps 3`: the trainer's step pairs alone (no naive trainer, no other
    group), three repetitions of QUICK.batches pairs, and the command line says so."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--threads", "1", "--reps", "3",
         "--only", "trainer_vs_raw", "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert report["plan"]["reps"] == 3 and report["command"].endswith("--reps 3 --only trainer_vs_raw")
    assert figures["trainer_vs_raw"]["pairs"] == 3 * QUICK.batches and figures["trainer_vs_raw"]["ci95"] is not None
    assert figures["fast_vs_naive"]["skipped"] and figures["study_trainer_vs_raw"]["skipped"]


def test_reps_below_two_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--reps", "1",
                           "--out", str(tmp_path / "bench.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--reps: expected an integer of at least 2" in proc.stderr
    assert not (tmp_path / "bench.json").exists()
