"""Checkpoints: atomic saves, safe loads (`weights_only=True`), and a top-k keeper by val/dice.

A checkpoint is a dict of tensors and plain types only, so it loads without unpickling code:
`{"model", "optimizer", "scaler", "schedule", "epoch", "metrics", "spec", "rng_torch",
"normalization", "state", "partial"}` (see `segsweep.train.state.TrainState.checkpoint`).
"""
from __future__ import annotations

import os
import pickle
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CheckpointError, SegsweepError
from .models.base import fit_problems
from .record import TEMP_SUFFIX, MetricsFile, atomic_write, parse_metrics, staged_write
from .schema import WALL_CLOCK_COLUMNS
from .spec import flatten, read_yaml, spec_from_dict, spec_to_dict


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write `payload` to `path` atomically; on a full disk the previous file stays intact and
    a `CheckpointError` says so."""
    stage_checkpoint(payload, path)()


def stage_checkpoint(payload: dict[str, Any], path: Path) -> Callable[[], None]:
    """`save_checkpoint` in two halves (`record.staged_write`): `payload` is serialised to a
    temporary file now, so the caller may change its tensors next; the returned call fsyncs and
    renames it into place, and may run on another thread."""

    def write(tmp: Path) -> None:
        # Through a Python file: torch.save(path) reports a full disk as a bare RuntimeError,
        # a file object lets the OSError (ENOSPC) through.
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)

    return staged_write(path, write, CheckpointError)


class BackgroundSaver:
    """Runs one job at a time on a background thread (a staged checkpoint's fsync and rename, and
    what follows them), so training goes on while the disk catches up. `submit` first waits for
    the job in flight, so jobs run in order; `wait` joins it and raises its error (a full disk) here."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="segsweep-checkpoint", daemon=True)
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; anything unusable is a `CheckpointError`.

    Only tensors and plain values are unpickled: a file that would construct other objects
    (and so could run code) is refused before anything in it runs.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. pickle-protocol notices: the error says it all
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _reason(exc)
        if "global" in reason.lower():  # a class or function to call: how pickles run code
            raise CheckpointError(
                f"{path}: refused: it holds objects other than tensors and plain values, which could run code "
                f"when loaded (weights_only=True: {reason})"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (not a weights-only pickle: {reason})") from None
    except Exception as exc:  # truncated zip, random bytes, empty file...
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {_reason(exc)})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path}: not a segsweep checkpoint (no 'model' state)")
    return payload


def _reason(exc: Exception) -> str:
    """The informative line of a torch.load error (it wraps it in advice about weights_only)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(boilerplate)]
    line = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return (line if " " in line else f"{type(exc).__name__} {line}".strip())[:160]


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load weights strictly, turning a shape/key mismatch into one clear line."""
    parts = fit_problems(model.state_dict(), state)
    if parts:
        raise CheckpointError(
            f"{source}: weights do not fit this model ({'; '.join(parts)}); "
            "was it saved for another architecture or width?"
        )
    model.load_state_dict(state)


