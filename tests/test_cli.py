"""The real CLI end to end: files and columns written, errors exit 2 with one line, resume and timeouts."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.results.rows import COLUMNS

KVBENCH = [sys.executable, "-m", "bench.cli"]


def kvbench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*KVBENCH, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    done = kvbench("run", "--workload", "smoke", "--strategies", "full,hf-generate", "--repeats", "2",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_smoke_run_writes_csv_json_markdown_with_every_column(smoke_run):
    rows = list(csv.DictReader(open(smoke_run / "results.csv")))
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS
    assert [r["strategy"] for r in rows] == ["naive", "full", "hf-generate"]  # naive added and run first
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert float(r["tokens_per_s"]) > 0 and float(r["ttft_ms"]) > 0
        assert r["greedy_agreement"] == "1" and r["first_divergence"] == "-1"
        assert r["model"] == "smollm2-135m" and r["dtype"] == "float32" and r["device"] == "cpu"
        assert r["torch_version"] and r["transformers_version"] and r["git_rev"] and r["seed"] == "0"
    # --weights auto (the default): ours run the layout the probe timed faster on this CPU; the peer runs as shipped
    for r in rows[:2]:
        stock, packed = float(r["weights_probe_stock_ms"]), float(r["weights_probe_packed_ms"])
        assert r["weights"] == ("packed" if packed < stock else "stock")
    assert rows[2]["weights"] == "stock" and rows[2]["weights_probe_stock_ms"] == ""
    full = rows[1]
    assert full["cache_bytes"] == full["cache_bytes_theory"] and int(full["cache_bytes"]) > 0
    assert rows[0]["cache_bytes"] == "0" and rows[0]["speedup_vs_naive"] == "1"
    data = json.loads((smoke_run / "results.json").read_text())
    assert {"environment", "rows", "spread"} <= set(data)
    key = "smollm2-135m|smoke|full|"
    assert data["spread"][key]["tokens_per_s"]["n"] == 2
    report = (smoke_run / "report.md").read_text()
    assert "## smollm2-135m · smoke" in report and "| full |" in report and "torch_version" in report


def test_report_rerenders_and_rebuilds_a_half_written_results_json(smoke_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    (run / "report.md").unlink()
    assert kvbench("report", str(run)).returncode == 0 and (run / "report.md").exists()
    text = (run / "results.json").read_text()
    (run / "results.json").write_text(text[: len(text) // 2])  # torn file
    done = kvbench("report", str(run))
    assert done.returncode == 0, done.stderr
    assert len(json.loads((run / "results.json").read_text())["rows"]) == 3


@pytest.mark.parametrize("args, message", [
    (["--strategies", "nope"], "unknown strategy 'nope'; allowed: naive, full"),
    (["--workload", "nope"], "unknown workload 'nope'; allowed: smoke, chat-short"),
    (["--model", "/no/such/model"], "model '/no/such/model' not found"),
    (["--model", "random:nope"], "unknown random shape 'nope'; allowed:"),
    (["--param", "full.window=3"], "unknown parameter full.window; allowed: full takes none"),
    (["--model", "random:tiny-llama-ctx256", "--workload", "long-context"],
     "needs 1"),
    (["--out", "/proc/kvbench-cannot-write"], "cannot write to output directory"),
    (["--sampling", "temp=1"], "unknown sampling option 'temp'; allowed: temperature"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    # In-process (each subprocess pays ~8 s of imports); the real entry point is checked once below.
    code = main(["run", "--workload", "smoke", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kvbench: error: ") and message in lines[0], err


def test_the_real_entry_point_exits_2_with_one_line(tmp_path):
    done = kvbench("run", "--workload", "smoke", "--out", str(tmp_path / "x"), "--strategies", "nope")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvbench: error: ")
    assert "unknown strategy 'nope'; allowed: naive, full" in lines[0]


def test_context_error_names_the_limit(tmp_path):
    done = kvbench("run", "--model", "random:tiny-llama-ctx256", "--workload", "long-context", "--out",
                   str(tmp_path))
    assert "more than random:tiny-llama-ctx256's context of 256" in done.stderr


def test_timeout_becomes_a_failed_row_and_resume_finishes_without_doubling(tmp_path):
    out = tmp_path / "run"
    first = kvbench("run", "--model", "random:tiny-llama", "--workload", "smoke", "--strategies", "full",
                    "--repeats", "1", "--out", str(out), "--cell-timeout", "0.5")
    assert first.returncode == 1
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["status"] for r in rows} == {"failed"} and "timed out after 0.5 s" in rows[0]["error"]
    with open(out / "results.jsonl", "a") as f:
        f.write('{"row": {"model": "random:tiny-llama", "work')  # a kill mid-write
    second = kvbench("run", "--model", "random:tiny-llama", "--workload", "smoke", "--strategies", "full",
                     "--repeats", "1", "--out", str(out), "--resume")
    assert second.returncode == 0, second.stderr[-1500:]
    assert "cut off mid-write" in second.stderr
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["strategy"] for r in rows) == ["full", "naive"] and {r["status"] for r in rows} == {"ok"}
    third = kvbench("run", "--model", "random:tiny-llama", "--workload", "smoke", "--strategies", "full",
                    "--repeats", "1", "--out", str(out), "--resume")
    assert "2 of 2 cells already finished" in third.stderr
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2


def test_list_shows_strategies_parameters_and_workloads():
    done = kvbench("list")
    assert done.returncode == 0
    for word in ("naive", "full", "hf-generate", "step", "chat-short", "long-context", "smoke", "random:<"):
        assert word in done.stdout


def test_version_list_for_a_model_and_json(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("kvbench ")
    assert main(["list", "--model", "random:tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert "strategies on random:tiny-llama:" in out and re.search(r"\n  full +yes\n", out)
    assert main(["list", "--model", "random:tiny-llama", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {s["name"]: s for s in data["strategies"]}
    assert by_name["full"]["supports_model"] is True and by_name["full"]["unsupported_reason"] is None
    assert {"naive", "continuous", "quant-int4"} <= set(by_name) and data["model"] == "random:tiny-llama"
    assert "random:in=N,out=N,n=N[,prefix=N]" in data["workload_specs"]
    assert main(["list", "--model", "random:nope"]) == 2
    assert "unknown random shape 'nope'" in capsys.readouterr().err


def test_a_cache_that_cannot_serve_a_model_says_why(capsys):
    assert main(["list", "--model", "random:tiny-llama", "--json"]) == 0
    by_name = {s["name"]: s for s in json.loads(capsys.readouterr().out)["strategies"]}
    # every strategy is judged by its own supports(): the answer is a yes or a reason, never missing
    assert all(s["supports_model"] is (s["unsupported_reason"] is None) for s in by_name.values())


class FakeExecutor:
    """Rows made up in-process (no model): what resume does with them is the runner's business alone."""

    name = "local"

    def __init__(self):
        self.ran = []

    def run(self, cells, timeout_s, on_start):
        for cell in cells:
            self.ran.append(cell.key)
            row = {**{k: getattr(cell, k) for k in ("model", "workload", "strategy", "seed", "dtype", "device")},
                   "params": "", "sampling": "greedy", "weights": "stock", "threads": 2, "status": "ok", "error": "",
                   "tokens_per_s": 10.0, "repeats": 1}
            yield cell, {"row": row, "spread": {}}


