"""A run's settings: one dataclass built from a TOML file (``--config``) and the flags, flags overriding, every value
checked before any cell starts (bad input: ``ConfigError``, one line naming what is allowed).

``OPTIONS`` is the one table of run settings: the `run` subcommand's flags, the TOML keys and the Python API's
keyword arguments are all made from it, so the three cannot drift apart. List settings (``sweep``) are comma lists
on the command line and lists or comma strings in TOML; each value is one more row of the grid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

# The default suite (`make benchmark`, `kvbench run` without --strategies): naive against one representative of
# every family on a workload where each shows its effect (bench/workloads/requests.py "assistant").
DEFAULT_STRATEGIES = ("naive,full,paged,quant-int8,quant-int4,sinks,snapkv,speculative,prompt-lookup,continuous,"
                      "continuous+prefix-cache,hf-generate,hf-continuous")
DEFAULT_WORKLOADS = "assistant"
# Parameters the default suite gives its strategies (unless --param sets the same key): sinks' default window (256)
# outlasts the workload's ~200-token prompts and would evict nothing; an int8 copy is the cheapest real draft.
DEFAULT_PARAMS = ("sinks.window=32", "speculative.draft=int8")
WEIGHTS = ("packed", "stock", "auto")
WEIGHT_QUANTS = ("none", "int8", "int4")
ATTNS = ("sdpa", "eager")  # strategies/kernels/attention_impl.py
COMPILE_MODES = ("none", "default", "max-autotune", "reduce-overhead")  # strategies/kernels/compile_step.py
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
GOODPUT_KEYS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2el_ms"}


class ConfigError(ValueError):
    """Bad input: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Option:
    name: str  # the dataclass field and TOML key; the flag is --name with dashes
    kind: str  # str, int, float, bool, path, strs (comma list), floats, ints, items (repeatable flag)
    default: Any
    help: str
    metavar: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("config", "path", None, "TOML file holding any of these settings (keys as the flags, '-' or '_'); "
           "flags given as well override it", "FILE.toml"),
    Option("model", "strs", ["smollm2-135m"], "smollm2-135m (embedded), random:<shape>, a local HF directory or a "
           "hub id; comma list"),
    Option("workload", "workloads", DEFAULT_WORKLOADS.split(","), "comma list of workloads (allowed: see below)"),
    Option("prompts", "strs", [], "JSONL file(s) of your own requests, one {\"prompt\"|\"messages\", \"max_tokens\"} "
           "per line; run alone, or with --workload when given", "FILE.jsonl"),
    Option("strategies", "strs", DEFAULT_STRATEGIES.split(","), "comma list (allowed: see below); 'decoder+cache' "
           "composes (e.g. speculative+quant-int8)"),
    Option("param", "items", [], "set or sweep a strategy parameter (one row per value); repeatable (without "
           f"--strategies, the default suite adds {', '.join(DEFAULT_PARAMS)})",
           "STRATEGY.KEY=V1[,V2]"),
    Option("repeats", "int", 3, "timed repeats per cell (median reported), >= 1"),
    Option("naive_repeats", "int", 1, "timed repeats for naive (it is O(n²)), >= 1"),
    Option("sampling", "str", "", "sampling options (greedy when empty): temperature, top_k, top_p, min_p, "
           "repetition_penalty", "temperature=0.7,top_p=0.9"),
    Option("seed", "int", 0, "seed of the model's random weights, sampling and arrivals"),
    Option("dtype", "strs", ["float32"], "float32, bfloat16 or float16; comma list sweeps"),
    Option("device", "str", "cpu", "cpu, cuda, cuda:N or mps"),
    Option("weights", "strs", ["auto"], "auto: each cell times one decode step's linears stock and oneDNN-packed "
           "on the CPU at hand and keeps the faster (the row records both); packed: our strategies run fp32/bf16 "
           "CPU linears through oneDNN with weights reordered once (transformers peers always run stock); stock: "
           "every strategy runs the model as loaded; comma list sweeps"),
    Option("weight_quant", "strs", ["none"], "weight-only quantization of every linear (activations stay float): "
           "none, int8 (per channel) or int4 (per group of 64 or 32); comma list sweeps"),
    Option("attn", "strs", ["sdpa"], "attention implementation of the model and of our lean decode step: sdpa or "
           "eager; comma list sweeps"),
    Option("compile", "strs", ["none"], "torch.compile of the decode step over a fixed-capacity cache (step over "
           "full or static; other strategies are skipped): none, default, max-autotune or reduce-overhead (CUDA "
           "graphs, CUDA only); compile time is the compile_s column, never timed; comma list sweeps"),
    Option("threads", "int", 0, "torch threads per cell (0: torch's default)"),
    Option("out", "path", None, "run directory (default reports/<run-id>, linked as reports/latest)"),
    Option("resume", "bool", False, "run only the cells of --out not yet ok (a cell is its model, workload, "
           "strategy, params and every run setting)"),
    Option("cell_timeout", "float", None, "seconds before a cell is killed (none: no limit)"),
    Option("executor", "str", "local", "where cells run: spawned local processes, or Ray tasks (ADDRESS: auto, "
           "ray://HOST:PORT)", "local|ray[:ADDRESS]"),
    Option("cell_cpus", "float", 1.0, "Ray: CPUs each cell declares"),
    Option("cell_gpus", "float", 0.0, "Ray: GPUs each cell declares"),
    Option("cell_memory_mb", "int", 0, "Ray: memory each cell declares (0: none)"),
    Option("no_quality", "bool", False, "skip perplexity/KL scoring"),
    Option("request_rate", "floats", [math.inf], "request workloads: arrivals per second (inf: all at t=0), "
           "gamma-distributed gaps; comma list sweeps (one row per rate)", "R[,R...]"),
    Option("burstiness", "float", 1.0, "request workloads: gamma shape of the gaps (1.0 = Poisson; <1 burstier)"),
    Option("max_concurrency", "ints", [0], "request workloads: at most N requests in flight, latencies from when "
           "each is sent (0: no limit); comma list sweeps", "N[,N...]"),
    Option("slo", "str", "", "request workloads: latency targets for goodput (requests meeting all, per second); "
           "empty: ttft_ms=2000,tpot_ms=150", "ttft_ms=2000,tpot_ms=150[,e2el_ms=..]"),
    Option("goodput", "goodput", [], "the --slo targets as vLLM spells them (instead of --slo)",
           "ttft:MS tpot:MS e2el:MS"),
    Option("num_requests", "int", 0, "request workloads: serve only the first N requests (0: all)", "N"),
    Option("target", "str", "", "measure a running server instead of strategies: openai:http://HOST:PORT/v1 "
           "(request workloads; greedy agreement against local sequential on --model)", "openai:URL"),
    Option("target_model", "str", "", "the model name the target serves (default: the first of its /v1/models)"),
    Option("no_reference", "bool", False, "do not add naive (sequential on request workloads) when not listed"),
    Option("history", "path", None, "append one summary row per cell to this CSV (none: reports/history.csv when "
           "--out is under reports/)"),
    Option("no_history", "bool", False, "append nothing to the history CSV"),
)
BY_NAME = {o.name: o for o in OPTIONS}


