"""Rate sweeps of request workloads: latency percentiles and goodput against the offered request rate, and the
highest rate that still meets the run's SLO (the "max sustainable rate" of GuideLLM and vLLM's SLA sweep).

A line is one strategy with its parameters, burstiness and concurrency limit; it is a sweep when it has rows at two
or more request rates. A rate meets the SLO when every target the row's ``slo`` names holds at p99 (``ttft_ms`` ->
``ttft_p99_ms``, ``tpot_ms`` -> ``tpot_p99_ms``, ``e2e_ms`` -> ``e2e_p99_ms``), as vLLM's SLA sweep states its
limits as percentiles. The sustainable rate is the highest swept rate such that it and every lower one meet the SLO:
a pass above a failing rate is noise, not capacity. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# SLO target -> the p99 column it bounds; other targets in a row's slo string are named as not checked.
SLO_COLUMNS = {"ttft_ms": "ttft_p99_ms", "tpot_ms": "tpot_p99_ms", "e2e_ms": "e2e_p99_ms", "e2el_ms": "e2e_p99_ms"}
LATENCY_KINDS = ("ttft", "tpot", "itl")


def rate(row: dict[str, Any]) -> float | None:
    """The row's offered request rate (inf: every request at t=0), or None when it has none."""
    try:
        value = float(row.get("request_rate"))
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def line_label(row: dict[str, Any]) -> str:
    """A strategy's line across rates: its label without a rate parameter, plus burstiness and concurrency when set."""
    params = ";".join(p for p in str(row.get("params") or "").split(";") if p and "rate" not in p)
    parts = [row["strategy"], params]
    if row.get("max_concurrency") not in (None, "", 0):
        parts.append(f"concurrency={row['max_concurrency']:g}" if isinstance(row["max_concurrency"], float)
                     else f"concurrency={row['max_concurrency']}")
    if row.get("burstiness") not in (None, "", 1, 1.0):
        parts.append(f"burstiness={row['burstiness']}")
    return " ".join(p for p in parts if p)


