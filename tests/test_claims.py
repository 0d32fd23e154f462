"""The claims table: a sweep's `claims:` name two of its arms each; the report opens with one
row per claim (quote, arms, effect with CIs, seeds, verdict, what it means for the claim, seeds
needed while open); a claim whose arms change the target is not compared on Dice. Bad claims
are refused when the sweep loads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from segsweep.errors import SpecError
from segsweep.reports.ablation import ReportOptions, write_report
from segsweep.reports.records import ReportError
from segsweep.sweeps.spec import load_sweep
from test_reports import write_run

REPO = Path(__file__).resolve().parents[1]
MIXED = ReportOptions(allow_mixed_data=True)  # the edges arm scores another target: without its claim, needed
SEEDS = (0, 1, 2, 3)
ARMS = [{}, {"model.batchnorm": False}, {"model.dropout": 0.3}, {"optim.lr": 0.001}, {"data.mask": "boundary"}]
CLAIMS = [
    {"id": "bn", "quote": "BatchNorm improves training stability", "arm": {}, "against": {"model.batchnorm": False}},
    {"id": "drop", "quote": "dropout reduces overfitting", "arm": {"model.dropout": 0.3}, "against": {}},
    {"id": "lr", "quote": "lr 1e-3 is better", "arm": {"optim.lr": 0.001}, "against": {}, "note": "a noisy one"},
    {"id": "lr_vs_bn", "quote": "lr beats no-BN", "arm": {"optim.lr": 0.001}, "against": {"model.batchnorm": False}},
    {"id": "edges", "quote": "edges as foreground", "arm": {"data.mask": "boundary"}, "against": {},
     "target_changes": True},
]


def planted_claims(root: Path) -> Path:
    """Baseline 0.80; no BatchNorm 0.10 lower (clear); dropout 0 equal within noise 1e-4 (equivalent);
    lr 1e-3 +0.004 with seed noise 0.006 (open)."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.6, 0.95, 50)
    shift = {0: 0.0, 1: -0.10, 2: 0.0, 3: 0.004, 4: -0.3}
    noise = {0: 0.0, 1: 0.002, 2: 0.0001, 3: 0.006, 4: 0.006}
    for i, arm in enumerate(ARMS):
        for seed in SEEDS:
            seed_shift = shift[i] + noise[i] * rng.standard_normal()
            write_run(root, arm, seed, np.clip(base + seed_shift + 1e-4 * rng.standard_normal(50), 0, 1))
    sweep = {"name": "claims", "method": "grid", "seeds": list(SEEDS), "arms": ARMS, "claims": CLAIMS}
    (root / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return root


def claims_table(text: str) -> dict[str, list[str]]:
    section = text.split("## Claims")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| claim |")]
    return {cells[0]: cells for cells in ([c.strip() for c in row.strip("|").split(" | ")] for row in rows)}


def test_claims_table_opens_the_report_with_one_row_per_claim(tmp_path: Path) -> None:
    text = write_report([planted_claims(tmp_path / "sweep")], tmp_path / "out").read_text()  # edges is declared
    assert text.index("## Claims") < text.index("## Arms") and "--allow-mixed-data" not in text
    rows = claims_table(text)
    assert list(rows) == ["bn", "drop", "lr", "lr_vs_bn"]
    bn = rows["bn"]
    assert bn[1] == "“BatchNorm improves training stability”" and bn[2].startswith("`A") and "paired by seed" in bn[2]
    assert float(bn[3]) == pytest.approx(0.10, abs=0.01) and bn[5].endswith("(12)")  # 20 runs, 5 cells, 4 seeds
    assert bn[6] == "**better** at look 1" and bn[7] == "**supported**" and bn[8] == "—"
    assert rows["drop"][6].startswith("**equivalent**") and rows["drop"][7] == "**contradicted**"
    assert rows["lr"][6] == "**inconclusive**" and rows["lr"][7] == "not settled"
    assert "to detect ±margin" in rows["lr"][8] and "to show equivalence" in rows["lr"][8]
    assert rows["lr_vs_bn"][6].startswith("**better**")  # two non-baseline arms compared directly
    assert "- **edges** (“edges as foreground”): another target: no Dice is compared across targets" in text
    assert "- **lr** (optim.lr=0.001 vs the recipe): a noisy one" in text
    assert "**3 of 4 trained claims conclusive**" in text


def test_runs_needed_is_the_analysis_power_function_of_the_open_claim(tmp_path: Path) -> None:
    from segsweep.analysis.arms import group_arms
    from segsweep.reports.claims import claims_view
    from segsweep.reports.records import load_runs

    root = planted_claims(tmp_path / "sweep")
    runs = load_runs([root])
    view = claims_view(group_arms(runs), runs, yaml.safe_load((root / "sweep.yaml").read_text()), root, None)
    lr = next(r for r in view.analysis.claims if r.claim.id == "lr")
    assert lr.runs_to_detect is not None and lr.runs_to_detect % 20 == 0  # whole rounds of the 5 arms x 4 seeds
    text = write_report([root], tmp_path / "out").read_text()
    assert claims_table(text)["lr"][8].startswith(f"{lr.runs_to_detect} to detect")


def test_no_claims_no_section(tmp_path: Path) -> None:
    root = planted_claims(tmp_path / "sweep")
    sweep = yaml.safe_load((root / "sweep.yaml").read_text())
    del sweep["claims"]
    (root / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    with pytest.raises(ReportError, match="data.mask is 'pet_and_boundary' in .* but 'boundary' in"):
        write_report([root], tmp_path / "out")  # no claim declares the target change: refused
    assert not (tmp_path / "out").exists()
    text = write_report([root], tmp_path / "out", options=MIXED).read_text()
    assert "## Claims" not in text and "data.mask: boundary vs" in text  # compared, under the warning


@pytest.mark.parametrize("claim, says", [
    ({"id": "x", "quote": "q", "arm": {"model.dropout": 0.3}},
     "claims[0].arm: {model.dropout: 0.3} is not one of the sweep's arms (matched by value); the arms: baseline; "
     "model.dropout=0"),
    ({"id": "x", "quote": "q", "arm": {}}, "claims[0].against: {} (the base experiment) is the same arm as"),
    ({"id": "x", "quote": "q", "arm": {"model.dropout": 0}, "against": {"model.dropout": 0.0}},
     "is the same arm as claims.arm {model.dropout: 0}"),
    ({"id": "x", "quote": "q", "arm": {"model.dropout": 0.0}, "expects": "maybe"}, "claims[0].expects"),
    ({"id": "x", "quote": "q", "arm": {"model.dropout": 0.0}, "expect": "better"},
     "claims[0].expect: unknown key; did you mean 'expects'?"),
    ({"id": "x", "quote": "q", "arm": {"model.dropout": 2.0}}, "claims[0].arm: {model.dropout: 2} is not a valid arm"),
])
def test_a_bad_claim_is_refused_with_one_line(tmp_path: Path, claim: dict, says: str) -> None:
    sweep = {"experiment": str(REPO / "experiments" / "quickstart.yaml"), "method": "grid",
             "arms": [{}, {"model.dropout": 0.0}], "claims": [claim]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_the_committed_claims_sweep_loads_and_its_claims_name_its_terms() -> None:
    """sweeps/pets_mini_claims.yaml: six claims in a 2^(6-2) fraction, four side arms, two claims
    listed without training; the recipe is study.yaml scaled down, the double sigmoid included."""
    sweep = load_sweep(REPO / "sweeps" / "pets_mini_claims.yaml")
    assert len(sweep.spec.claims) == 12 and len(sweep.claims) == 10
    assert sweep.design.kind == "fraction" and sweep.design.fraction.resolution() == 4
    assert len(sweep.design.cells) == 16 + 4 and sweep.design.round_size(1) == 20
    assert sweep.base.model.init == "he_fan_out" and sweep.base.loss.double_sigmoid_bce == 1.0
    assert sweep.base.checkpoint.floor == 0.7 and sweep.base.train.precision == "fp32"
    factor_claims = {c.id: c.factor for c in sweep.claims if c.factor}
    assert factor_claims == {"he_init": "model.init", "dropout": "model.dropout", "bce_dice": "loss.dice_batch",
                             "lr_1e-4": "optim.lr", "dataset_stats": "data.normalize",
                             "affine": "data.augment.affine_p"}
    lr = next(c for c in sweep.claims if c.id == "lr_1e-4")
    assert lr.sign == -1  # 1e-4 (the other level) minus 1e-3 (the recipe's)
    sigmoid = next(c for c in sweep.claims if c.id == "sigmoid_as_meant")
    assert sigmoid.primary == "equivalence" and len(sigmoid.pairs) == 1 and "baseline" not in sigmoid.pairs[0]
    resnet = next(c for c in sweep.cells if "study_resnet34_unet" in c.label)
    assert sweep.trial_spec(resnet.overrides, 0, "t", resnet.label).model.base_channels == 64


def test_the_report_says_when_the_runs_ran_and_how_many_at_once(tmp_path: Path) -> None:
    """Wall time from the run folders' start stamps + wall_s: the span, the run-minutes, their ratio."""
    root = tmp_path / "sweep"
    for seed, stamp in ((0, "20250101-100000"), (1, "20250101-100005"), (2, "20250101-101000")):
        write_run(root, {}, seed, np.full(10, 0.8), stamp=stamp)  # wall_s 10 + seed
    text = write_report([root], tmp_path / "out").read_text()
    assert ("- **Wall time:** the 3 runs ran from 2025-01-01 10:00 to 10:10: 10 min of wall time, "
            "1 run-minutes in all (0.1 runs at a time on average)") in text


@pytest.mark.parametrize("written", [{"model.dropout": 0}, {"model.dropout": 0.0}, {"model.dropout": 0.00}])
def test_claims_match_arms_by_their_validated_values(tmp_path: Path, written: dict) -> None:
    """`0` and `0.0` (and `1e-4` and `1.0e-4`) are the same arm: a claim matches by value, not by text."""
    sweep = {"experiment": str(REPO / "experiments" / "quickstart.yaml"), "method": "grid",
             "arms": [{}, {"model.dropout": 0.0}, {"optim.lr": 1.0e-4}],
             "claims": [{"id": "d", "quote": "q", "arm": {}, "against": written},
                        {"id": "l", "quote": "q", "arm": {"optim.lr": 1e-4}, "against": {}}]}
    path = tmp_path / "by_value.yaml"
    path.write_text(yaml.safe_dump(sweep))
    loaded = load_sweep(path)
    assert [c.pairs for c in loaded.claims] == [(("baseline", "model.dropout=0"),), (("optim.lr=0.0001", "baseline"),)]


def test_an_omitted_against_without_a_baseline_arm_lists_the_arms(tmp_path: Path) -> None:
    sweep = {"experiment": str(REPO / "experiments" / "quickstart.yaml"), "method": "grid",
             "arms": [{"model.dropout": 0.0}, {"optim.lr": 1.0e-4}],
             "claims": [{"id": "d", "quote": "q", "arm": {"model.dropout": 0.0}}]}
    path = tmp_path / "no_base.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    assert ("claims[0].against: {} (the base experiment) is not one of the sweep's arms (matched by value); the arms: "
            "model.dropout=0; optim.lr=0.0001") in str(info.value)