def test_resume_after_a_settings_change_runs_the_new_cells_only(tmp_path):
    from bench.config import from_sources
    from bench.grid import build_cells
    from bench.runner import run_grid

    def run(**options):
        s = from_sources({"model": "random:tiny-llama", "workload": "smoke", "strategies": "full", **options})
        cells = build_cells(s, check_context=False)
        for c in cells:
            c.out_dir = str(tmp_path)
        executor = FakeExecutor()
        rows = run_grid(cells, tmp_path, {}, resume=s.resume, executor=executor)
        return executor.ran, rows

    ran, _ = run()
    assert ran == ["random:tiny-llama|smoke|naive|", "random:tiny-llama|smoke|full|"]
    ran, rows = run(dtype="float32,bfloat16", resume=True)  # the float32 cells are done; bfloat16 are new
    assert ran == ["random:tiny-llama|smoke|naive||dtype=bfloat16", "random:tiny-llama|smoke|full||dtype=bfloat16"]
    assert len(rows) == 4
    ran, _ = run(dtype="bfloat16", seed="1", resume=True)
    assert ran == ["random:tiny-llama|smoke|naive||dtype=bfloat16|seed=1",
                   "random:tiny-llama|smoke|full||dtype=bfloat16|seed=1"]
    ran, rows = run(dtype="bfloat16,float32", resume=True)
    assert ran == [] and len(rows) == 6
    speedups = {r["cell_key"]: r.get("speedup_vs_naive") for r in rows}
    assert speedups["random:tiny-llama|smoke|full||dtype=bfloat16"] == 1.0  # over its own dtype's naive


