"""report.md from results.json: naive vs every strategy, per model and workload, with the environment."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.results.quality_tables import quality_sections
from bench.results.rate_plots import fmt_rate, rate, summary_lines, sweep_block, sweeps
from bench.results.rows import atomic_write, load_results, row_key
from bench.results.summary import summary_block

UNSTABLE_CV = 0.10  # a cell whose tokens/s varies this much across repeats is flagged

# (column, header, format) — headers carry units.
TABLE = [
    ("strategy", "strategy", "{}"), ("params", "params", "{}"), ("status", "status", "{}"),
    ("tokens_per_s", "tok/s", "{:.1f}"), ("speedup_vs_naive", "× naive", "{:.2f}"),
    ("roofline_pct", "roofline %", "{:.0f}"), ("ttft_ms", "TTFT ms", "{:.0f}"), ("tpot_ms", "TPOT ms", "{:.1f}"),
    ("itl_p99_ms", "ITL p99 ms", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MiB", "{:.0f}"), ("rss_over_model_mb", "RSS over model MiB", "{:.0f}"),
    ("cache_bytes", "cache MiB", "mib"), ("compression_ratio", "compression ×", "{:.2f}"),
    ("ppl", "ppl", "{:.3f}"), ("ppl_delta_pct", "Δppl %", "{:+.2f}"), ("kl_vs_naive", "KL nats", "{:.4f}"),
    ("greedy_agreement", "greedy agree", "{:.3f}"), ("first_divergence", "1st diverge", "{}"),
]
# Request workloads (bench/scenarios/requests.py): latencies from each request's arrival, goodput under the SLO.
SERVING_TABLE = [
    ("strategy", "strategy", "{}"), ("params", "params", "{}"), ("status", "status", "{}"),
    ("output_tokens_per_s", "out tok/s", "{:.1f}"), ("total_tokens_per_s", "total tok/s", "{:.1f}"),
    ("request_throughput_rps", "req/s", "{:.2f}"), ("goodput_rps", "goodput req/s", "{:.2f}"),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"), ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"),
    ("tpot_p50_ms", "TPOT p50 ms", "{:.1f}"), ("itl_p99_ms", "ITL p99 ms", "{:.1f}"),
    ("e2e_p50_ms", "E2E p50 ms", "{:.0f}"), ("peak_blocks_used", "peak blocks", "{}"),
    ("block_utilisation", "block util", "{:.2f}"), ("preemptions", "preempt", "{}"),
    ("prefix_hit_rate", "prefix hit", "{:.2f}"), ("cache_bytes_peak", "cache peak MiB", "mib"),
    ("greedy_agreement", "greedy agree", "{:.3f}"),
]

# GPU memory and energy, shown where a run measured them (CUDA columns; NVML or RAPL energy counters).
DEVICE_TABLE = [
    ("strategy", "strategy", "{}"), ("params", "params", "{}"),
    ("cuda_peak_allocated_mb", "CUDA peak alloc MiB", "{:.0f}"),
    ("cuda_peak_reserved_mb", "CUDA peak reserved MiB", "{:.0f}"), ("nvml_used_mb", "NVML used MiB", "{:.0f}"),
    ("energy_j", "energy J", "{:.3g}"), ("joules_per_token", "J/token", "{:.3g}"),
    ("energy_source", "energy from", "{}"),
]


def fmt(value: Any, spec: str) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if spec == "mib":
        return f"{value / 2**20:.2f}"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c), f).replace("|", "\\|") for c, _, f in columns) + " |")
    return "\n".join(lines)


ENV_LABELS = [("kvbench_version", "kvbench_version"), ("cpu", "cpu (model)"),
              ("cpu_capability", "cpu_capability (ISA level torch dispatches to)"), ("cores", "cores"),
              ("affinity_cores", "affinity_cores (this process may use)"), ("physical_cores", "physical_cores"),
              ("memory_gib", "memory GiB"), ("gpu", "gpu"), ("python", "python"), ("torch_version", "torch_version"),
              ("transformers_version", "transformers_version"), ("torch_threads", "torch_threads"),
              ("thread_env", "thread_env (OMP/MKL/... variables set)"), ("git_rev", "git_rev (revision)"),
              ("platform", "platform")]


def env_value(v: Any) -> str:
    if isinstance(v, dict):  # thread_env: only the variables that were set
        return ", ".join(f"{k}={x}" for k, x in v.items()) or "none set"
    return str(v)


def environment_block(envi: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """What the figures were measured on; the run's settings come from its first row."""
    if not envi:
        return []
    out = ["## Environment", "", "| what | value |", "|---|---|"]
    out += [f"| {name} | {env_value(envi[k])} |" for k, name in ENV_LABELS if k in envi]
    out += [f"| {k} | {env_value(v)} |" for k, v in envi.items() if k not in dict(ENV_LABELS)]
    if rows:
        r = rows[0]
        out += [f"| {k} | {r.get(k)} |" for k in ("dtype", "device", "weights", "threads", "seed", "sampling")]
    return out + [""]


def figures_block(figures: list[tuple[str, str]]) -> list[str]:
    if not figures:
        return []
    out = ["## Figures", ""]
    for title, name in figures:
        out += [f"### {title}", "", f"![{title}]({name})", ""]
    return out


