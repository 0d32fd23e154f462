"""TensorBoard HParams for one run, written into the run's own event files (as Lightning's
TensorBoardLogger does), never through `SummaryWriter.add_hparams`, which opens a separate
sub-run per call (pytorch/pytorch#32651).

Each run writes the experiment (every hparam, the sweep's factor levels as discrete domains, the
metrics) and its session start at `start`, its session end with the run's status at `finish`.
TensorBoard's HParams tab reads the first run's experiment; every run of a sweep writes the same.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from ..spec import ExperimentSpec, flatten, spec_to_dict

HPARAM_METRICS = ("val/dice", "test/dice", "test/dice_global")
IDENTITY = ("config_hash", "arm_hash")
# TensorBoard's session statuses: success, failure, running, unknown (an interrupted run may resume).
_STATUS = {"completed": "STATUS_SUCCESS", "pruned": "STATUS_SUCCESS", "failed": "STATUS_FAILURE",
           "diverged": "STATUS_FAILURE"}


def arm_of(spec: ExperimentSpec) -> str:
    """The arm a run trains: a sweep trial's cell label (its W&B job_type), else the spec's name."""
    return spec.tracking.wandb.job_type or spec.name


def run_label(spec: ExperimentSpec) -> str:
    """`<arm>-s<seed>`: the name TensorBoard lists the run under (unsafe path characters as `_`)."""
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", f"{arm_of(spec)}-s{spec.seed}")


def _scalar(value: Any) -> float | str:
    """A value TensorBoard can hold: numbers as floats, text as is, anything else as JSON."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def hparam_values(spec: ExperimentSpec, meta: Mapping[str, Any]) -> dict[str, float | str]:
    """Every dotted spec value (but the name and tracking settings, which change no result),
    the arm and the config hashes."""
    flat = flatten(spec_to_dict(spec))
    values = {k: _scalar(v) for k, v in flat.items() if k != "name" and not k.startswith("tracking.")}
    values["arm"] = arm_of(spec)
    values.update({k: str(meta[k]) for k in IDENTITY if k in meta})
    return values


def _domains(values: dict[str, float | str], levels: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Discrete domains of the factors this run has; a factor whose levels mix numbers and text
    becomes text (its value in `values` too), as one domain holds one type."""
    domains: dict[str, list[Any]] = {}
    for key, raw in levels.items():
        if key not in values:
            continue
        domain = list(dict.fromkeys(_scalar(v) for v in raw))
        if values[key] not in domain:
            domain.append(values[key])
        if len({type(v) for v in domain}) > 1:
            domain = [v if isinstance(v, str) else json.dumps(v) for v in domain]
            values[key] = values[key] if isinstance(values[key], str) else json.dumps(values[key])
        domains[key] = domain
    return domains


def start_summaries(spec: ExperimentSpec, meta: Mapping[str, Any],
                    levels: Mapping[str, Sequence[Any]] | None = None) -> tuple[Any, Any]:
    """(experiment, session start) summaries of one run; `levels`: the sweep's factors."""
    from torch.utils.tensorboard.summary import hparams

    values = hparam_values(spec, meta)
    domains = _domains(values, levels or {})
    experiment, session_start, _ = hparams(values, {k: 0.0 for k in HPARAM_METRICS}, domains)
    return experiment, session_start


def end_summary(status: str | None) -> Any:
    """The session end: success (completed, pruned), failure (failed, diverged), else unknown."""
    import time

    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(_STATUS.get(str(status), "STATUS_UNKNOWN")),
                                         end_time_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                        metadata=metadata.create_summary_metadata(data))])
