"""The torch-free table of registered names (`segsweep.names`) holds exactly what the registries
hold, and a spec with a typo (an unknown key, model, loss term, ...) is answered by `segsweep run`
before torch is imported: one line, exit 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "quickstart.yaml"


def _registries() -> dict:
    from segsweep.data import DATASETS
    from segsweep.losses import LOSSES
    from segsweep.models import DECODERS, MODELS
    from segsweep.optim import OPTIMIZERS, SCHEDULERS
    from segsweep.sweeps.engines import SWEEP_ENGINES
    from segsweep.sweeps.launchers import LAUNCHERS

    return {r.kind: r for r in (MODELS, DECODERS, LOSSES, DATASETS, OPTIMIZERS, SCHEDULERS, SWEEP_ENGINES, LAUNCHERS)}


def test_the_table_lists_every_built_in_name_of_every_registry() -> None:
    """A new `@X.register("name")` without its line in names.BUILTIN fails here."""
    import importlib

    from segsweep.names import BUILTIN

    registries = _registries()
    assert set(BUILTIN) == set(registries)
    for kind, entry in BUILTIN.items():
        assert sorted(entry.names) == registries[kind].names(), kind
        module = importlib.import_module(f"segsweep{entry.module}")
        assert getattr(module, entry.attr) is registries[kind], kind  # where names() looks for run-time names


def test_a_name_registered_at_run_time_is_valid_and_listed() -> None:
    from segsweep.errors import SpecError
    from segsweep.losses import LOSSES
    from segsweep.names import names
    from segsweep.spec import ExperimentSpec, LossSpec, override_spec

    with LOSSES.registered("toy_term", object):
        assert "toy_term" in names("loss")
        assert LossSpec(toy_term=1.0).model_extra == {"toy_term": 1.0}
    assert "toy_term" not in names("loss")
    with pytest.raises(SpecError, match=r"unknown model 'unte'; did you mean 'unet'\? valid: 'resnet34_unet'"):
        override_spec(ExperimentSpec(), {"model.name": "unte"})


# A driver that runs `segsweep run ARGS...` as `python -m segsweep` does and prints, as JSON, the
# exit code, whether torch was imported, and what stderr said.
DRIVER = """
import contextlib, io, json, runpy, sys
sys.argv = ["segsweep", *sys.argv[1:]]
err = io.StringIO()
with contextlib.redirect_stderr(err):
    try:
        runpy.run_module("segsweep", run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "err": err.getvalue()}))
"""

TYPO_CASES = [
    ("unknown-key", "extends: {q}\ntrian: {{epochs: 2}}\n", ["trian", "did you mean 'train'"]),
    ("unknown-model", "extends: {q}\nmodel: {{name: unet2}}\n", ["model.name", "unknown model 'unet2'", "'unet'"]),
    ("unknown-loss-term", "extends: {q}\nloss: {{foo: 1}}\n", ["loss.foo", "unknown key", "double_sigmoid_bce"]),
    ("unknown-decoder", "extends: {q}\nmodel: {{decoder: segformer}}\n", ["model.decoder", "'lab'", "'smp'"]),
    ("unknown-dataset", "extends: {q}\ndata: {{name: cityscapes}}\n", ["data.name", "'oxford_pet'", "'folder'"]),
    ("unknown-optimiser", "extends: {q}\noptim: {{name: lion}}\n", ["optim.name", "'adamw'", "'sgd'"]),
    ("unknown-scheduler", "extends: {q}\noptim: {{scheduler: cosin}}\n", ["optim.scheduler", "did you mean 'cosine'"]),
]


@pytest.mark.parametrize("case, text, expected", TYPO_CASES, ids=[c[0] for c in TYPO_CASES])
def test_a_typo_is_answered_before_torch_is_imported(tmp_path: Path, case, text, expected) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text.format(q=QUICK))
    proc = subprocess.run([sys.executable, "-c", DRIVER, "run", str(spec), "--results", str(tmp_path / "results")],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2, result
    lines = result["err"].strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0], result
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert result["torch"] is False, f"torch was imported before the answer: {lines[0]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_valid_spec_still_reaches_the_models_own_checks(tmp_path: Path) -> None:
    """Control: the driver does see torch once the names pass and a model's own rule runs."""
    spec = tmp_path / "size.yaml"
    spec.write_text(f"extends: {QUICK}\nmodel: {{name: resnet34_unet}}\ndata: {{image_size: 48}}\n")
    proc = subprocess.run([sys.executable, "-c", DRIVER, "run", str(spec)], capture_output=True, text=True,
                          cwd=tmp_path, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2 and "divisible by 32" in result["err"] and result["torch"] is True, result