def sweeps(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    """(model, workload) -> line label -> its ok rows sorted by rate, for lines with two or more rates."""
    out: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        if r.get("status") == "ok" and rate(r) is not None:
            out.setdefault((r["model"], r["workload"]), {}).setdefault(line_label(r), []).append(r)
    for lines in out.values():
        for name in list(lines):
            lines[name].sort(key=rate)
            if len({rate(r) for r in lines[name]}) < 2:
                del lines[name]
    return {k: v for k, v in out.items() if v}


def parse_slo(text: str) -> dict[str, float]:
    """``ttft_ms=2000,tpot_ms=150`` -> {"ttft_ms": 2000.0, ...}; infinite targets bound nothing and are left out."""
    targets = {}
    for item in filter(None, (s.strip() for s in str(text or "").split(","))):
        key, _, value = item.partition("=")
        try:
            limit = float(value)
        except ValueError:
            continue
        if math.isfinite(limit):
            targets[key.strip()] = limit
    return targets


def meets_slo(row: dict[str, Any]) -> bool:
    """Every target of the row's SLO holds at p99; a target whose column is missing or nan does not hold."""
    for key, limit in parse_slo(row.get("slo", "")).items():
        column = SLO_COLUMNS.get(key)
        if column is None:
            continue
        try:
            value = float(row.get(column))
        except (TypeError, ValueError):
            return False
        if math.isnan(value) or value > limit:
            return False
    return True


def max_sustainable_rate(line: list[dict[str, Any]]) -> float | None:
    """The highest rate such that it and every lower rate of the line meet the SLO; None when the lowest fails."""
    best = None
    for r in sorted(line, key=rate):
        if not meets_slo(r):
            break
        best = rate(r)
    return best


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "none"
    return "inf" if math.isinf(value) else f"{value:g}"


def _slo(lines: dict[str, list[dict[str, Any]]]) -> str:
    return next((str(r["slo"]) for rows in lines.values() for r in rows if r.get("slo")), "")


def sustainable_rates(lines: dict[str, list[dict[str, Any]]]) -> str:
    """"`continuous` 4 req/s; `sequential` 1 req/s": each line's max sustainable rate, highest first."""
    named = {name: max_sustainable_rate(rows) for name, rows in lines.items()}
    ranked = sorted(named.items(), key=lambda kv: -math.inf if kv[1] is None else kv[1], reverse=True)
    return "; ".join(f"`{name}` {fmt_rate(value)} req/s" if value is not None
                     else f"`{name}` none (fails at its lowest rate)" for name, value in ranked)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """For the report's first screen: one line per swept request workload naming each line's sustainable rate."""
    return [f"- Max sustainable rate on {model} · {workload} (SLO {_slo(lines) or 'none'}, p99): "
            f"{sustainable_rates(lines)}" for (model, workload), lines in sweeps(rows).items()]


def sweep_block(lines: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown: the sustainable rate per line named in a sentence, then each line's figures at every rate."""
    slo = _slo(lines)
    unchecked = sorted(k for k in parse_slo(slo) if k not in SLO_COLUMNS)
    out = [f"**Max sustainable rate** under SLO {slo or '(none: every rate meets it)'} (the highest swept rate at "
           f"which it and every lower rate keep each target at p99): {sustainable_rates(lines)}.", ""]
    if unchecked:
        out += [f"SLO targets not checked (no p99 column): {', '.join(unchecked)}.", ""]
    out += ["| line | rate req/s | meets SLO | goodput req/s | out tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | "
            "ITL p50 / p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for name, rows in lines.items():
        for r in rows:
            out.append(f"| {name} | {fmt_rate(rate(r))} | {'yes' if meets_slo(r) else 'no'} | "
                       f"{_f(r.get('goodput_rps'), '{:.2f}')} | {_f(r.get('output_tokens_per_s'), '{:.1f}')} | "
                       + " | ".join(f"{_f(r.get(f'{k}_p50_ms'), '{:.0f}')} / {_f(r.get(f'{k}_p99_ms'), '{:.0f}')}"
                                    for k in LATENCY_KINDS) + " |")
    return out + [""]


def _f(value: Any, spec: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(v) else spec.format(v)


def rate_figures(data: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    """Per (model, workload) with a sweep: TTFT, TPOT, ITL (p50 solid, p99 dashed) and goodput against rate, one
    colour per line; the rate ``inf`` is drawn one step right of the highest finite rate and labelled so."""
    from bench.results.plots import _slug, colours, plt, save  # matplotlib only when drawing

    figures = []
    for (model, workload), lines in sweeps(data["rows"]).items():
        finite = sorted({rate(r) for rows in lines.values() for r in rows if math.isfinite(rate(r))})
        at_inf = 2 * finite[-1] if finite else 1.0
        x = {id(r): at_inf if math.isinf(rate(r)) else rate(r) for rows in lines.values() for r in rows}
        fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
        colour = colours(list(lines))
        for name, rows in lines.items():
            for ax, kind in zip(axes, LATENCY_KINDS):
                for q, style in (("p50", "-"), ("p99", "--")):
                    pts = _points(rows, f"{kind}_{q}_ms", x)
                    if pts:
                        ax.plot(*zip(*pts), linestyle=style, marker="o", color=colour[name], label=f"{name} {q}")
            pts = _points(rows, "goodput_rps", x)
            if pts:
                axes[3].plot(*zip(*pts), marker="o", color=colour[name], label=name)
            best = max_sustainable_rate(rows)
            if best is not None:
                axes[3].axvline(at_inf if math.isinf(best) else best, color=colour[name], linestyle=":", linewidth=1)
        targets = parse_slo(_slo(lines))
        for ax, kind in zip(axes, LATENCY_KINDS):
            if f"{kind}_ms" in targets:  # the p99 lines must stay under it
                ax.axhline(targets[f"{kind}_ms"], color="red", linestyle=":", linewidth=1, label="SLO target (p99)")
        ticks = finite + ([at_inf] if any(math.isinf(rate(r)) for rows in lines.values() for r in rows) else [])
        for ax, title in zip(axes, ("TTFT", "TPOT", "ITL", "goodput")):
            if ticks[0] > 0 and ticks[-1] / ticks[0] >= 4:  # 1, 2, 4, 8 ... spread evenly
                ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, ["inf" if t == at_inf else fmt_rate(t) for t in ticks])
            ax.minorticks_off()
            ax.set(xlabel="request rate (requests/s)", ylabel="requests/s" if title == "goodput" else f"{title} ms",
                   title=f"{title} p50 / p99" if title != "goodput" else "goodput (dotted: max sustainable rate)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # rows without goodput leave that panel empty
                ax.legend(fontsize=7)
        fig.suptitle(f"{model} · {workload}: latency and goodput against request rate (SLO {_slo(lines)}; solid p50, "
                     "dashed p99)", fontsize=10)
        figures.append((f"Latency and goodput against request rate — {model} · {workload}",
                        save(fig, out_dir, f"rate-{_slug(model, workload)}.png")))
    return figures


def _points(rows: list[dict[str, Any]], column: str, x: dict[int, float]) -> list[tuple[float, float]]:
    """(x position, value) of the rows whose ``column`` is a finite number."""
    out = []
    for r in rows:
        try:
            value = float(r.get(column))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out.append((x[id(r)], value))
    return out
