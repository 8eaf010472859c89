"""The report's figures (matplotlib, Agg): each function takes results.json's data and writes PNGs, or nothing
when the run has nothing for it to show. Returns [(title, file name)] for report.md to embed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.results.rows import num, row_key  # noqa: E402,F401 (num: used here and by quality_plots)

Figure = tuple[str, str]




def label(row: dict[str, Any]) -> str:
    return f"{row['strategy']} {row.get('params') or ''}".strip()


def ok_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data["rows"] if r.get("status") == "ok"]


def colours(names: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(sorted(set(names)))}


def save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def pareto(data: dict[str, Any], out_dir: Path) -> list[Figure]:
    """tokens/s against Δ perplexity, point area ∝ cache bytes; the frontier joins the points nothing beats."""
    rows = [r for r in ok_rows(data) if num(r.get("tokens_per_s")) and num(r.get("ppl_delta_pct")) is not None]
    figures = []
    for (model, workload), group in _groups(rows).items():
        fig, ax = plt.subplots(figsize=(7, 4.8))
        biggest = max((num(r.get("cache_bytes")) or 0 for r in group), default=0) or 1
        colour = colours([label(r) for r in group])
        for r in group:
            held = num(r.get("cache_bytes"))
            size = 40 + 800 * (held or 0) / biggest
            ax.scatter(r["tokens_per_s"], r["ppl_delta_pct"], s=size, color=colour[label(r)], alpha=0.6,
                       edgecolors="black", linestyle="-" if held is not None else ":",
                       label=f"{label(r)} ({held / 2**20:.2f} MiB)" if held is not None else f"{label(r)} (bytes n/a)")
            ax.annotate(label(r), (r["tokens_per_s"], r["ppl_delta_pct"]), fontsize=8, xytext=(6, 6),
                        textcoords="offset points")
        front = _frontier([(r["tokens_per_s"], r["ppl_delta_pct"]) for r in group])
        ax.plot(*zip(*front), color="grey", linestyle="--", linewidth=1, marker="x", label="Pareto frontier")
        low, high = ax.get_ylim()
        if high - low < 0.2:  # all within float noise of naive: show ±0.5 pp rather than magnify 1e-5 differences
            ax.set_ylim(-0.5, 0.5)
        ax.set_xlabel("tokens/s (higher is better)")
        ax.set_ylabel("perplexity Δ vs naive, % (lower is better)")
        ax.set_title(f"{model} · {workload}: speed vs quality (area ∝ cache bytes)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", markerscale=0.4)
        figures.append((f"Speed vs quality vs memory — {model} · {workload}",
                        save(fig, out_dir, f"pareto-{_slug(model, workload)}.png")))
    return figures


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (faster and lower Δppl), by speed."""
    best, front = math.inf, []
    for x, y in sorted(points, key=lambda p: (-p[0], p[1])):
        if y < best:
            best = y
            front.append((x, y))
    return sorted(front)


def context_scaling(data: dict[str, Any], out_dir: Path) -> list[Figure]:
    """tokens/s and cache bytes against the longest request's length, one line per strategy, per model."""
    figures = []
    for model in dict.fromkeys(r["model"] for r in ok_rows(data)):
        rows = [r for r in ok_rows(data) if r["model"] == model]
        length = {}  # workload -> tokens the cache holds at the end of the longest request (prompt + new - 1)
        for r in rows:
            held, per_token = num(r.get("cache_bytes")), num(r.get("cache_bytes_per_token"))
            if held and per_token:
                length[r["workload"]] = round(held / per_token)
        rows = [r for r in rows if r["workload"] in length]
        if len(set(length.values())) < 2:
            continue  # one context length: nothing to plot against
        fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
        colour = colours([label(r) for r in rows])
        for name in sorted(colour):
            pts = sorted(((length[r["workload"]], r) for r in rows if label(r) == name), key=lambda p: p[0])
            xs = [x for x, _ in pts]
            speed.plot(xs, [num(r.get("tokens_per_s")) for _, r in pts], marker="o", color=colour[name], label=name)
            mib = [(x, num(r.get("cache_bytes"))) for x, r in pts if num(r.get("cache_bytes")) is not None]
            if mib:
                memory.plot([x for x, _ in mib], [b / 2**20 for _, b in mib], marker="o", color=colour[name],
                            label=name)
        for w, x in length.items():
            speed.annotate(w, (x, 0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90, xytext=(2, 4),
                           textcoords="offset points", color="grey")
        speed.set(xlabel="context tokens (longest request)", ylabel="tokens/s", title="throughput vs context")
        memory.set(xlabel="context tokens (longest request)", ylabel="cache MiB held at the end",
                   title="cache bytes vs context")
        for ax in (speed, memory):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{model}: workloads by context length", fontsize=10)
        figures.append((f"Throughput and cache bytes against context length — {model}",
                        save(fig, out_dir, f"context-{_slug(model)}.png")))
    return figures


def latency_distributions(data: dict[str, Any], out_dir: Path) -> list[Figure]:
    """Box plots of TTFT (per request, all repeats) and inter-token gaps per strategy, from results.json samples."""
    samples, figures = data.get("samples", {}), []
    for (model, workload), group in _groups(ok_rows(data)).items():
        have = [(label(r), samples.get(row_key(r), {})) for r in group]
        have = [(n, s) for n, s in have if s.get("ttft_ms") or s.get("itl_ms")]
        if not have:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, key, title in ((axes[0], "ttft_ms", "time to first token"), (axes[1], "itl_ms", "inter-token gap")):
            series = [(n, s.get(key) or []) for n, s in have if s.get(key)]
            if not series:
                ax.set_visible(False)
                continue
            ax.boxplot([v for _, v in series], showfliers=True, flierprops={"markersize": 2})
            ax.set_xticks(range(1, len(series) + 1), [n for n, _ in series], rotation=20, ha="right", fontsize=8)
            values = [x for _, v in series for x in v if x > 0]
            if values and max(values) / min(values) > 30:
                ax.set_yscale("log")
            ax.set(ylabel="ms", title=f"{title} (n per strategy: {', '.join(str(len(v)) for _, v in series)})")
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle(f"{model} · {workload}: latency distributions over all repeats", fontsize=10)
        figures.append((f"TTFT and inter-token latency — {model} · {workload}",
                        save(fig, out_dir, f"latency-{_slug(model, workload)}.png")))
    return figures


# Rate sweeps (latency and goodput against request rate) are drawn by rate_plots.py, beside its sustainable rate.
PLOTS = (pareto, context_scaling, latency_distributions)


def make_plots(data: dict[str, Any], out_dir: Path) -> list[Figure]:
    """Every figure the run has data for, as PNGs in ``out_dir``."""
    return [f for plot in PLOTS for f in plot(data, out_dir)]


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["model"], r["workload"]), []).append(r)
    return out


def _slug(*parts: str) -> str:
    return "-".join("".join(c if c.isalnum() or c in "-." else "_" for c in p) for p in parts)