class TopK:
    """Keeps the k best checkpoints by a score (higher is better) as `best.pt`, `best-2.pt`, ...

    `best.pt` is always the best so far. Entries are (score, epoch); ties keep the earlier epoch.
    """

    def __init__(self, directory: Path, k: int, entries: list[tuple[float, int]] | None = None):
        self.directory = directory
        self.k = k
        self.entries: list[tuple[float, int]] = list(entries or [])

    def _path(self, rank: int) -> Path:
        return self.directory / ("best.pt" if rank == 0 else f"best-{rank + 1}.pt")

    def would_keep(self, score: float) -> bool:
        return len(self.entries) < self.k or score > min(s for s, _ in self.entries)

    def after_offer(self, score: float, epoch: int) -> list[tuple[float, int]]:
        """The entries `offer(score, epoch, ...)` would leave (to store them in its payload)."""
        if not self.would_keep(score):
            return list(self.entries)
        return sorted([*self.entries, (score, epoch)], key=lambda e: (-e[0], e[1]))[: self.k]

    def offer(self, score: float, epoch: int, payload: dict[str, Any] | None, same_as: Path | None = None) -> bool:
        """Save `payload` if it ranks in the top k; returns whether it became `best.pt`.

        `same_as`: a file already holding `payload` (last.pt, just saved): the entry becomes a
        hard link to it, which later atomic replacements of that file leave untouched (a copy of
        the file where links are not possible); `payload` is then not read and may be None.
        """
        if not self.would_keep(score):
            return False
        ranked = self.after_offer(score, epoch)
        rank = ranked.index((score, epoch))
        # Shift worse entries down one file, worst first, so no file is overwritten before it moved.
        for i in range(min(len(self.entries), self.k - 1) - 1, rank - 1, -1):
            src = self._path(i)
            if src.exists():
                os.replace(src, self._path(i + 1))
        if same_as is None:
            assert payload is not None
            save_checkpoint(payload, self._path(rank))
        elif not _link(same_as, self._path(rank)):
            atomic_write(self._path(rank), lambda tmp: shutil.copyfile(same_as, tmp), CheckpointError)
        self.entries = ranked
        return rank == 0

    def restore(self, entries: list[tuple[float, int]], last: Path | None = None) -> None:
        """Adopt `entries` (saved in `last`, last.pt) and make the files on disk agree with them.

        A SIGKILL between saving last.pt and linking its epoch into the top k leaves that entry
        without a file: it is linked again from last.pt, which holds exactly that epoch's state.
        Files may also be part-way through a shift down one slot. Each file is matched to its
        entry by the epoch it holds; files of other epochs are deleted, the rest moved back to
        their rank. Any other entry whose file is gone was being pushed out of the top k, so it
        is dropped.
        """
        by_epoch: dict[int, Path] = {}
        for path in sorted([*self.directory.glob("best*.pt"), *self.directory.glob(".restore-*.pt")]):
            epoch = checkpoint_epoch(path)
            if epoch is None or epoch in by_epoch or epoch not in {e for _, e in entries}:
                path.unlink(missing_ok=True)
            else:
                by_epoch[epoch] = path
        last_epoch = checkpoint_epoch(last, complete=True) if last is not None else None
        if last_epoch is not None and last_epoch not in by_epoch and last_epoch in {e for _, e in entries}:
            relinked = self.directory / f".restore-{last_epoch}.pt"
            if _link(last, relinked):
                by_epoch[last_epoch] = relinked
        kept = [(float(s), int(e)) for s, e in entries if int(e) in by_epoch]
        # Move each file to its rank without overwriting one not yet moved: park them first.
        parked = {}
        for epoch, path in by_epoch.items():
            parked[epoch] = path.with_name(f".restore-{epoch}.pt")
            os.replace(path, parked[epoch])
        for rank, (_, epoch) in enumerate(kept):
            os.replace(parked[epoch], self._path(rank))
        self.entries = kept


def _link(source: Path, target: Path) -> bool:
    """Atomically make `target` a hard link to `source`; False where links are not possible."""
    tmp = target.with_name(f".{target.name}.link-{os.getpid()}{TEMP_SUFFIX}")  # swept up after a kill
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:  # no hard links here (some network or FUSE file systems): the caller saves
        tmp.unlink(missing_ok=True)
        return False
    return True


