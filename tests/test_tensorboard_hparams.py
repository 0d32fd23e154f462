"""TensorBoard: run folders named `<arm>-s<seed>`, test metrics as scalars, and HParams in each run's
own event files, read back with TensorBoard's own event reader and hparams plugin data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from segsweep.sweeps import run_sweep
from test_sweeps import write_sweep


def read_run(log_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(EventAccumulator, {tag: Experiment | SessionStartInfo | SessionEndInfo}) of one run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    parse = {metadata.EXPERIMENT_TAG: metadata.parse_experiment_plugin_data,
             metadata.SESSION_START_INFO_TAG: metadata.parse_session_start_info_plugin_data,
             metadata.SESSION_END_INFO_TAG: metadata.parse_session_end_info_plugin_data}
    return events, {tag: parse[tag](raw) for tag, raw in content.items()}


def plain(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    return {"number_value": value.number_value, "string_value": value.string_value,
            "bool_value": value.bool_value}[kind]


def test_a_sweeps_runs_carry_arm_seed_hparams_domains_and_test_metrics(tmp_path: Path, tiny_overrides: dict) -> None:
    from tensorboard.plugins.hparams import api_pb2, metadata

    sweep_file = write_sweep(tmp_path / "tb_grid.yaml", parameters={"model.batchnorm": {"values": [True, False]}},
                             seeds=[3])
    outcome = run_sweep(sweep_file, {**tiny_overrides, "train.epochs": 2, "tracking.tensorboard": True},
                        results=tmp_path / "results")
    assert outcome.exit_code == 0

    log_dirs = sorted(outcome.sweep_dir.glob("runs/*/*/tensorboard/*"))
    assert sorted(d.name for d in log_dirs) == ["model.batchnorm=false-s3", "model.batchnorm=true-s3"]
    for log_dir in log_dirs:
        summary = json.loads((log_dir.parents[1] / "summary.json").read_text())
        events, plugin = read_run(log_dir)
        assert set(plugin) == {metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG,
                               metadata.SESSION_END_INFO_TAG}

        hparams = {k: plain(v) for k, v in plugin[metadata.SESSION_START_INFO_TAG].hparams.items()}
        assert hparams["seed"] == 3.0 and hparams["arm"] == log_dir.name.removesuffix("-s3")
        assert hparams["model.batchnorm"] == ("true" if "=true" in log_dir.name else "false")
        assert hparams["optim.lr"] == pytest.approx(3e-3) and hparams["model.base_channels"] == 8.0
        assert hparams["config_hash"] == summary["config_hash"] and hparams["arm_hash"] == summary["arm_hash"]
        assert not any(k.startswith("tracking.") for k in hparams)

        exp = plugin[metadata.EXPERIMENT_TAG]
        assert [m.name.tag for m in exp.metric_infos] == ["val/dice", "test/dice", "test/dice_global"]
        domains = {h.name: [plain(v) for v in h.domain_discrete.values] for h in exp.hparam_infos
                   if h.HasField("domain_discrete")}
        assert domains == {"model.batchnorm": ["true", "false"], "seed": [3.0],
                           "arm": ["model.batchnorm=true", "model.batchnorm=false"]}

        assert plugin[metadata.SESSION_END_INFO_TAG].status == api_pb2.STATUS_SUCCESS
        assert [e.step for e in events.Scalars("val/dice")] == [1, 2]
        for key in ("test/dice", "test/dice_global"):
            (point,) = events.Scalars(key)
            assert point.step == 2 and point.value == pytest.approx(summary[key], rel=1e-6)


@pytest.mark.parametrize("status, expected", [("failed", "STATUS_FAILURE"), ("interrupted", "STATUS_UNKNOWN")])
def test_a_plain_runs_hparams_have_its_name_as_arm_and_no_domains(tmp_path: Path, tiny_spec, status: str,
                                                                  expected: str) -> None:
    from tensorboard.plugins.hparams import api_pb2, metadata

    from segsweep.tracking import TensorBoardTracker

    spec = tiny_spec(**{"tracking.tensorboard": True, "seed": 7})
    tracker = TensorBoardTracker()
    tracker.start(spec, tmp_path, {"config_hash": "abc", "arm_hash": "def", "git_sha": "123"})
    tracker.log_epoch(1, {"epoch": 1, "val/dice": 0.5})
    tracker.finish({"status": status, "epochs_run": 1, "test/dice": 0.25}, None)
    assert tracker.error is None
    assert tracker.log_dir == tmp_path / "tensorboard" / "quickstart-s7"
    events, plugin = read_run(tracker.log_dir)
    start = plugin[metadata.SESSION_START_INFO_TAG]
    assert plain(start.hparams["arm"]) == "quickstart" and plain(start.hparams["config_hash"]) == "abc"
    assert not any(h.HasField("domain_discrete") for h in plugin[metadata.EXPERIMENT_TAG].hparam_infos)
    assert plugin[metadata.SESSION_END_INFO_TAG].status == api_pb2.Status.Value(expected)
    assert [(e.step, e.value) for e in events.Scalars("test/dice")] == [(1, 0.25)]
