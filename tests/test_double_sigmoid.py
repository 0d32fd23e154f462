"""The study's loss on purpose: `loss.double_sigmoid_bce` is BCEWithLogitsLoss on a sigmoid head's
output; it is the only way a sigmoid is applied twice, it is refused with a logits head or beside
a misspelt key (exit 2, one line naming it), warned at start, recorded in summary.json and marked in reports."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from segsweep.errors import SpecError
from segsweep.losses import SoftDice, build_loss
from segsweep.spec import ExperimentSpec, override_spec

REPO = Path(__file__).resolve().parents[1]

STUDY = {"model.head": "sigmoid", "loss.bce": 0.0, "loss.double_sigmoid_bce": 1.0, "loss.dice": 1.0}


def known_input() -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.linspace(-4, 4, 2 * 6 * 6).reshape(2, 1, 6, 6)
    mask = (torch.arange(2 * 6 * 6).reshape(2, 6, 6) % 3 == 0).to(torch.uint8)
    return z, mask


def test_the_loss_is_bce_with_logits_on_the_sigmoid_output_plus_dice() -> None:
    spec = override_spec(ExperimentSpec(), STUDY)
    z, mask = known_input()
    out = torch.sigmoid(z)  # what the study's nn.Sigmoid() head outputs
    loss = build_loss(spec.loss, spec.model.head)(out, mask)
    want = nn.BCEWithLogitsLoss()(out.squeeze(1), mask.float()) + SoftDice("sigmoid")(out, mask)
    torch.testing.assert_close(loss, want)
    # and it is not the probability BCE the sigmoid head uses otherwise (no second sigmoid there)
    plain = build_loss(override_spec(ExperimentSpec(), {"model.head": "sigmoid"}).loss, "sigmoid")(out, mask)
    correct = nn.BCELoss()(out.squeeze(1), mask.float()) + SoftDice("sigmoid")(out, mask)
    torch.testing.assert_close(plain, correct, rtol=1e-5, atol=1e-6)
    assert abs(float(plain) - float(loss)) > 0.05


def test_ignored_pixels_are_skipped() -> None:
    z, mask = known_input()
    out = torch.sigmoid(z)
    term = build_loss(override_spec(ExperimentSpec(), {**STUDY, "loss.dice": 0.0}).loss, "sigmoid")
    ignored = mask.clone()
    ignored[:, :2] = 255
    keep = ignored != 255
    want = nn.BCEWithLogitsLoss()(out.squeeze(1)[keep], mask[keep].float())
    torch.testing.assert_close(term(out, ignored), want)


def test_refused_with_a_logits_head() -> None:
    with pytest.raises(SpecError, match="loss.double_sigmoid_bce") as info:
        override_spec(ExperimentSpec(), {**STUDY, "model.head": "logits"})
    assert "needs model.head: sigmoid (got logits)" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("args", [
    ["model.head=logits", "loss.bce=0", "loss.double_sigmoid_bce=1"],
    ["model.head=sigmoid", "loss.bce=0", "loss.double_sigmod_bce=1"],  # misspelt: unknown key, no double sigmoid
])
def test_the_command_refuses_with_one_line_and_exit_2(args: list[str], tiny_overrides, tmp_path: Path, cli) -> None:
    results = tmp_path / "results"
    done = cli("run.py", REPO / "experiments" / "quickstart.yaml", *args, "--results", results)
    assert done.code == 2
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and "loss.double_sig" in lines[0], done.err
    assert not results.exists()  # nothing written


def test_a_run_warns_records_it_and_reports_mark_it(tiny_spec, tmp_path: Path, caplog) -> None:
    from segsweep.reports.ablation import write_report
    from segsweep.train import fit

    with caplog.at_level(logging.WARNING, logger="segsweep"):
        fit(tiny_spec(**STUDY, **{"train.epochs": 1}), tmp_path / "runs" / "study")
    assert any("loss.double_sigmoid_bce" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert json.loads((tmp_path / "runs" / "study" / "summary.json").read_text())["double_sigmoid"] is True
    fit(tiny_spec(**{"model.head": "logits", "train.epochs": 1}), tmp_path / "runs" / "logits")
    plain = json.loads((tmp_path / "runs" / "logits" / "summary.json").read_text())
    assert plain["double_sigmoid"] is False
    text = write_report([tmp_path / "runs"], tmp_path / "report").read_text()
    assert "**Double sigmoid:**" in text and "1 run" in text.split("**Double sigmoid:**")[1].splitlines()[0]