def checkpoint_epoch(path: Path, complete: bool = False) -> int | None:
    """The epoch stored in a checkpoint (memory-mapped: the tensors are not read), or None;
    with `complete`, None for a mid-epoch save too."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return None if complete and state.get("partial") else int(state["epoch"])
    except Exception:  # unreadable: treated as absent by the caller
        return None


# --------------------------------------------------------------------------- resuming a run folder


def check_resume_identity(run_dir: Path, last: Path, rewrite_record: bool = False) -> str | None:
    """Refuse (`CheckpointError`, nothing touched) a `last.pt` that is not this folder's own, and a
    metrics.csv that does not agree with it.

    Resuming rewrites config.yaml, metrics.csv and summary.json from the checkpoint, so a
    last.pt copied from another run would overwrite this run's record with that one's. The
    checkpoint's spec must be the folder's config.yaml, and each epoch in its history the
    folder's metrics.csv row of that epoch (metrics.csv is written before last.pt, so it can
    only be one epoch ahead); a row trained at another time (its wall-clock columns differ) is
    another run's. A metrics.csv that is damaged or was edited is named as such, with the line:
    `rewrite_record` then lets the run resume (fit rewrites metrics.csv from last.pt's history) and
    this returns what was wrong; None when nothing was. Old folders without those files are taken
    as they are.
    """
    payload = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    stored = flatten(spec_to_dict(spec_from_dict(payload.get("spec"), str(last))))
    config = run_dir / "config.yaml"
    if config.is_file():
        own = flatten(spec_to_dict(spec_from_dict(read_yaml(config), str(config))))
        differ = [key for key in {**own, **stored} if own.get(key) != stored.get(key)]
        if differ:
            key = differ[0]
            raise CheckpointError(f"{run_dir}: {REFUSED} (its spec has {key}={stored.get(key)!r}, config.yaml has "
                                  f"{own.get(key)!r}); nothing was changed")
    path, epoch = run_dir / "metrics.csv", int(payload.get("epoch", 0))
    history = (payload.get("state") or {}).get("history")
    if not path.is_file():
        return None
    try:
        record = parse_metrics(path)
    except SegsweepError as exc:
        if history is None:  # an older last.pt: the trainer reads its epochs from metrics.csv
            raise CheckpointError(f"{exc}; nothing was changed: this last.pt (an older segsweep's) keeps no "
                                  "copy of the epochs to rewrite metrics.csv from, so repair metrics.csv by hand") from None
        problem = str(exc).removeprefix(f"{path}: ")
    else:
        problem = None if history is None else _disagreement(run_dir, record, history, epoch)
    if problem is not None and not rewrite_record:
        raise CheckpointError(f"{path}: {problem}; nothing was changed: to resume from checkpoints/last.pt (saved "
                              f"after epoch {epoch}) and rewrite metrics.csv from the epochs it records, add "
                              "--rewrite-record")
    return problem


REFUSED = "refused to resume: checkpoints/last.pt belongs to another run"


def _disagreement(run_dir: Path, record: MetricsFile, history: list[dict[str, Any]], epoch: int) -> str | None:
    """What is wrong with a readable metrics.csv beside last.pt (saved after `epoch`, with these
    rows), or None; a row of another run (trained at another time) is a `CheckpointError`."""
    rows = {int(values["epoch"]): (line, values) for line, values in record.rows}
    cut = record.rows[-1][0] if record.rows and record.open_end else None  # a last line without its end
    edited = None
    for saved in history:
        line, values = rows.get(int(saved["epoch"]), (None, {}))
        differ = [k for k in values if k in saved and not _same(values[k], saved[k])]
        if not differ:
            continue
        key = next((k for k in differ if k in WALL_CLOCK_COLUMNS), differ[0])
        seen = f"{key} {values[key]!r} in metrics.csv, {saved[key]!r} in last.pt"
        if line == cut and differ == [record.columns[-1]]:
            edited = edited or f"line {line} is cut short (the file ends inside it: {seen})"
        elif key in WALL_CLOCK_COLUMNS:
            raise CheckpointError(f"{run_dir}: {REFUSED} (its epoch {saved['epoch']} is not the one in metrics.csv, "
                                  f"which was trained at another time: {seen}); nothing was changed")
        else:
            edited = edited or f"line {line} (epoch {saved['epoch']}) was changed after it was written ({seen})"
    held = len(rows)
    span = "no epoch (only its header)" if not held else "epoch 1" if held == 1 else f"epochs 1-{held}"
    if held < epoch:
        return f"holds {span} but last.pt was saved after epoch {epoch}"
    if held > epoch + 1:
        return (f"holds {span} but last.pt was saved after epoch {epoch} (only epoch {epoch + 1} may be ahead of "
                "it, written just before a run was killed)")
    return edited


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN (metrics.csv writes floats with repr: they read back exactly)."""
    try:
        return float(a) == float(b) or (float(a) != float(a) and float(b) != float(b))
    except (TypeError, ValueError):
        return False
