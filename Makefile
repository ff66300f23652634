# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lab clean-workspace

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

# Rooted at the repository so report links under runs/ open in JupyterLab; the kernels find the
# demo's workspace and runs/ whatever folder a notebook runs in.
lab: $(STAMP)
	OPS_WORKSPACE=$${OPS_WORKSPACE:-$(CURDIR)/workspace} OPS_RUNS_DIR=$${OPS_RUNS_DIR:-$(CURDIR)/runs} \
	$(BIN)/jupyter lab --notebook-dir=$(CURDIR) --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root,) \
	  $(LAB_ARGS) notebooks/00_ops_dashboard.ipynb

clean-workspace:
	rm -rf workspace runs/2*
