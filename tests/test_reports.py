"""Ablation reports: planted effects are found, statistics match scipy, output is deterministic."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from segsweep.analysis import stats
from segsweep.reports.ablation import ReportOptions, write_report
from segsweep.analysis.arms import group_arms
from segsweep.analysis.inference import compute_effects, compute_interactions, summarize_arm
from segsweep.reports.records import ReportError, load_runs
from segsweep.spec import ExperimentSpec, override_spec, spec_to_dict

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 30
SEEDS = (0, 1, 2, 3)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- fake run records


def write_run(
    root: Path,
    overrides: dict,
    seed: int,
    per_image: np.ndarray | None,
    status: str = "completed",
    epochs: int = 4,
    stamp: str = "20250101-000000",
    test_dice: float | None = None,
    extra_config: dict | None = None,
) -> Path:
    """A run folder as the trainer writes it (config.yaml, summary.json, metrics.csv,
    test_per_image.csv), with a val curve rising to the final Dice."""
    spec = override_spec(ExperimentSpec(), {**overrides, "seed": seed, **(extra_config or {})})
    arm = "-".join(f"{k.split('.')[-1]}{v}" for k, v in sorted(overrides.items())) or "base"
    run_dir = root / "runs" / arm / f"{stamp}-s{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    mean = float(per_image.mean()) if per_image is not None else (test_dice if test_dice is not None else math.nan)
    val = [mean * (e + 1) / (epochs + 1) + 0.01 for e in range(epochs)]
    lines = ["epoch,train/loss,val/loss,val/dice,val/dice_global,val/iou,lr,epoch_s,img_per_s"]
    lines += [f"{e + 1},{1 - v:.6f},{1 - v:.6f},{v:.6f},{v:.6f},{v * 0.8:.6f},0.0001,1.0,50.0"
              for e, v in enumerate(val)]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    if per_image is not None:
        rows = ["image_id,dice,iou"]
        rows += [f"img_{i:03d},{float(d)!r},{float(d) * 0.8!r}" for i, d in enumerate(per_image)]
        (run_dir / "test_per_image.csv").write_text("\n".join(rows) + "\n")
    summary = {
        "status": status, "name": spec.name, "seed": seed, "best_epoch": epochs, "val/dice": val[-1],
        "test/dice": test_dice if test_dice is not None else mean, "test/dice_global": mean + 0.01,
        "test/iou": mean * 0.8, "epochs_run": epochs, "wall_s": 10.0 + seed, "config_hash": "x", "arm_hash": "y",
        "git_sha": "abc1234", "device": "cpu", "precision": "fp32", "versions": {"torch": "2.14.1"},
        "time_budget_s": None, "error": None, "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def planted_sweep(root: Path, seeds=SEEDS) -> dict:
    """2 x 2 grid: model.init he_normal adds +0.03 per image (with per-image spread 0.02);
    model.dropout changes nothing (noise sd 0.001, far inside the 0.005 margin).
    Returns {(init, dropout, seed): per-image Dice}."""
    rng = np.random.default_rng(123)
    base = rng.uniform(0.6, 0.85, N_IMAGES)
    seed_offset = {s: rng.normal(0, 0.02) for s in seeds}
    effect_a = {s: 0.03 + rng.normal(0, 0.02, N_IMAGES) for s in seeds}
    values = {}
    for init in ("pytorch", "he_normal"):
        for dropout in (0.0, 0.1):
            for s in seeds:
                dice = base + seed_offset[s] + (effect_a[s] if init == "he_normal" else 0)
                dice = np.clip(dice + rng.normal(0, 0.001, N_IMAGES), 0, 1)
                values[(init, dropout, s)] = dice
                write_run(root, {"model.init": init, "model.dropout": dropout}, s, dice)
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "planted", "method": "grid", "seeds": list(seeds), "metric": {"name": "val/dice", "goal": "maximize"},
        "parameters": {"model.init": {"values": ["pytorch", "he_normal"]}, "model.dropout": {"values": [0.0, 0.1]}},
    }))
    return values


@pytest.fixture
def planted(tmp_path):
    root = tmp_path / "sweeps" / "planted"
    return root, planted_sweep(root)


# --------------------------------------------------------------------------- statistics vs scipy


def test_paired_t_and_interval_match_scipy():
    a = np.array([0.81, 0.79, 0.84, 0.80, 0.83])
    b = np.array([0.78, 0.78, 0.80, 0.79, 0.79])
    ours = stats.paired_t(a - b)
    ref = sps.ttest_rel(a, b)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-12)
    d = a - b
    lo, hi = stats.t_interval(d)
    ref_lo, ref_hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-12)


def test_tost_matches_two_one_sided_scipy_tests():
    d = np.array([0.001, -0.002, 0.0005, 0.0015, -0.001, 0.002])
    margin = 0.005
    ref = max(
        sps.ttest_1samp(d, -margin, alternative="greater").pvalue,
        sps.ttest_1samp(d, margin, alternative="less").pvalue,
    )
    assert stats.tost_t(d, margin) == pytest.approx(ref, rel=1e-12)
    assert stats.tost_t(d, margin) < 0.05
    # A clear 0.03 difference is not equivalent within 0.005.
    assert stats.tost_t(d + 0.03, margin) > 0.5


def test_degenerate_inputs_have_exact_limits():
    assert stats.paired_t([0.0, 0.0, 0.0]).p == 1.0
    assert stats.paired_t([0.01, 0.01, 0.01]).p == 0.0
    assert math.isnan(stats.paired_t([0.01]).p)
    assert stats.tost_t([0.001] * 3, 0.005) == 0.0
    assert stats.tost_t([0.01] * 3, 0.005) == 1.0
    assert stats.wilcoxon([0.0] * 10) == 1.0


def test_wilcoxon_matches_scipy():
    exact = np.array([0.03, 0.05, -0.01, 0.02, 0.04, 0.015, 0.06, 0.012, -0.022, 0.035, 0.045, 0.025])
    assert stats.wilcoxon(exact) == pytest.approx(sps.wilcoxon(exact).pvalue, rel=1e-12)
    # Negative ranks 1 and 5: W- = 6; 14 of the 4096 sign patterns have W <= 6; two-sided doubles it.
    assert stats.wilcoxon(exact) == pytest.approx(2 * 14 / 4096, rel=1e-12)
    with_zeros = np.concatenate([exact, [0.0, 0.0, -0.005, 0.012, 0.018, -0.03, 0.022, 0.0]])
    ref = sps.wilcoxon(with_zeros, zero_method="pratt", alternative="two-sided").pvalue
    assert stats.wilcoxon(with_zeros) == pytest.approx(ref, rel=1e-12)


def test_bootstrap_ci_is_seeded_and_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(0).normal(0.02, 0.05, 200)
    ours = stats.bootstrap_ci(x, resamples=10_000, seed=0)
    assert ours == stats.bootstrap_ci(x, resamples=10_000, seed=0)
    ref = sps.bootstrap((x,), np.mean, n_resamples=10_000, method="percentile", random_state=1).confidence_interval
    width = ref.high - ref.low
    assert ours[0] == pytest.approx(ref.low, abs=0.05 * width)
    assert ours[1] == pytest.approx(ref.high, abs=0.05 * width)
    # The normal-theory interval of the mean is close for n = 200.
    assert ours == pytest.approx(stats.t_interval(x), abs=0.1 * width)


def test_holm_on_a_known_vector():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = stats.holm([0.01, math.nan, 0.04, 0.9])
    assert adjusted[0] == pytest.approx(0.03) and math.isnan(adjusted[1])
    assert adjusted[2:] == pytest.approx([0.08, 0.9])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


# --------------------------------------------------------------------------- planted effects


def test_planted_effect_is_found_and_null_factor_is_equivalent(planted):
    root, values = planted
    study = group_arms(load_runs([root]))
    assert study.design == "full factorial"
    assert [f.key for f in study.factors] == ["model.dropout", "model.init"]
    assert {f.key: f.baseline for f in study.factors} == {"model.dropout": 0.0, "model.init": "he_normal"}

    # Compare against pytorch init as the baseline, as a user would.
    study = group_arms(load_runs([root]), {"model.init": "pytorch"})
    effects, skipped = compute_effects(study, margin=0.005)
    assert not skipped
    by_factor = {e.factor: e for e in effects}
    a, b = by_factor["model.init"], by_factor["model.dropout"]

    assert a.pairs == 2 and a.by_seed.n == len(SEEDS) and a.by_image.n == N_IMAGES
    assert a.by_seed.mean == pytest.approx(0.03, abs=0.01)
    assert a.by_seed.ci[0] > 0 and a.by_image.ci[0] > 0
    assert a.verdict == "better"
    assert b.verdict == "equivalent (within ±0.005)"
    assert abs(b.by_seed.mean) < 0.002

    # Seed level: paired t on the per-seed Dice averaged over the other factor, as scipy computes it.
    treated = [np.mean([values[("he_normal", d, s)].mean() for d in (0.0, 0.1)]) for s in SEEDS]
    control = [np.mean([values[("pytorch", d, s)].mean() for d in (0.0, 0.1)]) for s in SEEDS]
    assert a.by_seed.p == pytest.approx(sps.ttest_rel(treated, control).pvalue, rel=1e-9)
    lo, hi = sps.t.interval(0.95, len(SEEDS) - 1, loc=np.mean(np.subtract(treated, control)),
                            scale=sps.sem(np.subtract(treated, control)))
    assert a.by_seed.ci == pytest.approx((lo, hi), rel=1e-9)
    # Image level: Wilcoxon on per-image differences averaged over seeds and the other factor.
    per_image = np.mean(
        [values[("he_normal", d, s)] - values[("pytorch", d, s)] for d in (0.0, 0.1) for s in SEEDS], axis=0)
    assert a.by_image.mean == pytest.approx(per_image.mean(), rel=1e-9)
    assert a.by_image.p == pytest.approx(sps.wilcoxon(per_image, zero_method="pratt").pvalue, rel=1e-9)
    # Holm over the two comparisons.
    assert a.by_seed.p_holm == pytest.approx(stats.holm([a.by_seed.p, b.by_seed.p])[0])


def test_interaction_table_and_null_interaction(planted):
    root, values = planted
    study = group_arms(load_runs([root]), {"model.init": "pytorch"})
    (table,) = compute_interactions(study)
    assert table.factors == ("model.dropout", "model.init")
    expected = np.mean([values[("he_normal", 0.1, s)].mean() for s in SEEDS])
    assert table.means[(0.1, "he_normal")] == pytest.approx(expected, rel=1e-9)
    (inter,) = table.interactions
    manual = np.mean([
        (values[("he_normal", 0.1, s)].mean() - values[("he_normal", 0.0, s)].mean())
        - (values[("pytorch", 0.1, s)].mean() - values[("pytorch", 0.0, s)].mean())
        for s in SEEDS
    ])
    assert inter.by_seed.mean == pytest.approx(manual, abs=1e-12)
    # No planted interaction: the estimate and both intervals sit well inside +-0.005.
    for evidence in (inter.by_seed, inter.by_image):
        assert -0.005 < evidence.ci[0] <= evidence.mean <= evidence.ci[1] < 0.005


def test_one_factor_at_a_time_compares_with_the_baseline_arm(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.uniform(0.6, 0.8, N_IMAGES)
    arms = {(): 0.0, (("model.init", "he_normal"),): 0.04, (("model.batchnorm", False),): -0.05}
    for change, shift in arms.items():
        for s in (0, 1, 2):
            write_run(tmp_path, dict(change), s, np.clip(base + shift + rng.normal(0, 0.005, N_IMAGES), 0, 1))
    study = group_arms(load_runs([tmp_path]))
    assert study.design == "one-factor-at-a-time"
    assert study.baseline_arm is not None
    assert study.baseline_arm.levels == {"model.batchnorm": True, "model.init": "pytorch"}
    effects, _ = compute_effects(study)
    by_factor = {e.factor: e for e in effects}
    assert by_factor["model.init"].pairs == 1 and by_factor["model.init"].verdict == "better"
    assert by_factor["model.batchnorm"].verdict == "worse"
    assert by_factor["model.batchnorm"].by_seed.mean == pytest.approx(-0.05, abs=0.01)
    assert compute_interactions(study) == []


def test_diverged_runs_count_and_failed_runs_do_not(tmp_path):
    dice = np.full(N_IMAGES, 0.8)
    for s in (0, 1, 2):
        write_run(tmp_path, {}, s, dice)
    write_run(tmp_path, {"model.init": "paper"}, 0, dice)
    write_run(tmp_path, {"model.init": "paper"}, 1, None, status="diverged", test_dice=math.nan)
    write_run(tmp_path, {"model.init": "paper"}, 2, None, status="failed", test_dice=math.nan)
    study = group_arms(load_runs([tmp_path]), {"model.init": "pytorch"})
    paper = next(a for a in study.arms if a.levels["model.init"] == "paper")
    summary = summarize_arm(paper)
    assert summary.n == 2 and summary.diverged == 1 and summary.imputed == 1
    assert summary.excluded == {"failed": 1}
    assert summary.test[0] == pytest.approx(0.4)  # (0.8 + 0) / 2
    (effect,), _ = compute_effects(study)
    assert effect.contrast.seeds == (0, 1)  # seed 2 failed: unpaired
    assert effect.contrast.seed_values == pytest.approx((0.0, -0.8))
    assert effect.by_image.n == N_IMAGES and effect.by_image.mean == pytest.approx(-0.4)


# --------------------------------------------------------------------------- the written report


def test_report_is_deterministic_with_valid_figures(planted, tmp_path):
    root, _ = planted
    out = tmp_path / "out"
    report = write_report([root], out, ["model.init=pytorch"])
    first = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    write_report([root], out, ["model.init=pytorch"])
    second = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert first == second

    text = report.read_text()
    pngs = sorted(p for p in first if p.endswith(".png"))
    assert pngs == ["curves_model.dropout.png", "curves_model.init.png", "test_dice_by_arm.png"]
    for name in pngs:
        assert f"]({name})" in text
        assert first[name].startswith(PNG_SIGNATURE)
        import matplotlib.image

        pixels = matplotlib.image.imread(out / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0
    assert "**model.init: he_normal vs pytorch** → **better**" in text
    assert "**model.dropout: 0.1 vs 0** → **equivalent (within ±0.005)**" in text
    assert "design: **full factorial**" in text
    assert "Budgets:** equal across arms" in text
    assert str(tmp_path) not in text  # relative paths only: the report can be moved and committed


def test_report_defaults_into_the_sweep_folder_and_notes_a_missing_optuna_study(tmp_path):
    dice = np.full(N_IMAGES, 0.7)
    for lr in (1e-4, 1e-3):
        write_run(tmp_path, {"optim.lr": lr}, 0, dice + lr * 10)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "tpe", "method": "bayes"}))
    report = write_report([tmp_path])
    assert report == tmp_path / "report.md"
    text = report.read_text()
    assert "## Optuna study" in text and "Skipped: no Optuna storage found" in text
    assert "one seed is always inconclusive" in text and "→ **inconclusive**" in text


def test_optuna_importances_and_parallel_coordinates_from_the_journal(tmp_path):
    optuna = pytest.importorskip("optuna")
    from optuna.storages.journal import JournalFileBackend

    rng = np.random.default_rng(0)
    for lr, wd in ((1e-4, 0.0), (1e-3, 0.01)):
        write_run(tmp_path, {"optim.lr": lr, "optim.weight_decay": wd}, 0, rng.uniform(0.6, 0.8, N_IMAGES))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "tpe", "method": "random"}))
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(study_name="tpe", storage=storage, direction="maximize")
    dists = {"optim.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
             "optim.weight_decay": optuna.distributions.FloatDistribution(0.0, 0.1)}
    for i in range(8):
        params = {"optim.lr": float(10 ** rng.uniform(-5, -2)), "optim.weight_decay": float(rng.uniform(0, 0.1))}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=0.5 + 0.1 * math.log10(params["optim.lr"]) / -5))
    report = write_report([tmp_path], tmp_path / "out")
    first = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}
    write_report([tmp_path], tmp_path / "out")  # Optuna's plots set a global style: must not leak
    assert first == {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}
    text = report.read_text()
    assert "Source: study 'tpe' in journal.log." in text
    assert "No comparison could be made" in text  # no two trials differ in one parameter only
    for name in ("optuna_importances.png", "optuna_parallel_coordinate.png"):
        assert f"]({name})" in text
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- errors


def test_script_exits_2_on_a_folder_without_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, str(REPO / "scripts/report.py"), str(empty)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "no runs found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (empty / "report.md").exists()


def test_unparseable_summary_is_one_line_naming_the_file(planted, cli):
    root, _ = planted
    broken = next(root.rglob("summary.json"))
    broken.write_text("{not json")
    result = cli("report.py", root)
    assert result.code == 2
    err = result.err
    assert err.startswith(f"error: {broken}: unparseable summary") and err.count("\n") == 1
    assert not (root / "report.md").exists()


def test_baseline_must_name_a_factor_and_one_of_its_levels(planted):
    root, _ = planted
    with pytest.raises(ReportError, match=r"model\.lr: not a factor .*factors: model\.dropout, model\.init"):
        write_report([root], baseline=["model.lr=0.1"])
    with pytest.raises(ReportError, match=r"not a level of model\.init; levels: he_normal, pytorch"):
        write_report([root], baseline=["model.init=xavier"])
    assert ReportOptions().margin == 0.005
