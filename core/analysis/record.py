"""`sequential.json`: what a sweep run in rounds decided and why it stopped, one typed definition
written by the rounds' driver and read by the report (strict JSON: a number that is not finite
is written as null).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .records import ReportError
from .verdicts import Analysis

VERSION = 2  # sequential.json of adaptive seeds before the pooled design (version 1) had no "version"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class ClaimRecord:
    id: str
    verdict: str  # better | worse | equivalent | open | inconclusive | not estimable
    look: int | None
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    t: float | None
    df: float | None
    pooled: bool
    primary: str  # difference | equivalence
    primary_level: float | None
    primary_boundary: float | None
    secondary_level: float | None
    secondary_boundary: float | None
    conditional_power: float | None
    runs_to_detect: int | None
    runs_for_equivalence: int | None
    transfers: bool | None


@dataclass(frozen=True)
class SequentialRecord:
    version: int
    design: str  # one line describing the design (fraction and rounds, or cells and seeds)
    margin: float
    alpha: float
    primary_share: float
    rounds_done: int
    rounds_max: int
    looks_done: int
    planned_looks: tuple[int, ...]  # rounds after which a look happens
    runs_used: int
    df: float | None
    s: float | None
    stopped_by: str
    ended: bool  # no further round will run (the rule stopped them; a rerun changes nothing)
    excluded_sides: tuple[str, ...]
    claims: tuple[ClaimRecord, ...]

    @classmethod
    def from_analysis(cls, analysis: Analysis, design_text: str, stopped_by: str, ended: bool = True) -> "SequentialRecord":
        rows = []
        for r in analysis.claims:
            e, lk = r.estimate, r.looks
            rows.append(ClaimRecord(
                r.claim.id, lk.verdict if lk else "not estimable", lk.look if lk else None,
                e.value if e else None, e.ci[0] if e else None, e.ci[1] if e else None, e.t if e else None,
                e.df if e else None, r.pooled, r.claim.primary,
                lk.primary.level if lk else None, lk.primary.boundary if lk else None,
                lk.secondary.level if lk else None, lk.secondary.boundary if lk else None,
                lk.conditional_power if lk else None, r.runs_to_detect, r.runs_for_equivalence, r.transfers))
        s = analysis.settings
        return cls(VERSION, design_text, s.margin, s.alpha, s.primary_share, analysis.rounds_done,
                   analysis.design.rounds_max, analysis.looks_done, analysis.design.looks(), analysis.runs_used,
                   analysis.df, analysis.s, stopped_by, ended, tuple(sorted(analysis.excluded_sides)), tuple(rows))

    def to_json(self) -> str:
        tree = asdict(self)
        tree["claims"] = [{k: _finite(v) for k, v in c.items()} for c in tree["claims"]]
        tree = {k: _finite(v) if not isinstance(v, (list, tuple)) else list(v) for k, v in tree.items()}
        tree["claims"] = [dict(c) for c in tree["claims"]]
        return json.dumps(tree, indent=2, allow_nan=False) + "\n"

    @classmethod
    def read(cls, path: Path) -> "SequentialRecord":
        """The record at `path`; a malformed or older one is a `ReportError` naming the file."""
        try:
            tree = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(f"{path}: unreadable sequential record: {(str(exc).splitlines() or [''])[0]}") from None
        if not isinstance(tree, Mapping) or tree.get("version") != VERSION:
            raise ReportError(f"{path}: a sequential record of an older segsweep (version "
                              f"{tree.get('version', 1) if isinstance(tree, Mapping) else '?'}, this one reads "
                              f"{VERSION}); rerun the sweep command with this version to rebuild it")
        try:
            claims = tuple(ClaimRecord(**c) for c in tree["claims"])
            values = {f.name: tree[f.name] for f in fields(cls) if f.name != "claims"}
            values["planned_looks"] = tuple(values["planned_looks"])
            values["excluded_sides"] = tuple(values["excluded_sides"])
            return cls(**values, claims=claims)
        except (KeyError, TypeError) as exc:
            raise ReportError(f"{path}: malformed sequential record ({type(exc).__name__}: {exc})") from None

    def claim(self, claim_id: str) -> ClaimRecord | None:
        return next((c for c in self.claims if c.id == claim_id), None)
