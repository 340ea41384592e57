# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-eval clean-venv constraints

# every package at the version in constraints.txt (the versions the feature build and the quoted figures used)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: on these machines 2.13.0 is a local CPU wheel; any other torch pulls CUDA wheels.
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[train,serve,dev]'
	touch $(STAMP)

# rewrite constraints.txt from the venv (after an intended upgrade; then rebuild features and rerun the figures)
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --disable-pip-version-check --exclude-editable \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

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