def device_block(group: list[dict[str, Any]]) -> list[str]:
    """The GPU memory and energy table where any row has them; else why energy was not measured, once."""
    if any(k in r for r in group for k in ("cuda_peak_allocated_mb", "energy_j")):
        notes = sorted({r["energy_note"] for r in group if r.get("energy_note")})
        return ["Device memory and energy (medians over repeats; " + ("; ".join(notes) or "no energy note") + "):",
                "", markdown_table(group, DEVICE_TABLE), ""]
    notes = sorted({r["energy_note"] for r in group if r.get("energy_source") == "none" and r.get("energy_note")})
    return [f"Energy not measured: {'; '.join(notes)}.", ""] if notes else []


def swept_columns(columns: list[tuple[str, str, str]], group: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``columns`` with the run settings the group sweeps (rate, concurrency, dtype, weights...) after params, and the
    compile time where a decode step was compiled (apart from every timed column)."""
    varied = [(c, h, "{}") for c, h in (("request_rate", "rate req/s"), ("max_concurrency", "concurrency"),
                                        ("dtype", "dtype"), ("weights", "weights"), ("weight_quant", "weight quant"),
                                        ("attn", "attn"), ("compile", "compile"))
              if len({str(r.get(c)) for r in group}) > 1]
    varied += [("compile_s", "compile s", "{:.1f}")] if any("compile_s" in r for r in group) else []
    return columns[:2] + varied + columns[2:]


def render(data: dict[str, Any], figures: list[tuple[str, str]] | None = None) -> str:
    rows, spread, envi = data["rows"], data.get("spread", {}), data.get("environment", {})
    out = ["# kvbench report", ""]
    meta = data.get("meta", {})
    if meta:
        out += [f"Command: `{meta.get('command', '')}`  ", f"Run: {meta.get('run_id', '')}", ""]
    out += summary_block(rows, figures or [], summary_lines(rows))  # the first screen: what each family buys
    swept = sweeps(rows)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["workload"]), []).append(r)
    for (model, workload), group in groups.items():
        group.sort(key=lambda r: (r["strategy"] != "naive", r["strategy"], r.get("params", "")))
        out += [f"## {model} · {workload}", "", markdown_table(group, swept_columns(TABLE, group)), ""]
        if any("goodput_rps" in r for r in group):
            r0 = next(r for r in group if "goodput_rps" in r)
            rates = sorted({fmt_rate(rate(r)) for r in group if "goodput_rps" in r and rate(r) is not None}, key=float)
            counts = {r.get("num_requests") for r in group if "goodput_rps" in r and r.get("strategy") != "naive"}
            naive = next((r.get("num_requests") for r in group if r.get("strategy") == "naive"
                          and r.get("num_requests") not in counts), None)
            requests = "/".join(str(c) for c in sorted(counts, key=str)) + " requests" + (
                f" (naive: the first {naive})" if naive else "")
            out += [f"Serving ({requests}, rate {', '.join(rates)}/s, burstiness "
                    f"{r0.get('burstiness')}, SLO {r0.get('slo')}; latencies from each request's arrival):", "",
                    markdown_table(group, swept_columns(SERVING_TABLE, group)), ""]
            out += sweep_block(swept[(model, workload)]) if (model, workload) in swept else []
        out += device_block(group)
        unstable = [f"{r['strategy']} {r['params']}".strip() for r in group
                    if spread.get(row_key(r), {}).get("tokens_per_s", {}).get("cv", 0) >= UNSTABLE_CV]
        if unstable:
            out += [f"**unstable** (tokens/s CV ≥ {UNSTABLE_CV:.0%} across repeats): {', '.join(unstable)}", ""]
        failed = [r for r in group if r.get("status") != "ok"]
        for r in failed:
            out.append(f"- `{r['strategy']}` {r['status']}: {r.get('error', '')}")
        if failed:
            out.append("")
    out += ["Medians over repeats (spread in results.json). TTFT: start → first token; TPOT: (E2E − TTFT)/(n − 1); "
            "cache MiB: bytes the cache really holds at the end of the longest request; compression = full-cache "
            "closed form / held bytes; quality vs naive on the same prompts (agreement over naive's prompts), "
            "perplexity teacher-forced through each strategy's own cache.", ""]
    out += quality_sections(rows)  # retrieval, Δppl intervals, output lengths (bench/results/quality_tables.py)
    out += figures_block(figures or [])
    out += environment_block(envi, rows)
    return "\n".join(out)


def write_report(run_dir: Path, plots: bool = True) -> Path:
    """report.md (with its PNG figures beside it) and report.html, its twin for a browser."""
    data = load_results(run_dir)
    figures = []
    if plots:
        from bench.results.plots import make_plots
        from bench.results.quality_plots import quality_figures
        from bench.results.rate_plots import rate_figures

        figures = make_plots(data, run_dir) + rate_figures(data, run_dir) + quality_figures(data, run_dir)
    path = run_dir / "report.md"
    text = render(data, figures)
    atomic_write(path, text)
    atomic_write(run_dir / "report.html", to_html(text))
    return path


def to_html(markdown: str) -> str:
    from markdown_it import MarkdownIt  # rich's own dependency: no new package

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>kvbench report</title><style>{style}</style>" \
           f"</head><body>{body}</body></html>\n"
