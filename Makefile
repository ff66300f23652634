# For a fresh machine: `make demo` (the main job), `make test` (the suite), `make lint` (ruff, mypy, import layers).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test chaos lint install lab bench-data clean-workspace

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/opsbench demo $(DEMO_ARGS)

# Two workers (pytest-xdist): most slow tests wait on a notebook kernel, so two overlap well on
# two cores; each worker holds a model or two in memory (≈ 4 GB), so more is not always better.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The chaos run (tests/e2e/test_scale_out.py): the scale-out stack's lifecycle under seeded kill -9s;
# prints its figures. Needs OPS_TEST_POSTGRES_URL, as the PostgreSQL half of `make test` does.
chaos: $(STAMP)
	OPS_TEST_MIN_POSTGRES=1 $(BIN)/python -m pytest --chaos -n 0 -s -q $(PYTEST_ARGS) tests/e2e/test_scale_out.py

# Lint, types, import layers (config in pyproject.toml); stops at the first failure. Notebooks are
# not linted. mypy's first run analyses torch & co. for their types (minutes); later runs use .mypy_cache.
LINT_PATHS := opslib tests bench .ci
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

# Rooted at the repository; the kernels find the demo's workspace and runs/ whatever folder a
# notebook runs in. The opslib server extension serves runs/ at /ops/runs/ (the dashboard links
# there), where the run index and the reports link to each other; JupyterLab's HTML viewer and
# /files/ answer such links 403 (opslib/ops/lab_runs.py says why).
lab: $(STAMP)
	OPS_WORKSPACE=$${OPS_WORKSPACE:-$(CURDIR)/workspace} OPS_RUNS_DIR=$${OPS_RUNS_DIR:-$(CURDIR)/runs} \
	$(BIN)/jupyter lab --notebook-dir=$(CURDIR) --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root,) \
	  --ServerApp.jpserver_extensions="{'opslib.ops.lab_runs': True}" \
	  $(LAB_ARGS) notebooks/00_ops_dashboard.ipynb

# A small real benchmark set: the built-in corpus (this Python's standard-library docstrings) as a
# BEIR folder, for `bench/*.py --dataset` and `opsbench import-beir` (docs/benchmarks.md). Made once.
BENCH_DATA ?= bench/data/stdlib
bench-data: $(STAMP)
	test -f $(BENCH_DATA)/qrels.tsv || $(BIN)/opsbench export-builtin $(BENCH_DATA)

clean-workspace:
	rm -rf workspace runs/2*
