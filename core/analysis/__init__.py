"""The analysis of sweep records, below both the sweeps that run in rounds and the reports:
run records and the outcome rule (`records`), the design of a sweep (`design`, `fraction`),
one least-squares model per look with a pooled error (`model`, `estimate`), group-sequential
verdicts with Holm over the claims (`looks`, `verdicts`), their operating characteristics by
simulation (`operating`), and the record of a sweep's rounds (`record`). It knows no Optuna,
markdown or matplotlib; it imports only the configuration layer below it.
"""
from __future__ import annotations

from .records import OUTCOME_RULE, ReportError, RunRecord, load_runs, outcome
from .record import SequentialRecord
from .verdicts import Analysis, ClaimResult, Settings, analyse

__all__ = ["Analysis", "ClaimResult", "OUTCOME_RULE", "ReportError", "RunRecord", "SequentialRecord", "Settings",
           "analyse", "load_runs", "outcome"]
