# pgi_detect developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install test test-fast test-cpu-baseline demo lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(VENV)/bin/python setup.cfg constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Two lanes: tests/unit (in-process, one package each) and tests/e2e (the CLI in subprocesses, SLURM scripts, DDP).
test: install
	$(PY) -m pytest -q tests/unit
	$(PY) -m pytest -q tests/e2e

# The recorded-number tests again, on the kernels an old x86 CPU runs (no AVX/AVX2/AVX-512).
test-cpu-baseline: install
	$(PY) scripts/cpu_baseline.py -- $(PY) -m pytest -q -m numeric tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	$(PY) scripts/demo.py

lint: install
	$(PY) -m pyflakes src tests scripts 2>/dev/null || $(PY) -m compileall -q src tests scripts

clean:
	rm -rf $(VENV) build dist demo_data demo_runs .pytest_cache
