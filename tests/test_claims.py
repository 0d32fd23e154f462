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
ARMS = [{}, {"model.batchnorm": False}, {"model.dropout": 0.0}, {"optim.lr": 0.001}, {"data.mask": "boundary"}]
CLAIMS = [
    {"id": "bn", "quote": "BatchNorm improves training stability", "arm": {}, "against": {"model.batchnorm": False}},
    {"id": "drop", "quote": "dropout reduces overfitting", "arm": {}, "against": {"model.dropout": 0.0}},
    {"id": "lr", "quote": "lr 1e-3 is better", "arm": {"optim.lr": 0.001}, "against": {}, "note": "a noisy one"},
    {"id": "lr_vs_bn", "quote": "lr beats no-BN", "arm": {"optim.lr": 0.001}, "against": {"model.batchnorm": False}},
    {"id": "edges", "quote": "edges as foreground", "arm": {"data.mask": "boundary"}, "against": {},
     "target_changes": True},
]


def planted_claims(root: Path) -> Path:
    """Baseline 0.80; no BatchNorm 0.10 lower (clear); dropout 0 equal within noise 1e-4 (equivalent);
    lr 1e-3 +0.002 with seed noise 0.01 (open)."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.6, 0.95, 50)
    shift = {0: 0.0, 1: -0.10, 2: 0.0, 3: 0.002, 4: -0.3}
    noise = {0: 0.0, 1: 0.002, 2: 0.0001, 3: 0.01, 4: 0.01}
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
    assert list(rows) == ["bn", "drop", "lr", "lr_vs_bn", "edges"]
    bn = rows["bn"]
    assert bn[1] == "“BatchNorm improves training stability”" and bn[2].startswith("A") and " vs A" in bn[2]
    assert float(bn[3]) == pytest.approx(0.10, abs=0.01) and bn[6] == "4"
    assert bn[7] == "better" and bn[8] == "**supported**" and bn[9] == "—"
    assert rows["drop"][7].startswith("equivalent") and rows["drop"][8] == "**contradicted**"
    assert rows["lr"][7] == "inconclusive" and rows["lr"][8] == "not settled"
    assert "to detect ±0.005" in rows["lr"][9] and "to show equivalence" in rows["lr"][9]
    assert rows["lr_vs_bn"][7] == "better"  # two non-baseline arms compared directly
    assert "target changes" in rows["edges"][3] and rows["edges"][7] == "—"
    assert "- **lr** (optim.lr=0.001 vs baseline): a noisy one" in text


def test_seeds_needed_is_the_power_function_of_the_open_comparison(tmp_path: Path) -> None:
    from segsweep.reports.claims import claim_rows, read_claims
    from segsweep.reports.design import group_arms
    from segsweep.reports.power import seeds_needed
    from segsweep.reports.records import load_runs

    root = planted_claims(tmp_path / "sweep")
    study = group_arms(load_runs([root]))
    rows = claim_rows(study, read_claims(yaml.safe_load((root / "sweep.yaml").read_text())), 0.005, 0.05, 200, 0)
    lr = next(r for r in rows if r.claim.id == "lr")
    want = seeds_needed(lr.contrast.seed_values, 0.005, 0.005, 0.05, 4)  # 4 claims compared
    text = write_report([root], tmp_path / "out").read_text()
    assert claims_table(text)["lr"][9].startswith(f"{want.to_detect} to detect")


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
    ({"id": "x", "quote": "q", "arm": {"model.dropout": 0.3}}, "claims[0].arm: {'model.dropout': 0.3} is not one of"),
    ({"id": "x", "quote": "q", "arm": {}}, "claims[0].against: a claim compares two different arms"),
    ({"id": "x", "quote": "q", "arm": {"model.dropout": 0.0}, "expects": "maybe"}, "claims.0.expects"),
])
def test_a_bad_claim_is_refused_with_one_line(tmp_path: Path, claim: dict, says: str) -> None:
    sweep = {"experiment": str(REPO / "experiments" / "quickstart.yaml"), "method": "grid",
             "arms": [{}, {"model.dropout": 0.0}], "claims": [claim]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_the_committed_claims_sweep_loads_and_its_claims_name_its_arms() -> None:
    sweep = load_sweep(REPO / "sweeps" / "pets_mini_claims.yaml")
    assert len(sweep.spec.claims) == 12 and len(sweep.cells) == 13
    assert sweep.base.train.time_budget_s is None and sweep.base.model.head == "sigmoid"
    double = next(c for c in sweep.cells if "loss.double_sigmoid_bce" in c.overrides)
    assert sweep.trial_spec(double.overrides, 0, "t", double.label).loss.bce == 0.0


def test_the_report_says_when_the_runs_ran_and_how_many_at_once(tmp_path: Path) -> None:
    """Wall time from the run folders' start stamps + wall_s: the span, the run-minutes, their ratio."""
    root = tmp_path / "sweep"
    for seed, stamp in ((0, "20250101-100000"), (1, "20250101-100005"), (2, "20250101-101000")):
        write_run(root, {}, seed, np.full(10, 0.8), stamp=stamp)  # wall_s 10 + seed
    text = write_report([root], tmp_path / "out").read_text()
    assert ("- **Wall time:** the 3 runs ran from 2025-01-01 10:00 to 10:10: 10 min of wall time, "
            "1 run-minutes in all (0.1 runs at a time on average)") in text
