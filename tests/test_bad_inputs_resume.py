"""The bad-input catalogue for `segsweep run --resume` on a run folder whose metrics.csv was cut,
emptied or edited by hand: each case exits 2 with one line naming metrics.csv and what is wrong
with it (never "another run", which would be false), offers --rewrite-record, and changes no
file. With --rewrite-record the run resumes and metrics.csv is rewritten from last.pt's history,
the old file kept beside it; a last.pt that really is another run's is still refused."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from test_bad_inputs import _digest, _resume_folder


@pytest.fixture(scope="module")
def two_epochs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch tiny run (never modified: every case works on a copy)."""
    from conftest import TINY

    from segsweep.spec import load_spec
    from segsweep.train.loop import fit

    assert TINY["train.epochs"] == 2
    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml",
                     {**TINY, "data.root": str(synthetic_root), "data.cache_dir": str(synthetic_root.parent / "cache")})
    return fit(spec, tmp_path_factory.mktemp("two-epochs") / "run").run_dir


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _ahead(text: str, *epochs: int) -> str:
    """`text` with copies of its last row for later epochs (written as a killed run would)."""
    last = _lines(text)[-1]
    return text + "".join(f"{e}{last[last.index(','):]}" for e in epochs)


def _set(text: str, line: int, column: int, value: str) -> str:
    rows = _lines(text)
    cells = rows[line - 1].rstrip("\n").split(",")
    cells[column] = value
    rows[line - 1] = ",".join(cells) + "\n"
    return "".join(rows)


# (case id, metrics.csv's new bytes from its old text, substrings of the one line)
RECORD_CASES = [
    ("cut-mid-line", lambda t: t[: t.rindex("\n", 0, len(t) - 1) + 12].encode(),
     ["line 3 is cut short", "of the header's 10 values"]),
    ("cut-inside-the-last-value", lambda t: t[:-4].encode(), ["line 3 is cut short", "the file ends inside it"]),
    ("garbage", lambda t: b"hello, world\nthis is not a record\n", ["line 1 is not the header", "epoch first"]),
    ("emptied", lambda t: b"", ["is empty", "expected the header"]),
    ("header-only", lambda t: _lines(t)[0].encode(), ["holds no epoch (only its header)", "saved after epoch 2"]),
    ("last-row-deleted", lambda t: "".join(_lines(t)[:-1]).encode(), ["holds epoch 1 but", "saved after epoch 2"]),
    ("first-row-deleted", lambda t: "".join(_lines(t)[:1] + _lines(t)[2:]).encode(),
     ["line 2 holds epoch 2 where epoch 1 belongs"]),
    ("row-repeated", lambda t: (t + _lines(t)[-1]).encode(), ["line 4 holds epoch 2 where epoch 3 belongs"]),
    ("rows-added", lambda t: _ahead(t, 3, 4).encode(),
     ["holds epochs 1-4 but last.pt was saved after epoch 2", "only epoch 3 may be ahead"]),
    ("value-edited", lambda t: _set(t, 2, 3, "0.999").encode(),
     ["line 2 (epoch 1) was changed after it was written", "val/dice 0.999 in metrics.csv"]),
    ("value-not-a-number", lambda t: _set(t, 3, 1, "n/a").encode(), ["line 3, column train/loss", "'n/a' is not a number"]),
    ("epoch-not-a-number", lambda t: _set(t, 2, 0, "one").encode(), ["line 2, column epoch", "not a whole number"]),
    ("extra-value", lambda t: _set(t, 2, 9, "1,2").encode(), ["line 2 has 11 values where the header names 10"]),
    ("not-utf8", lambda t: t.encode() + b"\xff\xfe", ["line 4 is not UTF-8 text", "0xff"]),
    ("nul-byte", lambda t: t.replace("\n", "\n\0", 2).encode(), ["line 2 holds a NUL byte"]),
]


