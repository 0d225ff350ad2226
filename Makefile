# Two commands do everything on a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.chute-installed
ARGS   ?=
PYTEST_ARGS ?=
# The default suite runs in this many processes (pytest-xdist, one test file per process at a time:
# module fixtures are built once); 0 runs it in this process, in file order.
PYTEST_WORKERS ?= 2

.PHONY: install train test test-all lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m chute.info  # says whether the crop-aware JPEG decoder was built
	touch $(STAMP)

install: $(STAMP)

train: install  ## run the default experiment (extra Hydra overrides: make train ARGS="loader.num_workers=2")
	$(BIN)/python train.py $(ARGS)

test: install  ## the default (fast) suite, in $(PYTEST_WORKERS) processes
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: install  ## everything, slow tests included
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
