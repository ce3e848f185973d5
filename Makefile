# Two commands on a fresh machine with Python >= 3.11:  `make train`  and  `make test`.
# Each sets up .venv first (once): a CPU build of torch, then the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test test-slow test-all bench notebook clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to a CPU build: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

train: setup  ## train the default experiment (BPR-MF on the embedded synthetic data); ARGS="model=neumf ..."
	$(BIN)/recforge-train $(ARGS)

test: setup  ## the default test suite (CI runs this)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

test-slow: setup  ## long tests: real datasets, many epochs, subprocess sweeps
	$(BIN)/python -m pytest -q -m "slow" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup  ## training/eval throughput (prints numbers)
	$(BIN)/python scripts/bench.py

notebook: setup  ## Jupyter Lab on notebooks/ (installs the notebook extra once); the notebooks read logs/mlflow.db
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[dev,notebook]"
	$(BIN)/jupyter lab notebooks/

clean:  ## everything runs write into the repository: logs, run folders, the data cache, reports
	rm -rf logs outputs multirun data_cache reports .pytest_cache
