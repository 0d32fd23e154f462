"""The local run record: run folders, atomic file writes, metrics.csv, summary.json and plots.

Local files are the source of truth; W&B and TensorBoard only mirror them. Every write goes
through `atomic_write` (temporary file, flush, fsync, rename), so a SIGKILL at any moment leaves
each file either as it was or complete. A kill can leave a temporary `.<name>.<random>.tmp`
beside it: hidden, never read as a record, and removed when the run is resumed.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .errors import SegsweepError
from .schema import METRIC_COLUMNS, STATUSES  # noqa: F401  (re-exported: the record's schema)

TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[Path], None], error: type[SegsweepError] = SegsweepError) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename over `path`.

    On any error `path` keeps its previous contents and the temporary file is removed; a full
    disk (or quota) becomes `error` with one line saying so.
    """
    staged_write(path, write, error)()


def staged_write(path: Path, write: Callable[[Path], None],
                 error: type[SegsweepError] = SegsweepError) -> Callable[[], None]:
    """`atomic_write` in two halves: `write(tmp)` now, and the returned call fsyncs the temporary
    file and renames it over `path` (once, from any thread: it only waits on the disk). Until it
    is called `path` keeps its previous contents; a kill in between leaves a temporary that
    `remove_temporaries` sweeps. Errors as for `atomic_write`, from the half that meets them."""
    had_previous = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; records are shared like any file
        os.close(fd)
        tmp = Path(name)
        write(tmp)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            _raise_disk_full(exc, path, had_previous, error)
        raise
    written = tmp

    def rename() -> None:
        try:
            with open(written, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(written, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            _raise_disk_full(exc, path, had_previous, error)
        finally:
            written.unlink(missing_ok=True)

    return rename


def _raise_disk_full(exc: OSError, path: Path, had_previous: bool, error: type[SegsweepError]) -> None:
    """A full disk or quota as `error`, one line saying what is kept; any other OSError as it is."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise exc
    what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    kept = f"the previous {path.name} is intact" if had_previous else f"no {path.name} was written"
    raise error(f"{path}: {what} while saving; {kept}; free some space and resume") from None


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across a power cut (not needed for SIGKILL; best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """Whether `path` is a leftover of an interrupted `atomic_write` (never a record)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` and its subfolders."""
    removed = [p for p in folder.rglob(f".*{TEMP_SUFFIX}") if p.is_file() and is_temporary(p)]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def check_writable(root: Path) -> None:
    """Refuse a results folder that cannot be written, before any training starts.

    `os.access` alone is not enough: it answers yes to root for any mode bits, and says nothing
    of filesystems that refuse writes for other reasons (sysfs, some network mounts). So the
    nearest existing folder is also probed by creating and deleting a hidden temporary file.
    """
    root = Path(root)
    probe_dir = root
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise SegsweepError(f"{root}: results path is not a folder ({probe_dir} is a file)")
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise SegsweepError(f"{root}: results folder is not writable (no write permission on {probe_dir})")
    try:
        fd, name = tempfile.mkstemp(prefix=".segsweep-probe.", suffix=TEMP_SUFFIX, dir=probe_dir)
    except OSError as exc:
        raise SegsweepError(f"{root}: results folder is not writable ({probe_dir}: {exc.strerror or exc})") from None
    os.close(fd)
    Path(name).unlink(missing_ok=True)


def new_run_dir(results_root: str | Path, name: str, create: bool = True) -> Path:
    """`<results_root>/runs/<name>/<YYYYmmdd-HHMMSS>-<6 hex>/`, created unless `create=False`.

    With `create=False` the folder is only named (after checking the root is writable), so
    that `fit` creates it once the spec, data and model have been built without error.
    """
    root = Path(results_root) / "runs" / name
    check_writable(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        run_dir = root / f"{stamp}-{secrets.token_hex(3)}"
        if run_dir.exists():
            continue
        if create:
            try:
                run_dir.mkdir(parents=True)
            except FileExistsError:
                continue
        return run_dir


# --------------------------------------------------------------------------- csv and json


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row.get(c, "")) for c in columns])
    return buf.getvalue()


def write_metrics(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite metrics.csv with every epoch so far (a few rows: cheap, and always whole)."""
    atomic_write_text(run_dir / "metrics.csv", csv_text(METRIC_COLUMNS, rows))


class MetricsFile(NamedTuple):
    """metrics.csv as read: its columns, each row's line number and values (empty cells left
    out), and whether its last line lacks the line end every written line has."""

    columns: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, float]], ...]
    open_end: bool


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv's rows ([] when there is none); a damaged file is a `SegsweepError` naming
    the line (`parse_metrics`)."""
    path = run_dir / "metrics.csv"
    return [values for _, values in parse_metrics(path).rows] if path.exists() else []


def parse_metrics(path: Path) -> MetricsFile:
    """Read metrics.csv strictly: UTF-8 text without NUL bytes, the header (epoch first, known
    columns), then one row per epoch 1, 2, 3, ... with a number in each cell. Anything else (a
    cut, a hand edit, garbage) is one line naming the file and the line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SegsweepError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                            "expected the CSV segsweep writes") from None
    if "\0" in text:
        raise SegsweepError(f"{path}: line {text.count(chr(10), 0, text.index(chr(0))) + 1} holds a NUL byte; "
                            "expected the CSV segsweep writes")
    lines = _csv_records(path, text)
    if not lines:
        raise SegsweepError(f"{path}: is empty; expected the header ({','.join(METRIC_COLUMNS)}) and a row per epoch")
    columns = tuple(lines[0][1])
    unknown = [c for c in columns if c not in METRIC_COLUMNS]
    if not columns or columns[0] != "epoch" or unknown or len(set(columns)) < len(columns):
        raise SegsweepError(f"{path}: line 1 is not the header: expected columns of {','.join(METRIC_COLUMNS)}, "
                            f"epoch first (got {','.join(columns)[:80]!r})")
    rows = []
    for number, cells in lines[1:]:
        if not cells:
            continue  # a blank line
        rows.append((number, _metrics_row(path, number, columns, cells, len(rows) + 1)))
    return MetricsFile(columns, tuple(rows), not text.endswith(("\n", "\r")))


def _csv_records(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """Each CSV record with the line it starts on."""
    reader, records, start = csv.reader(io.StringIO(text, newline="")), [], 1
    try:
        for cells in reader:
            records.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SegsweepError(f"{path}: line {start} is not CSV ({exc}); expected the CSV segsweep writes") from None
    return records


def _metrics_row(path: Path, number: int, columns: Sequence[str], cells: list[str], epoch: int) -> dict[str, float]:
    """One row's values; `epoch` is the one this row must hold (rows go 1, 2, 3, ...)."""
    if len(cells) != len(columns):
        what = (f"is cut short ({len(cells)} of the header's {len(columns)} values)" if len(cells) < len(columns)
                else f"has {len(cells)} values where the header names {len(columns)}")
        raise SegsweepError(f"{path}: line {number} {what}")
    values: dict[str, float] = {}
    for column, cell in zip(columns, cells):
        if column != "epoch" and cell == "":
            continue  # a column the run did not record then
        try:
            values[column] = int(cell) if column == "epoch" else float(cell)
        except ValueError:
            kind = "a whole number" if column == "epoch" else "a number"
            raise SegsweepError(f"{path}: line {number}, column {column}: {cell[:40]!r} is not {kind}") from None
    if values["epoch"] != epoch:
        raise SegsweepError(f"{path}: line {number} holds epoch {values['epoch']} where epoch {epoch} belongs "
                            "(one row per epoch, in order from 1)")
    return values


def write_per_image(run_dir: Path, rows: Sequence[tuple[str, float, float]], name: str = "test_per_image.csv") -> None:
    atomic_write_text(
        run_dir / name, csv_text(("image_id", "dice", "iou"), [dict(image_id=i, dice=d, iou=u) for i, d, u in rows])
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_json_safe(dict(data)), indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SegsweepError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise SegsweepError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


# --------------------------------------------------------------------------- provenance


_REPO = Path(__file__).resolve().parents[1]


def git_sha() -> str:
    """The commit of the code that ran ('unknown' outside a checkout), '+dirty' if modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_state() -> str:
    """`git_sha()`, and for a modified tree also a digest of its uncommitted changes to tracked
    files: it differs whenever the code a new process would import differs (a commit, an edit)."""
    sha = git_sha()
    if not sha.endswith("+dirty"):
        return sha
    try:
        diff = subprocess.run(["git", "diff", "HEAD", "--no-ext-diff", "--binary"], cwd=_REPO,
                              capture_output=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return sha
    return f"{sha} (changes {hashlib.sha256(diff).hexdigest()[:12]})"


VERSIONED = ("torch", "torchvision", "albumentations", "numpy")  # what summary.json records


def library_versions() -> dict[str, str]:
    """Python's and each `VERSIONED` library's version, importing none of them.

    A module already imported reports its `__version__` (torch's keeps the build tag, e.g.
    '2.5.1+cu124'); any other is read from installed metadata. Importing albumentations just
    for its version would run its PyPI update check.
    """
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        loaded = getattr(sys.modules.get(name), "__version__", None)
        try:
            versions[name] = str(loaded) if loaded else version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --------------------------------------------------------------------------- plots


def _save_png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(run_dir: Path, rows: Sequence[Mapping[str, float]], title: str) -> None:
    """curves.png: train/val loss and val Dice (per-image and dataset-level) per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)  # Agg without pyplot: a notebook keeps its backend
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train/loss"] for r in rows], "o-", label="train/loss")
    ax_loss.plot(epochs, [r["val/loss"] for r in rows], "o-", label="val/loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_dice.plot(epochs, [r["val/dice"] for r in rows], "o-", label="val/dice (per-image mean)")
    ax_dice.plot(epochs, [r["val/dice_global"] for r in rows], "s--", label="val/dice_global")
    ax_dice.plot(epochs, [r["val/iou"] for r in rows], "^:", label="val/iou")
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("score")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend(loc="lower right")
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save_png(fig, run_dir / "curves.png")


def prediction_grid(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of [image | truth overlay | prediction overlay], uint8 (H, W, 3).

    Truth in green, prediction in red; ignored pixels (255) in yellow on the truth panel.
    """
    rows = []
    for image, truth, pred in zip(images, truths, preds):
        base = image.astype(np.float32)
        truth_rgb = base.copy()
        fg = truth == 1
        truth_rgb[fg] = 0.45 * truth_rgb[fg] + 0.55 * np.array([40, 220, 60])
        ign = truth == 255
        truth_rgb[ign] = 0.45 * truth_rgb[ign] + 0.55 * np.array([240, 220, 40])
        pred_rgb = base.copy()
        pm = pred.astype(bool)
        pred_rgb[pm] = 0.45 * pred_rgb[pm] + 0.55 * np.array([230, 40, 40])
        sep = np.full((base.shape[0], 2, 3), 255, np.float32)
        rows.append(np.concatenate([base, sep, truth_rgb, sep, pred_rgb], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.float32))
    return np.clip(np.concatenate(rows[:-1], axis=0), 0, 255).astype(np.uint8)


def save_prediction_png(run_dir: Path, grid: np.ndarray) -> None:
    """predictions.png: the grid with a header naming the columns."""
    import cv2

    header = np.full((18, grid.shape[1], 3), 255, np.uint8)
    third = grid.shape[1] // 3
    for i, label in enumerate(("image", "truth", "prediction")):
        cv2.putText(header, label, (i * third + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate([header, grid]), cv2.COLOR_RGB2BGR))
    assert ok
    atomic_write_bytes(run_dir / "predictions.png", png.tobytes())