@dataclass
class RunSettings:
    """Everything a `kvbench run` is given. Build it with ``from_sources``; ``validate`` before any cell starts."""

    config: Path | None = None
    model: list[str] = field(default_factory=lambda: list(BY_NAME["model"].default))
    workload: list[str] = field(default_factory=lambda: list(BY_NAME["workload"].default))
    prompts: list[str] = field(default_factory=list)
    strategies: list[str] = field(default_factory=lambda: list(BY_NAME["strategies"].default))
    param: list[str] = field(default_factory=list)
    repeats: int = 3
    naive_repeats: int = 1
    sampling: str = ""
    seed: int = 0
    dtype: list[str] = field(default_factory=lambda: ["float32"])
    device: str = "cpu"
    weights: list[str] = field(default_factory=lambda: ["auto"])
    weight_quant: list[str] = field(default_factory=lambda: ["none"])
    attn: list[str] = field(default_factory=lambda: ["sdpa"])
    compile: list[str] = field(default_factory=lambda: ["none"])
    threads: int = 0
    out: Path | None = None
    resume: bool = False
    cell_timeout: float | None = None
    executor: str = "local"
    cell_cpus: float = 1.0
    cell_gpus: float = 0.0
    cell_memory_mb: int = 0
    no_quality: bool = False
    request_rate: list[float] = field(default_factory=lambda: [math.inf])
    burstiness: float = 1.0
    max_concurrency: list[int] = field(default_factory=lambda: [0])
    slo: str = ""
    goodput: list[str] = field(default_factory=list)
    num_requests: int = 0
    target: str = ""
    target_model: str = ""
    no_reference: bool = False
    history: Path | None = None
    no_history: bool = False

    @property
    def workloads(self) -> list[str]:
        """The workload names, --prompts files included (as prompts:ABSOLUTE-PATH, so the key names the file)."""
        return self.workload + [f"prompts:{Path(p).expanduser().resolve()}" for p in self.prompts]

    @property
    def slo_text(self) -> str:
        return goodput_to_slo(self.goodput) if self.goodput else self.slo


