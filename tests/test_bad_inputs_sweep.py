"""The bad-input catalogue for `segsweep sweep`: each case exits 2 with one line naming the place
(file, key or item), before any trial starts and without writing a results folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_bad_inputs import QUICK

GRID = "experiment: {q}\nmethod: grid\nparameters:\n  model.init: {{values: [pytorch, paper]}}\n"
RANDOM = "experiment: {q}\nmethod: random\nrun_cap: 2\nparameters:\n  optim.lr: {{min: 0.001, max: 0.1}}\n"

# (case id, sweep file text, extra CLI args, substrings the one error line must hold)
SWEEP_CASES = [
    # The wrong kind of file, or none.
    ("experiment-file", "extends: {q}\nname: mine\ntrain: {{epochs: 2}}\n", [],
     ["bad.yaml", "this is an experiment spec", "not a sweep", "segsweep run"]),
    ("yaml-syntax", "method: [grid\n", [], ["bad.yaml", "invalid YAML"]),
    ("top-level-list", "- grid\n", [], ["bad.yaml", "mapping"]),
    ("experiment-directory", "experiment: .\nmethod: grid\n", [], ["bad.yaml", "experiment:", "is a directory"]),
    ("experiment-missing", "experiment: gone.yaml\nmethod: grid\n", [], ["bad.yaml", "experiment:", "not found"]),
    ("experiment-with-duplicate-key", "experiment: parent.yaml\nmethod: grid\n", [],
     ["parent.yaml", "'train' appears twice", "lines 2 and 3"]),
    # Repeated keys, at every level.
    ("duplicate-top-key", "experiment: {q}\nmethod: grid\nmethod: random\n", [],
     ["bad.yaml", "'method' appears twice", "lines 2 and 3"]),
    ("duplicate-parameter", "experiment: {q}\nmethod: grid\nparameters:\n  model.init:\n    values: [paper]\n"
     "  model.init:\n    values: [he_normal]\n", [], ["bad.yaml", "'model.init' appears twice", "lines 4 and 6"]),
    ("duplicate-in-a-parameter", "experiment: {q}\nmethod: grid\nparameters:\n  optim.lr:\n    values: [0.1]\n"
     "    values: [0.2]\n", [], ["bad.yaml", "'values' appears twice", "lines 5 and 6"]),
    ("duplicate-in-an-arm", "experiment: {q}\nmethod: grid\narms:\n- {{model.init: paper, model.init: xavier}}\n", [],
     ["bad.yaml", "'model.init' appears twice", "lines 4 and 4"]),
    # Seeds the generators cannot take.
    ("seed-beyond-generators", GRID + "seeds: [0, 4294967296]\n", [], ["bad.yaml", "seeds", "0..4294967295"]),
    ("negative-seed", GRID + "seeds: [-1]\n", [], ["bad.yaml", "seeds", "0..4294967295"]),
    ("repeated-seed", GRID + "seeds: [1, 1]\n", [], ["bad.yaml", "seeds", "distinct"]),
    ("sampler-seed-beyond-generators", RANDOM + "optuna: {{sampler_seed: 4294967296}}\n", [],
     ["bad.yaml", "optuna.sampler_seed", "4294967295"]),
    ("override-seed-beyond-generators", GRID, ["seed=4294967296"], ["override seed", "4294967295"]),
    # Infinity and NaN where they mean nothing: refused as spec errors, never trained as "diverged".
    ("range-infinite-max", RANDOM.replace("max: 0.1", "max: .inf"), [],
     ["bad.yaml", "parameters.optim.lr.max", "finite"]),
    ("range-nan-min", RANDOM.replace("min: 0.001", "min: .nan"), [], ["bad.yaml", "parameters.optim.lr.min", "finite"]),
    ("values-infinite-loss-weight", "experiment: {q}\nmethod: grid\nparameters:\n  loss.bce: {{values: [1.0, .inf]}}\n",
     [], ["bad.yaml", "parameters.loss.bce.values[1]", "finite number, got inf"]),
    ("constant-infinite-weight-decay", GRID + "  optim.weight_decay: {{value: .inf}}\n", [],
     ["bad.yaml", "parameters.optim.weight_decay.value", "finite"]),
    ("arm-infinite-weight-decay", "experiment: {q}\nmethod: grid\narms:\n- {{}}\n- {{optim.weight_decay: .inf}}\n", [],
     ["bad.yaml", "arms[1].optim.weight_decay", "finite number, got inf"]),
    ("override-infinite-weight-decay", GRID, ["optim.weight_decay=inf"], ["override optim.weight_decay", "finite"]),
    ("override-infinite-loss-weight", GRID, ["loss.dice=.inf"], ["override loss.dice", "finite"]),
    # What a sweep may vary, and how.
    ("unknown-key", GRID + "seedz: [1]\n", [], ["bad.yaml", "seedz", "did you mean 'seeds'"]),
    ("missing-method", "experiment: {q}\nparameters:\n  model.init: {{values: [paper]}}\n", [], ["bad.yaml", "method"]),
    ("grid-with-a-range", RANDOM.replace("method: random\nrun_cap: 2", "method: grid"), [],
     ["bad.yaml", "parameters.optim.lr", "method random or bayes"]),
    ("random-without-run-cap", RANDOM.replace("run_cap: 2\n", ""), [], ["bad.yaml", "run_cap"]),
    ("arms-in-a-search", RANDOM + "arms:\n- {{model.init: paper}}\n", [], ["bad.yaml", "arms", "method: grid"]),
    ("seed-as-parameter", "experiment: {q}\nmethod: grid\nparameters:\n  seed: {{values: [0, 1]}}\n", [],
     ["bad.yaml", "parameters.seed", "seeds: [...]"]),
    ("unknown-parameter-key", "experiment: {q}\nmethod: grid\nparameters:\n  model.nit: {{values: [paper]}}\n", [],
     ["bad.yaml", "parameters.model.nit", "model.init"]),
    ("invalid-parameter-value", "experiment: {q}\nmethod: grid\nparameters:\n  model.init: {{values: [glorot]}}\n", [],
     ["bad.yaml", "parameters.model.init.values[0]", "glorot"]),
    ("override-of-a-varied-key", GRID, ["model.init=xavier"], ["override model.init", "varied by the sweep"]),
]


@pytest.mark.parametrize("case, text, args, expected", SWEEP_CASES, ids=[c[0] for c in SWEEP_CASES])
def test_bad_sweep_exits_2_with_one_line(cli, tmp_path: Path, monkeypatch, case, text, args, expected) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parent.yaml").write_text(f"extends: {QUICK}\ntrain: {{epochs: 1}}\ntrain: {{epochs: 2}}\n")
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(text.format(q=QUICK))
    result = cli("sweep.py", sweep, *args, "--results", tmp_path / "results")
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "results").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "parent.yaml"]
