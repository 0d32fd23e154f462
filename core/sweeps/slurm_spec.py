"""The `slurm:` block of a sweep file and `--slurm key=value`: what `--launcher slurm` asks of the
scheduler for each worker (array task)."""
from __future__ import annotations

import re
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SweepError, unknown_key, validation_problem

_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?$")
_NAME = re.compile(r"^[A-Za-z0-9_.,:+-]+$")  # a partition, account or QOS name (or a comma list)
_OPTION = re.compile(r"^--([a-z][a-z0-9_-]*)(?:=([^\s'\"]+))?$")  # a value without spaces or quotes
# sbatch options `extra` may not set: those with their own key here, and those segsweep sets itself.
OWN_KEYS = {"time": "time", "partition": "partition", "cpus_per_task": "cpus_per_task", "mem": "mem",
            "gpus_per_task": "gpus_per_task", "account": "account", "qos": "qos", "signal": "signal_delay_s"}
LAUNCHER_KEYS = ("array", "output", "error", "open_mode", "requeue", "no_requeue", "job_name", "ntasks_per_node",
                 "wrap")


class SlurmSpec(BaseModel):
    """One array task's resources, as sbatch options:

    slurm:
      partition: gpu          # None: the cluster's default partition
      time: "04:00:00"        # minutes, or [D-]HH:MM[:SS] in quotes; the array task's time limit
      cpus_per_task: 8
      gpus_per_task: 1        # one trial per GPU of a task
      mem: 32G
      account: my_lab
      qos: normal
      array_parallelism: 4    # at most this many workers at once
      signal_delay_s: 120     # SIGUSR2 this long before the time limit: save, requeue
      setup: ["module load cuda/12.1"]         # shell lines run before each worker
      extra: ["--constraint=a100"]             # further sbatch options, --key=value
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = Field(None, min_length=1)
    time: int | str = 60  # minutes, or [D-]HH:MM[:SS]
    cpus_per_task: int = Field(2, ge=1)
    gpus_per_task: int = Field(0, ge=0)
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$")
    account: str | None = Field(None, min_length=1)
    qos: str | None = Field(None, min_length=1)
    array_parallelism: int | None = Field(None, ge=1)  # None: every worker may run at once
    signal_delay_s: int = Field(120, ge=10)  # the warning signal's lead on the time limit
    setup: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    @field_validator("time")
    @classmethod
    def _time(cls, value: int | str) -> int | str:
        minutes_of(value)
        return value

    @field_validator("partition", "account", "qos")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"expected a SLURM name of letters, digits and _ . , : + - (e.g. gpu or my_lab), "
                             f"got {value!r}")
        return value

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for line in value:
            extra_option(line)
        return value

    @model_validator(mode="after")
    def _warning_before_limit(self) -> "SlurmSpec":
        if self.signal_delay_s >= self.minutes * 60:
            raise ValueError(f"signal_delay_s ({self.signal_delay_s} s) must be shorter than time ({self.time!r} = "
                             f"{self.minutes * 60} s): the warning signal comes that long before the time limit")
        return self

    @property
    def minutes(self) -> int:
        return minutes_of(self.time)

    def extra_options(self) -> dict[str, str | bool]:
        return dict(extra_option(line) for line in self.extra)


def minutes_of(value: int | str) -> int:
    """Minutes of a SLURM time: an integer, or [D-]HH:MM[:SS] (seconds round up)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"expected at least 1 minute, got {value}")
        return value
    if str(value).strip().isdigit():
        return minutes_of(int(value))
    match = _TIME.match(str(value).strip())
    if match is None:
        raise ValueError(f"expected minutes or [D-]HH:MM[:SS] (e.g. 90 or 01:30:00), got {value!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise ValueError(f"expected at least 1 minute, got {value!r}")
    return total


def extra_option(line: str) -> tuple[str, str | bool]:
    """('constraint', 'a100') from '--constraint=a100' (or '#SBATCH --constraint=a100')."""
    text = line.strip().removeprefix("#SBATCH").strip()
    match = _OPTION.match(text)
    if match is None:
        raise ValueError(f"expected an sbatch option like --constraint=a100 (a value without spaces or quotes), "
                         f"got {line!r}")
    key = match.group(1).replace("-", "_")
    if key in OWN_KEYS:
        raise ValueError(f"--{match.group(1)} in extra: set it with its own key, slurm.{OWN_KEYS[key]}")
    if key in LAUNCHER_KEYS:
        raise ValueError(f"--{match.group(1)} in extra: segsweep sets it (the job array, its logs, the warning "
                         "signal and the requeue depend on it)")
    return key, match.group(2) if match.group(2) is not None else True


def slurm_options(block: SlurmSpec | None, pairs: Sequence[str], where: str) -> SlurmSpec:
    """The sweep file's `slurm:` block with `--slurm key=value` pairs applied over it."""
    tree: dict[str, Any] = block.model_dump() if block is not None else {}
    for pair in pairs:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not key:
            raise SweepError(f"--slurm {pair!r}: expected key=value, e.g. --slurm partition=gpu")
        if key not in SlurmSpec.model_fields:
            raise SweepError(f"--slurm {pair}: {unknown_key(key, list(SlurmSpec.model_fields))}")
        if key in ("setup", "extra"):
            tree[key] = [*tree.get(key, ()), value]
        else:  # kept as text (YAML would read 04:00:00 as a base-60 number); pydantic converts numbers
            tree[key] = value
    try:
        return SlurmSpec.model_validate(tree)
    except ValidationError as exc:
        key, message = validation_problem(exc.errors()[0], where="slurm",
                                          valid_keys=lambda loc: list(SlurmSpec.model_fields) if not loc else None)
        raise SweepError(f"{where}: {key}: {message}") from None

