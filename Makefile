# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean-results

venv: $(STAMP)

# pip (not uv/poetry): torch comes from the wheels already on this machine's disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench,export,dashboard,slurm,postgres]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segsweep run experiments/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q

clean-results:
	rm -rf results/runs results/sweeps results/benchmarks
