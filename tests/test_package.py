"""The package as users get it: import name, public API, command, size limits of its code.

A non-editable install into a fresh venv (outside the checkout) gives a working `segsweep`
command and no top-level `core`; functions and modules stay small enough to read.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import segsweep

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "core"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def test_public_api_resolves_and_version_is_set() -> None:
    assert segsweep.__version__ and segsweep.__version__[0].isdigit()
    for name in segsweep.__all__:
        assert getattr(segsweep, name) is not None, name
    with pytest.raises(AttributeError):
        segsweep.no_such_name  # noqa: B018


def test_import_is_light() -> None:
    """`import segsweep` loads none of the heavy or networked libraries."""
    code = ("import sys, segsweep; heavy = {'torch', 'albumentations', 'optuna', 'wandb', 'matplotlib', "
            "'tensorboard'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_package_folder_is_installed() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(["segsweep", *p.parent.relative_to(CORE).parts]) for p in CORE.rglob("__init__.py")}
    assert found == listed


def _python_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_no_long_functions_or_modules() -> None:
    long = []
    for path in _python_files():
        text = path.read_text()
        rel = path.relative_to(REPO)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_imports_inside_the_package_are_relative_and_nothing_edits_sys_path() -> None:
    bad = []
    for path in _python_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in ("core", "segsweep"):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} absolute import of {node.module}")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("core", "segsweep") for a in node.names):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} absolute import")
    for path in [*_python_files(), *REPO.glob("scripts/*.py"), *REPO.glob("tests/*.py")]:
        if path.name != "test_package.py" and "sys.path.insert" in path.read_text():
            bad.append(f"{path.relative_to(REPO)} edits sys.path")
    assert not bad, "\n".join(bad)


def test_python_dash_m_lists_the_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "segsweep", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "sweep", "report", "evaluate", "predict"):
        assert f"    {command} " in out, command


def test_a_bad_subcommand_is_one_line_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "segsweep", "trian"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'trian'" in proc.stderr


def test_non_editable_install_outside_the_checkout(tmp_path: Path) -> None:
    """pip install <checkout> into a fresh venv that sees this venv's packages (torch and the
    rest come from there, nothing is downloaded); then `segsweep run` trains one epoch with the
    full record, `python -m segsweep --help` works and `import core` fails."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # This venv's packages (torch, ...) visible to the new one; segsweep itself must come from the wheel.
    parent_site = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site, "parent.pth").write_text(parent_site + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", site, str(REPO)], check=True, cwd=tmp_path, env=env,
                   capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    # A venv made with --without-pip: the console script is the entry point pip wrote into --target.
    check = subprocess.run([str(py), "-c", "import segsweep, sys; print(segsweep.__file__)"], capture_output=True,
                           text=True, cwd=work, env=env, check=True).stdout
    assert check.startswith(site) and "core" not in Path(check).parent.name
    assert subprocess.run([str(py), "-c", "import core"], capture_output=True, cwd=work, env=env).returncode != 0
    helped = subprocess.run([str(py), "-m", "segsweep", "--help"], capture_output=True, text=True, cwd=work, env=env)
    assert helped.returncode == 0 and "sweep" in helped.stdout
    script = Path(site, "bin", "segsweep")
    assert script.is_file()
    run = subprocess.run([str(py), str(script), "run", str(REPO / "experiments" / "quickstart.yaml"),
                          "train.epochs=1", "train.threads=1", "data.image_size=32", "model.base_channels=8",
                          "data.synthetic.num_trainval=20", "data.synthetic.num_test=4", "data.synthetic.size=40",
                          "tracking.wandb.mode=disabled", f"data.root={work / 'data'}",
                          f"data.cache_dir={work / 'cache'}", "--results", str(work / "results")],
                         capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    run_dir = next((work / "results" / "runs" / "quickstart").iterdir())
    for name in ("config.yaml", "metrics.csv", "summary.json", "curves.png", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