def test_export_vllm_writes_one_result_per_serving_row(tmp_path, capsys):
    from bench.env import environment
    from bench.results.rows import write_run

    serving = {"model": "m", "workload": "mixed-chat", "strategy": "continuous", "params": "", "status": "ok",
               "request_rate": math.inf, "burstiness": 1.0, "max_concurrency": 4, "num_requests": 8,
               "duration_s": 2.0, "prompt_tokens": 400, "generated_tokens": 100, "request_throughput_rps": 4.0,
               "goodput_rps": 3.5, "output_tokens_per_s": 50.0, "total_tokens_per_s": 250.0, "ttft_mean_ms": 110.0,
               "ttft_p50_ms": 100.0, "ttft_p99_ms": 300.0, "tpot_p50_ms": 20.0, "itl_p99_ms": 40.0,
               "e2e_p50_ms": 900.0, "e2e_p90_ms": float("nan"),
               "cell_key": "m|mixed-chat|continuous||max_concurrency=4"}
    prompt_row = {"model": "m", "workload": "smoke", "strategy": "full", "params": "", "status": "ok"}
    write_run(tmp_path, [{"row": serving}, {"row": prompt_row}], environment(), {})
    assert main(["export", "--format", "vllm", str(tmp_path)]) == 0
    paths = capsys.readouterr().out.split()
    assert len(paths) == 1
    result = json.loads(Path(paths[0]).read_text())
    assert result["median_ttft_ms"] == 100.0 and result["mean_ttft_ms"] == 110.0 and result["p99_ttft_ms"] == 300.0
    assert result["median_tpot_ms"] == 20.0 and result["p99_itl_ms"] == 40.0 and result["median_e2el_ms"] == 900.0
    assert "p90_e2el_ms" not in result  # a nan figure is left out, never written as NaN
    assert result["request_rate"] == "inf" and result["max_concurrency"] == 4 and result["completed"] == 8
    assert result["output_throughput"] == 50.0 and result["request_goodput"] == 3.5
    assert result["total_input_tokens"] == 400 and result["total_output_tokens"] == 100
    assert main(["export", "--format", "csv", str(tmp_path)]) == 2
    assert "unknown --format 'csv'; allowed: vllm" in capsys.readouterr().err


def example_runs() -> list[list[str]]:
    """`kvbench run` lines of the help's examples, as argument lists (comments dropped)."""
    import shlex

    from bench.commands.run import EXAMPLES

    lines = [line.split("#")[0].strip() for line in EXAMPLES.splitlines()]
    return [shlex.split(line)[2:] for line in lines if line.startswith("kvbench run")]


def tiny(args: list[str], out: Path, prompts: Path) -> list[str]:
    """An example made cheap: a random model, one repeat, few requests; its own flags otherwise."""
    args = [str(prompts) if a == "my-requests.jsonl" else a for a in args]
    if "--out" in args:
        args[args.index("--out") + 1] = str(out)
    else:
        args += ["--out", str(out)]
    model = [] if "--model" in args else ["--model", "random:tiny-llama"]
    return [*args, *model, "--repeats", "1", "--naive-repeats", "1", "--no-quality", "--num-requests", "2",
            "--no-history", "--param", "speculative.draft=layers:1"]


def test_every_help_example_makes_a_valid_grid(tmp_path):
    from bench.cli import build_parser
    from bench.commands.run import settings_of
    from bench.grid import build_cells

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Say hi.", "max_tokens": 2}\n')
    examples = example_runs()
    assert len(examples) >= 8
    for args in examples:
        argv = ["run", *[a for a in tiny(args, tmp_path, prompts) if a != "--resume"]]
        cells = build_cells(settings_of(build_parser().parse_args(argv)), check_context=False)
        assert cells, argv


@pytest.mark.long
def test_every_help_example_runs_on_a_random_model(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Say hi.", "max_tokens": 2}\n{"prompt": "Name a color.", "max_tokens": 3}\n')
    first = None
    for i, args in enumerate(example_runs()):
        out = first if "--resume" in args else tmp_path / f"run{i}"
        argv = tiny(args, out, prompts)
        if "--model" in args:  # the example's own model may be slow: a random tiny one instead
            argv[argv.index("--model") + 1] = "random:tiny-llama"
        if "--workload" not in args and "--config" not in args and "--prompts" not in args:
            argv += ["--workload", "smoke"]  # the default suite's workloads are minutes long even on a tiny model
        assert main(["run", *argv]) == 0, argv
        first = first or out
    assert main(["list", "--model", "random:tiny-llama", "--json"]) == 0
    assert main(["report", str(first)]) == 0
    assert main(["compare", str(first), str(first)]) in (0, 1)
    served = next(p for p in tmp_path.glob("run*") if "request_throughput_rps" in (p / "results.json").read_text())
    assert main(["export", "--format", "vllm", str(served)]) == 0


@pytest.mark.long
@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parent.parent / "bench" / "examples")
                                           .glob("*.toml")), ids=lambda p: p.stem)
def test_each_example_config_runs_on_a_random_model(example, tmp_path):
    argv = ["run", "--config", str(example), "--model", "random:smollm2-135m" if example.stem == "eviction" else
            "random:tiny-llama", "--repeats", "1", "--no-quality", "--num-requests", "2", "--out", str(tmp_path),
            "--no-history"]
    if example.stem == "speculative":
        argv += ["--param", "speculative.draft=layers:1", "--param", "speculative.k=2,4"]
    assert main(argv) == 0
