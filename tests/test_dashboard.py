"""optuna-dashboard over a finished sweep: `segsweep dashboard` serves it on 127.0.0.1, its JSON
API lists every trial with its params (never the seed) and its val/dice curve, and the study page
renders in headless Chromium. Also: old-layout studies (seed as a parameter) resume exactly
once, URL passwords are masked by SQLAlchemy, and several workers draw one progress bar.

Chromium is Debian's `chromium` (SEGSWEEP_TEST_CHROMIUM, or on PATH; `.ci/run` installs it and
the `dashboard` extra). Without it (or without optuna-dashboard) those tests are skipped, except
under CI=true, where they fail.
"""
from __future__ import annotations

import csv
import fcntl
import html
import json
import os
import pty
import re
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from conftest import TINY
from test_sweeps import complete_hashes, expected_hashes, fake_fit, open_like_dashboard, quiet, write_sweep  # noqa: F401

from segsweep.sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _unavailable(why: str) -> None:
    if _in_ci():
        pytest.fail(f"CI=true: the dashboard test must run here, but {why}", pytrace=False)
    pytest.skip(why)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:  # 127.0.0.1 only
        return json.loads(response.read())


# --------------------------------------------------------------------------- a finished sweep, served


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A quickstart-like grid (BatchNorm on/off x 2 seeds, 2 epochs, tiny synthetic data), real
    `fit`, finished; (sweep folder, the lines the command printed)."""
    from segsweep.sweeps import run_sweep

    root = tmp_path_factory.mktemp("dash")
    path = root / "dash_grid.yaml"
    path.write_text(yaml.safe_dump({"name": "dash_grid", "experiment": str(QUICKSTART), "method": "grid",
                                    "parameters": {"model.batchnorm": {"values": [True, False]}}, "seeds": [0, 1]}))
    overrides = {**TINY, "data.root": str(root / "data"), "data.cache_dir": str(root / "cache")}
    lines: list[str] = []
    outcome = run_sweep(path, overrides, results=root / "results", echo=lines.append)
    assert outcome.exit_code == 0 and [r["state"] for r in outcome.rows] == ["COMPLETE"] * 4
    return outcome.sweep_dir, lines


@pytest.fixture(scope="module")
def dashboard(finished_sweep: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The command the sweep printed, started on a free port; yields the study page's URL."""
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        _unavailable("optuna-dashboard is not installed (pip install -e '.[dashboard]')")
    sweep_dir, lines = finished_sweep
    printed = [line for line in lines if line.startswith("dashboard: ")]
    assert printed == [f"dashboard: segsweep dashboard {shlex.quote(str(sweep_dir))}"]
    command = shlex.split(printed[0].removeprefix("dashboard: "))
    assert command[:2] == ["segsweep", "dashboard"]
    err = tmp_path_factory.mktemp("server") / "stderr.txt"
    with open(err, "w") as err_fh:
        server = subprocess.Popen([sys.executable, "-m", "segsweep", *command[1:], "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=err_fh, text=True)
    try:
        first = server.stdout.readline()  # the server prints its address once it listens
        match = re.match(r"optuna-dashboard: (http://127\.0\.0\.1:\d+/dashboard/studies/\d+) ", first)
        assert match, f"unexpected first line {first!r}; stderr: {err.read_text()[-2000:]}"
        yield match.group(1)
    finally:
        server.terminate()
        server.wait(timeout=60)
        server.stdout.close()


def _metric_curve(run_dir: str) -> dict[int, float]:
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        return {int(r["epoch"]): float(r["val/dice"]) for r in csv.DictReader(fh)}


def test_json_api_lists_every_trial_with_params_and_val_dice_curve(dashboard: str,
                                                                  finished_sweep: tuple[Path, list[str]]) -> None:
    base, study_id = dashboard.split("/dashboard/studies/")
    studies = _get(f"{base}/api/studies")["study_summaries"]
    assert [(s["study_id"], s["study_name"]) for s in studies] == [(int(study_id), "dash_grid")]
    detail = _get(f"{base}/api/studies/{study_id}")
    assert detail["name"] == "dash_grid" and detail["objective_names"] == ["val/dice"]
    with open(finished_sweep[0] / "trials.csv", newline="") as fh:
        rows = {int(r["number"]): r for r in csv.DictReader(fh)}
    assert sorted(t["number"] for t in detail["trials"]) == sorted(rows) and len(rows) == 4
    cells = Counter()
    for trial in detail["trials"]:
        row, attrs = rows[trial["number"]], {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert [p["name"] for p in trial["params"]] == ["model.batchnorm"]
        assert [p["name"] for p in trial["fixed_params"]] == ["model.batchnorm"]
        assert trial["params"][0]["param_external_value"] == row["model.batchnorm"]
        assert attrs["seed"] == row["seed"] and attrs["config_hash"] == row["config_hash"]
        curve = {v["step"]: v["value"] for v in trial["intermediate_values"]}
        assert curve == pytest.approx(_metric_curve(row["run_dir"])) and sorted(curve) == [1, 2]
        cells[(row["model.batchnorm"], row["seed"])] += 1
    assert set(cells.values()) == {1} and len(cells) == 4
    assert [s["name"] for s in detail["union_search_space"]] == ["model.batchnorm"]
    importances = _get(f"{base}/api/studies/{study_id}/param_importances")["param_importances"]
    assert [i["name"] for i in importances[0]] == ["model.batchnorm"]


def test_the_seed_is_no_parameter_and_importance_does_not_rank_it(finished_sweep: tuple[Path, list[str]]) -> None:
    import optuna

    storage = open_like_dashboard(finished_sweep[0] / "journal.log")
    study = optuna.load_study(study_name="dash_grid", storage=storage)
    assert study.metric_names == ["val/dice"]
    assert all(set(t.params) == {"model.batchnorm"} and "seed" not in t.system_attrs["fixed_params"]
               for t in study.trials)
    assert sorted(t.user_attrs["seed"] for t in study.trials) == [0, 0, 1, 1]
    assert list(optuna.importance.get_param_importances(study)) == ["model.batchnorm"]


@pytest.fixture
def chromium() -> str:
    found = os.environ.get("SEGSWEEP_TEST_CHROMIUM") or shutil.which("chromium")
    if not found or not os.access(found, os.X_OK):
        _unavailable("Chromium is not installed (apt-get install --no-install-recommends chromium, or run .ci/run)")
    return found


def _text(dom: str) -> str:
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def test_study_page_renders_in_headless_chromium(dashboard: str, chromium: str, tmp_path: Path) -> None:
    shot = tmp_path / "study.png"
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=20000", "--window-size=1280,900", f"--screenshot={shot}",
                           "--dump-dom", dashboard], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = _text(proc.stdout)
    assert "dash_grid (id=" in text and "History" in text
    assert "val/dice" in text  # the objective's name, not "Objective 0"
    panel = text.split("Hyperparameter Importance", 1)[1].split("Timeline", 1)[0]
    assert "model.batchnorm" in panel and "seed" not in panel
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


# --------------------------------------------------------------------------- the command's bad inputs


def test_missing_extra_is_one_line_and_exit_2(cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails as if not installed
    result = cli("dashboard", tmp_path)
    assert result.code == 2 and result.out == ""
    assert result.err.strip().splitlines() == [result.err.strip()]
    assert "pip install 'segsweep[dashboard]'" in result.err


def test_bad_targets_are_one_line_and_exit_2(cli: Any, tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard")
    (tmp_path / "plain").mkdir()
    masked = tmp_path / "masked"
    masked.mkdir()
    (masked / "sweep.yaml").write_text(yaml.safe_dump({"name": "m", "optuna": {
        "storage": "postgresql://u:***@db.example/segsweep"}}))
    cases = {tmp_path / "absent": "no such folder or file", tmp_path / "plain": "not a sweep folder (no sweep.yaml)",
             masked: "its password hidden"}
    for target, expected in cases.items():
        result = cli("dashboard", target)
        assert result.code == 2 and expected in result.err and len(result.err.strip().splitlines()) == 1, result.err
        assert str(target) in result.err
    assert not any(p.name == "journal.log" for p in tmp_path.rglob("*"))  # nothing created


# --------------------------------------------------------------------------- old layout, masking


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_sweep_queued_with_the_seed_as_parameter_resumes_exactly_once(tmp_path: Path, quiet: None,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A study from before the seed left the params: 8 cells x seeds queued with `seed` fixed,
    2 already run with it as a parameter, no objective name. Rerunning runs the other 6 once."""
    import optuna

    from segsweep.sweeps import run_sweep
    from segsweep.sweeps.cells import arm_choices, cell_config_hash
    from segsweep.sweeps.storage import open_storage

    log = tmp_path / "fits.log"
    monkeypatch.setenv("SWEEP_FAKE_LOG", str(log))
    path = write_sweep(tmp_path / "old.yaml")
    sweep = load_sweep(path)
    storage = open_storage(str(tmp_path / "r" / "sweeps" / "old" / "journal.log"), sweep.spec.optuna)
    study = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    study.set_user_attr("sweep_hash", sweep.hash)
    for seed in sweep.seeds:
        for cell in sweep.cells:
            chash, ahash = cell_config_hash(sweep, cell, seed)
            study.enqueue_trial({**cell.params, "seed": seed}, user_attrs={
                "config_hash": chash, "arm_hash": ahash, "seed": seed, "cell": cell.label, "overrides": cell.overrides})
    for _ in range(2):
        trial = study.ask()
        for key, choices in {**arm_choices(sweep), "seed": sweep.seeds}.items():
            trial.suggest_categorical(key, list(choices))
        study.tell(trial, 0.5)

    outcome = run_sweep(path, results=tmp_path / "r", fit_fn=fake_fit, echo=lambda s: None)
    assert outcome.exit_code == 0 and outcome.pending == 0
    assert len(log.read_text().splitlines()) == 6  # the 2 finished ones are not trained again
    counts = complete_hashes(open_like_dashboard(tmp_path / "r" / "sweeps" / "old" / "journal.log"), "old")
    assert set(counts) == expected_hashes(path) and set(counts.values()) == {1}
    trials = optuna.load_study(study_name="old", storage=storage).trials
    assert ["seed" in t.params for t in trials] == [True] * 2 + [False] * 6
    assert {(r["cell"], r["seed"]) for r in outcome.rows} == {(c.label, s) for c in sweep.cells for s in sweep.seeds}
    assert optuna.load_study(study_name="old", storage=storage).metric_names == ["val/dice"]


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:secret@db.example:5432/segsweep?sslmode=require&password=qsecret",
     "postgresql://u:***@db.example:5432/segsweep?password=%2A%2A%2A&sslmode=require"),
    ("postgresql://u:secret@[2001:db8::1]:5432/segsweep", "postgresql://u:***@[2001:db8::1]:5432/segsweep"),
    ("postgresql+psycopg://u:p%40ss%3Aw%2Frd@db.example/segsweep", "postgresql+psycopg://u:***@db.example/segsweep"),
    ("mysql+pymysql://u@db.example/segsweep?charset=utf8mb4", "mysql+pymysql://u@db.example/segsweep?charset=utf8mb4"),
    ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
    ("results/sweeps/a@b:c/journal.log", "results/sweeps/a@b:c/journal.log"),  # a journal path, not a URL
])
def test_masked_url_hides_every_password(url: str, shown: str) -> None:
    from segsweep.sweeps.storage import hides_secret, masked_url

    assert masked_url(url) == shown
    assert "secret" not in shown and "p%40ss" not in shown
    if "://" in url:
        assert hides_secret(masked_url(url)) == (masked_url(url) != url)


# --------------------------------------------------------------------------- one progress bar for N workers


def probe_fit(spec: Any, run_dir: Any, tracker: Any = None, on_epoch_end: Any = None) -> Any:
    """fake_fit, after noting in SWEEP_PROBE_LOG whether this process would draw `fit`'s bars."""
    from segsweep.train.loop import _progress

    bar = _progress([], "probe", 0)
    with open(os.environ["SWEEP_PROBE_LOG"], "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "tty": sys.stderr.isatty(), "bar": not bar.disable}) + "\n")
    bar.close()
    return fake_fit(spec, run_dir, tracker=tracker, on_epoch_end=on_epoch_end)


def _run_on_a_terminal(path: Path, workers: int, results: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the sweep with stdout and stderr on a pseudo-terminal; (its pid, what it drew there)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a width
    code = ("import sys; from segsweep.sweeps import run_sweep; from test_dashboard import probe_fit; "
            f"sys.exit(run_sweep({str(path)!r}, workers={workers}, results={str(results)!r}, fit_fn=probe_fit, "
            "echo=print).exit_code)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    assert proc.wait(timeout=600) == 0
    reader.join(timeout=600)
    os.close(master)
    return proc.pid, b"".join(chunks).decode(errors="replace")


def test_several_workers_draw_one_progress_bar(tmp_path: Path, quiet: None) -> None:
    probe = tmp_path / "probe.jsonl"
    paths = [str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "SWEEP_PROBE_LOG": str(probe), "PYTHONPATH": os.pathsep.join(paths)}
    pid, one = _run_on_a_terminal(write_sweep(tmp_path / "solo.yaml", seeds=[0]), 1, tmp_path / "r", env)
    solo = [json.loads(line) for line in probe.read_text().splitlines()]
    assert len(solo) == 4 and all(p["pid"] == pid and p["tty"] and p["bar"] for p in solo)  # it draws its bars
    assert not re.search(r"sweep solo: +\d+%\|", one)

    probe.unlink()
    pid, drawn = _run_on_a_terminal(write_sweep(tmp_path / "pair.yaml"), 2, tmp_path / "r", env)
    workers = [json.loads(line) for line in probe.read_text().splitlines()]
    assert len(workers) == 8 and pid not in {p["pid"] for p in workers}  # trained in the worker processes
    assert not any(p["tty"] or p["bar"] for p in workers)  # the workers draw none
    bars = re.findall(r"sweep pair: +\d+%\|[^|]*\| *(\d+)/(\d+)", drawn)  # the driver's one bar
    assert bars and bars[-1] == ("8", "8") and {total for _, total in bars} == {"8"}