assert [f.name for f in fields(RunSettings)] == [o.name for o in OPTIONS]  # one table, one dataclass


def convert(option: Option, value: Any, where: str) -> Any:
    """``value`` (a flag's string, or what TOML holds) as the option's type; ConfigError names what is allowed."""
    kind = option.kind
    try:
        if kind in ("strs", "workloads", "floats", "ints", "items", "goodput"):
            if isinstance(value, str):
                from bench.workloads.specs import split_workloads

                items = split_workloads(value) if kind == "workloads" else \
                    value.split() if kind == "goodput" else [value] if kind == "items" else \
                    [s.strip() for s in value.split(",") if s.strip()]
            elif isinstance(value, list):
                items = value
            else:
                items = [value]
            if kind == "floats":
                return [float(v) for v in items]
            if kind == "ints":
                return [_int(v) for v in items]
            return [str(v) for v in items]
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind == "int":
            return _int(value)
        if kind == "float":
            return None if value is None else float(value)
        if kind == "path":
            return None if value is None else Path(str(value))
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{where} {value!r} is not {_kind_words(kind)}") from None


def _int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError
    return int(v)


def _kind_words(kind: str) -> str:
    return {"int": "a whole number", "float": "a number", "bool": "true or false", "ints": "whole numbers",
            "floats": "numbers (or \"inf\")", "path": "a path"}.get(kind, "text")


def load_toml(path: Path) -> dict[str, Any]:
    """The settings a TOML file holds, converted; an unknown key names the allowed ones."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path} is not valid TOML: {e}") from None
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in BY_NAME or name == "config":
            allowed = ", ".join(o.name.replace("_", "-") for o in OPTIONS if o.name != "config")
            raise ConfigError(f"unknown key {key!r} in {path}; allowed: {allowed}")
        out[name] = convert(BY_NAME[name], value, f"{path}: {key} =")
    return out


def from_sources(flags: dict[str, Any] | None = None) -> RunSettings:
    """Defaults, then the TOML file named by ``flags['config']``, then every flag given (not None)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = [k for k in flags if k not in BY_NAME]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; allowed: {', '.join(BY_NAME)}")
    values: dict[str, Any] = {}
    if flags.get("config") is not None:
        values.update(load_toml(Path(flags["config"])))
    for name, value in flags.items():
        values[name] = convert(BY_NAME[name], value, f"--{name.replace('_', '-')}")
    if "strategies" not in values:
        given = {p.partition("=")[0].strip() for p in values.get("param", [])}
        values["param"] = [p for p in DEFAULT_PARAMS if p.partition("=")[0] not in given] + values.get("param", [])
    if values.get("prompts") and "workload" not in values:
        values["workload"] = []  # your own requests alone, unless workloads are named as well
    return RunSettings(**values)


def goodput_to_slo(items: list[str]) -> str:
    """vLLM's ``--goodput ttft:2000 tpot:150 e2el:5000`` as our ``--slo ttft_ms=2000,tpot_ms=150,e2el_ms=5000``."""
    out = []
    for item in items:
        key, colon, value = item.partition(":")
        if key not in GOODPUT_KEYS or not colon:
            raise ConfigError(f"bad --goodput item {item!r}; allowed: ttft:MS, tpot:MS, e2el:MS")
        out.append(f"{GOODPUT_KEYS[key]}={value}")
    return ",".join(out)
