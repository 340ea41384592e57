# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-eval clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: on these machines 2.13.0 is a local CPU wheel; any other torch pulls CUDA wheels.
	$(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -e '.[train,serve,dev]'
	touch $(STAMP)

demo: $(STAMP)
	PY=$(PY) scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check trainer service tests

bench-eval: $(STAMP)
	$(PY) tests/benchmarks/bench_evaluate.py

clean-venv:
	rm -rf $(VENV)