@pytest.mark.parametrize("case, edit, expected", RECORD_CASES, ids=[c[0] for c in RECORD_CASES])
def test_a_damaged_record_is_named_and_nothing_changes(cli, two_epochs: Path, tmp_path: Path,
                                                       case, edit, expected) -> None:
    folder = _resume_folder(two_epochs, tmp_path, None)
    (folder / "metrics.csv").write_bytes(edit((two_epochs / "metrics.csv").read_text()))
    before = _digest(folder)
    result = cli("run.py", "--resume", folder)
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in [str(folder / "metrics.csv"), *expected, "nothing was changed", "--rewrite-record"]:
        assert part in lines[0], (part, lines[0])
    assert "another run" not in lines[0]  # it is this run's own last.pt: saying otherwise would be false
    assert "run folder:" not in result.out
    assert _digest(folder) == before  # config.yaml, metrics.csv, checkpoints: the same bytes


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("case", ["cut-mid-line", "garbage", "emptied", "last-row-deleted", "rows-added", "value-edited"])
def test_rewrite_record_resumes_and_rewrites_metrics_from_last_pt(cli, two_epochs: Path, tmp_path: Path, case) -> None:
    edit = dict((c[0], c[1]) for c in RECORD_CASES)[case]
    folder = _resume_folder(two_epochs, tmp_path, None)
    damaged = edit((two_epochs / "metrics.csv").read_text())
    (folder / "metrics.csv").write_bytes(damaged)
    result = cli("run.py", "--resume", folder, "--rewrite-record")
    assert result.code == 0, result.err
    assert "rewritten from checkpoints/last.pt" in result.out and "metrics.csv.before-rewrite" in result.out
    assert (folder / "metrics.csv.before-rewrite").read_bytes() == damaged  # nothing the user had is lost
    assert _rows(folder / "metrics.csv") == _rows(two_epochs / "metrics.csv")  # last.pt's history, every column
    assert (folder / "summary.json").is_file()


def test_one_row_ahead_of_last_pt_is_what_a_kill_leaves_and_resumes(cli, two_epochs: Path, tmp_path: Path) -> None:
    """metrics.csv is written just before last.pt: one row ahead is a run killed in between, not
    a damaged record. The resumed run redoes that epoch (here: none is left, so it only tests)."""
    folder = _resume_folder(two_epochs, tmp_path, None)
    (folder / "metrics.csv").write_text(_ahead((two_epochs / "metrics.csv").read_text(), 3))
    result = cli("run.py", "--resume", folder)
    assert result.code == 0, result.err
    assert _rows(folder / "metrics.csv") == _rows(two_epochs / "metrics.csv")
    assert not (folder / "metrics.csv.before-rewrite").exists()


def test_rewrite_record_still_refuses_another_runs_checkpoint(cli, two_epochs: Path, tmp_path: Path) -> None:
    """A last.pt whose epochs were trained at another time (their wall-clock columns differ, as a
    second run of the same spec would time them) is another run's, with or without the flag."""
    import torch

    payload = torch.load(two_epochs / "checkpoints" / "last.pt", weights_only=True)
    for row in payload["state"]["history"]:
        row["epoch_s"] += 1.0
    torch.save(payload, tmp_path / "foreign.pt")
    folder = _resume_folder(two_epochs, tmp_path, tmp_path / "foreign.pt")
    before = _digest(folder)
    for flags in ([], ["--rewrite-record"]):
        result = cli("run.py", "--resume", folder, *flags)
        assert result.code == 2, (result.code, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        for part in ("killed-run: refused to resume", "belongs to another run", "trained at another time",
                     "epoch_s", "nothing was changed"):
            assert part in lines[0], (part, lines[0])
        assert _digest(folder) == before


def test_rewrite_record_without_resume_is_a_usage_error(cli, tmp_path: Path) -> None:
    from test_bad_inputs import QUICK

    result = cli("run.py", QUICK, "--rewrite-record", "--results", tmp_path / "results")
    assert result.code == 2 and "--rewrite-record goes with --resume" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "results").exists()
