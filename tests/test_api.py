"""The Python API, `import kvbench`: the README's five-line example runs (cells in their own processes) and returns
a DataFrame one row per cell; kvbench.load reads a run back; the package list in pyproject maps the name."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    usage = text[text.index("## Usage"):text.index("## What a run writes")]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


def test_the_readme_example_runs_and_reads_back(tmp_path, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 5
    scope: dict = {}
    exec(code.replace("/tmp/kvbench-demo", str(tmp_path / "demo")), scope)
    rows, again = scope["rows"], scope["again"]
    assert list(rows["strategy"]) == ["sequential", "sequential"] and set(rows["status"]) == {"ok"}
    assert sorted(rows["request_rate"]) == [4.0, math.inf]  # one row per rate: the sweep
    assert len(set(rows["cell_key"])) == 2 and "request_rate=4" in rows["cell_key"].iloc[0]
    assert list(again["cell_key"]) == list(rows["cell_key"])
    assert list(again["output_tokens_per_s"]) == list(rows["output_tokens_per_s"])
    assert "ttft_p50_ms" in capsys.readouterr().out
    assert not (ROOT / "reports" / "history.csv").exists() or str(tmp_path) not in (
        ROOT / "reports" / "history.csv").read_text()  # a notebook's run keeps out of the history


def test_bad_options_raise_before_any_cell(tmp_path):
    import kvbench

    with pytest.raises(ValueError, match="unknown setting 'strategy'; allowed:"):
        kvbench.run(strategy="full", out=tmp_path / "x")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        kvbench.run(model="random:tiny-llama", workload="smoke", strategies="full", dtype="fp8", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_pyproject_lists_every_package_and_maps_kvbench():
    from setuptools import find_packages

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"]["kvbench"] == "bench/api"
    assert sorted(tool["packages"]) == sorted(find_packages(str(ROOT), include=["bench*", "strategies*"]) +
                                              ["kvbench"]), "add the new package to [tool.setuptools] packages"
