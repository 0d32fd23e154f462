"""`train.channels_last: auto`: decided by a measured probe, once per key (machine, model, size,
batch, threads, precision), cached in the user cache; never over an explicit setting; once per
sweep for every trial; a resumed run keeps the choice it started with. Probes are counted
(`speed.probes_run`), never timed."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from segsweep.train import speed
from segsweep.train.speed import SpeedChoice, resolve_speed

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own user cache and no sweep choices installed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    speed.install_sweep_choices({})
    yield tmp_path / "xdg" / "segsweep" / speed.CACHE_NAME
    speed.install_sweep_choices({})


def probes(action) -> int:
    before = speed.probes_run
    action()
    return speed.probes_run - before


def test_a_probe_runs_once_per_key_and_a_new_key_probes_again(tiny_spec, own_cache: Path) -> None:
    spec = tiny_spec()
    got: list[SpeedChoice] = []
    assert probes(lambda: got.append(resolve_speed(spec, CPU, "fp32"))) == 1
    assert got[0].source == "probe" and got[0].ratio > 0 and got[0].channels_last == (got[0].ratio > 1)
    assert probes(lambda: got.append(resolve_speed(spec, CPU, "fp32"))) == 0
    assert got[1].source == "cache" and got[1].channels_last == got[0].channels_last and got[1].key == got[0].key
    stored = json.loads(own_cache.read_text())
    assert stored[got[0].key]["channels_last"] == got[0].channels_last

    for changed in (tiny_spec(**{"train.batch_size": 4}), tiny_spec(**{"data.image_size": 64}),
                    tiny_spec(**{"model.base_channels": 4})):
        assert probes(lambda: got.append(resolve_speed(changed, CPU, "fp32"))) == 1
        assert got[-1].key != got[0].key
    assert probes(lambda: resolve_speed(spec, CPU, "bf16")) == 1  # precision is part of the key
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads != 2 else 1)
    try:
        assert probes(lambda: resolve_speed(spec, CPU, "fp32")) == 1  # so are the threads
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(own_cache.read_text())) == 6


def test_a_probe_leaves_the_random_state_as_it_found_it(tiny_spec) -> None:
    torch.manual_seed(7)
    state = torch.get_rng_state()
    resolve_speed(tiny_spec(), CPU, "fp32")
    assert torch.equal(torch.get_rng_state(), state)


def test_a_corrupt_cache_is_probed_again_with_one_warning(tiny_spec, own_cache: Path, caplog) -> None:
    own_cache.parent.mkdir(parents=True)
    own_cache.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="segsweep"):
        assert probes(lambda: resolve_speed(tiny_spec(), CPU, "fp32")) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert str(own_cache) in warnings[0] and "unreadable speed-probe cache" in warnings[0]
    assert len(json.loads(own_cache.read_text())) == 1  # replaced by a valid one


def test_an_unwritable_cache_still_decides_with_one_warning(tiny_spec, tmp_path: Path, monkeypatch, caplog) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # segsweep/ cannot be made below a file
    with caplog.at_level(logging.WARNING, logger="segsweep"):
        choice = resolve_speed(tiny_spec(), CPU, "fp32")
    assert choice.source == "probe"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write the speed-probe cache" in warnings[0] and "\n" not in warnings[0]
    assert probes(lambda: resolve_speed(tiny_spec(), CPU, "fp32")) == 1  # nothing cached: it probes again


@pytest.mark.parametrize("setting", [True, False])
def test_an_explicit_setting_is_never_overridden(tiny_spec, own_cache: Path, setting: bool) -> None:
    spec = tiny_spec(**{"train.channels_last": setting})
    auto = tiny_spec()
    key = speed.probe_key(auto, CPU, "fp32", torch.get_num_threads())
    own_cache.parent.mkdir(parents=True)
    own_cache.write_text(json.dumps({key: {"channels_last": not setting, "source": "probe", "ratio": 9.0}}))
    speed.install_sweep_choices({speed.sweep_key(spec): {"channels_last": not setting, "source": "probe"}})
    given = SpeedChoice(not setting, "checkpoint")
    for choice in (resolve_speed(spec, CPU, "fp32"), resolve_speed(spec, CPU, "fp32", given)):
        assert choice == SpeedChoice(setting, "spec")
    assert probes(lambda: resolve_speed(spec, CPU, "fp32")) == 0
    assert resolve_speed(auto, CPU, "fp32").source == "sweep"  # the sweep's choice is there, and used by `auto`
    speed.install_sweep_choices({})
    assert resolve_speed(auto, CPU, "fp32").source == "cache"  # so is the cache


def test_a_sweep_decides_once_and_the_first_record_wins(tiny_spec, tmp_path: Path) -> None:
    specs = [tiny_spec(**{"model.dropout": d}) for d in (0.0, 0.1, 0.2)]  # one key: dropout is not in it
    specs.append(tiny_spec(**{"data.image_size": 64}))  # a second key
    record = tmp_path / "sweep" / "speed_choices.json"
    assert probes(lambda: speed.sweep_choices(specs, 1, record)) == 2
    first = json.loads(record.read_text())
    assert set(first) == {speed.sweep_key(specs[0]), speed.sweep_key(specs[3])}
    assert probes(lambda: speed.sweep_choices(specs, 1, record)) == 0  # a later task reads the record

    # Two tasks deciding at once: the one that links its record first wins for both.
    other = tmp_path / "other" / "speed_choices.json"
    theirs = {key: {**value, "channels_last": not value["channels_last"], "source": "probe"}
              for key, value in first.items()}
    real = speed.resolve_speed

    def racing(*args, **kwargs):
        if not other.exists():
            other.parent.mkdir(parents=True, exist_ok=True)
            other.write_text(json.dumps(theirs))  # the other task linked its record meanwhile
        return real(*args, **kwargs)

    speed.resolve_speed = racing
    try:
        assert speed.sweep_choices(specs, 1, other) == theirs
    finally:
        speed.resolve_speed = real
    assert not list(other.parent.glob(".*tmp*"))


def test_a_resumed_run_keeps_its_recorded_choice(tiny_spec, tmp_path: Path) -> None:
    from segsweep.train.loop import resumed_speed
    from segsweep.train.state import TrainState

    spec = tiny_spec()
    chosen = resolve_speed(spec, CPU, "fp32")
    payload = {"state": {"speed": {"channels_last": not chosen.channels_last, "source": "probe", "ratio": 1.5}}}
    before = speed.probes_run
    state = TrainState.build(spec, tmp_path / "run", 0.0, resumed_speed(payload))
    assert speed.probes_run == before
    assert state.speed.source == "checkpoint" and state.channels_last == (not chosen.channels_last)
    assert state.summary["channels_last"] == (not chosen.channels_last)
    assert state.summary["channels_last_source"] == "checkpoint"
    assert next(p for p in state.model.parameters() if p.dim() == 4).is_contiguous(
        memory_format=torch.channels_last if state.channels_last else torch.contiguous_format)
    # A checkpoint from before `auto` trained channels_last (then the default).
    assert resumed_speed({"state": {"best_val": 0.5}}) == SpeedChoice(True, "checkpoint")
    assert resumed_speed(None) is None


def test_a_run_records_its_choice_and_resume_uses_it(tiny_spec, tmp_path: Path, own_cache: Path) -> None:
    from segsweep.train.loop import fit

    spec = tiny_spec(**{"train.epochs": 1})
    fit(spec, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["channels_last_source"] == "probe" and isinstance(summary["channels_last_ratio"], float)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["speed"]["channels_last"] == summary["channels_last"]
    # The cache now says the opposite: a resume keeps the checkpoint's choice, no probe, no cache.
    cache = json.loads(own_cache.read_text())
    own_cache.write_text(json.dumps({k: {**v, "channels_last": not v["channels_last"]} for k, v in cache.items()}))
    more = tiny_spec(**{"train.epochs": 1})
    before = speed.probes_run
    fit(more, tmp_path / "run", resume=True)
    assert speed.probes_run == before
    again = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again["channels_last"] == summary["channels_last"]


def test_every_trial_of_a_sweep_uses_the_sweeps_choice(tmp_path: Path, synthetic_root: Path) -> None:
    from segsweep.sweeps.engines import run_sweep

    from conftest import TINY

    path = tmp_path / "speedy.yaml"
    path.write_text(yaml.safe_dump({
        "name": "speedy", "experiment": str(REPO / "experiments" / "quickstart.yaml"), "method": "grid",
        "parameters": {"model.dropout": {"values": [0.0, 0.1]}}, "seeds": [0, 1]}))
    overrides = [f"{k}={v}" for k, v in {**TINY, "train.epochs": 1}.items()] + [
        f"data.root={synthetic_root}", f"data.cache_dir={synthetic_root.parent / 'cache'}"]
    results = tmp_path / "results"
    before = speed.probes_run
    run_sweep(path, overrides, workers=1, results=results, echo=lambda line: None)
    assert speed.probes_run - before == 1  # once for the sweep, before its trials
    sweep_dir = results / "sweeps" / "speedy"
    stored = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["speed_choices"]
    (choice,) = stored.values()
    summaries = [json.loads(p.read_text()) for p in (sweep_dir / "runs").rglob("summary.json")]
    assert len(summaries) == 4
    assert {(s["channels_last"], s["channels_last_source"]) for s in summaries} == {(choice["channels_last"], "sweep")}

    # Rerun (all done): the study's stored choice, no probe, even with the probe cache gone.
    speed.cache_path().unlink()
    before = speed.probes_run
    run_sweep(path, overrides, workers=1, results=results, echo=lambda line: None)
    assert speed.probes_run == before


def test_cache_list_and_clear_show_and_remove_the_probes(tiny_spec, own_cache: Path, cli) -> None:
    resolve_speed(tiny_spec(), CPU, "fp32")
    resolve_speed(tiny_spec(**{"train.batch_size": 4}), CPU, "fp32")
    listed = cli("cache", "list")
    assert listed.code == 0, listed.err
    assert listed.out.count("speed probe ") == 2 and f"total: 2 speed probe(s) in {own_cache}" in listed.out
    kept = cli("cache", "clear", "--older-than", "1")  # measured just now: kept
    assert kept.code == 0 and "removed 0 speed probe(s)" in kept.out and len(json.loads(own_cache.read_text())) == 2
    cleared = cli("cache", "clear", "--all")
    assert cleared.code == 0 and "removed 2 speed probe(s)" in cleared.out and not own_cache.exists()
    assert probes(lambda: resolve_speed(tiny_spec(), CPU, "fp32")) == 1


def test_a_probe_that_cannot_train_falls_back_to_nchw_with_one_warning(tiny_spec, caplog, monkeypatch) -> None:
    """A probe that fails (out of memory, a shape the model refuses) never ends the run: NCHW, a
    one-line warning, nothing cached; the run then says what is wrong itself."""
    def fails(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory\nmore detail")

    monkeypatch.setattr(speed, "probe_ratio", fails)
    with caplog.at_level(logging.WARNING):
        choice = resolve_speed(tiny_spec(), CPU, "fp32")
    assert choice == SpeedChoice(False, "probe-failed")
    lines = [r.getMessage() for r in caplog.records if "speed probe failed" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "can't allocate memory" in lines[0]
    assert not speed.cache_path().exists()
