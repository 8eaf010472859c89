"""The report's first screen: for each family of strategies, what it buys and costs against naive and against
``full`` (speed, TTFT/TPOT, KV bytes, peak memory, quality), one row per strategy, then the Pareto figure.

A strategy ran on several workloads; the summary shows it on the one that shows its family's effect, and says which:
- caches (exact, quantized, windowed/evicting) and the generate peers: the prompt workload with the largest full
  cache (the longest context, where bytes and eviction matter);
- speculative decoders and their peers: the prompt workload where it is fastest against ``full``;
- batching/scheduling engines and their peers: the request workload (at its highest swept rate).
Every ratio is against the naive (request workloads: sequential) or full row of the same model, workload and run
settings (bench/key.py: rate, burstiness, concurrency, requests, dtype, ...), so a sweep never divides by another
setting's row. The full tables follow the summary.
"""

from __future__ import annotations

import math
from typing import Any

from bench.key import settings_of

# Families in the order the summary lists them; a composition "a+b" belongs to the family of ``a``.
FAMILIES: list[tuple[str, tuple[str, ...]]] = [
    ("exact KV cache", ("full", "paged", "static", "prefix-cache")),
    ("quantized KV cache", ("quant-int8", "quant-int4", "quant-mixed")),
    ("windowed / evicting KV cache", ("sinks", "sliding-window", "chunk-summary", "snapkv", "h2o", "tova", "keynorm")),
    ("speculative decoding", ("speculative", "prompt-lookup", "lookahead")),
    ("batching and scheduling", ("sequential", "static-batch", "continuous")),
]
PEERS = "transformers peers"
# A peer is shown where the strategy it mirrors is shown.
PEER_OF = {"hf-generate": "full", "hf-static": "static", "hf-quantized": "quant-int4", "hf-assisted": "speculative",
           "hf-prompt-lookup": "prompt-lookup", "hf-batch": "static-batch", "hf-continuous": "continuous"}
SERVING_REFERENCE = "sequential"  # bench.cell's reference of request workloads (a higher layer: named here)
# A ratio within this of 1 is neither bought nor paid (run-to-run noise on a shared machine is ~5-20%).
SPEED_NOISE, LATENCY_NOISE, BYTES_NOISE, RSS_NOISE_MB, PPL_NOISE_PCT = 0.05, 0.10, 0.05, 20.0, 1.0


def family(strategy: str) -> str:
    head = strategy.split("+")[0]
    if head.startswith("hf-"):
        return PEERS
    return next((name for name, members in FAMILIES if head in members), "other")


def num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def is_request_row(row: dict[str, Any]) -> bool:
    """Only the serving scenario writes these (a run setting such as request_rate may one day be on every row)."""
    return "goodput_rps" in row or "slo" in row


def ratio(a: Any, b: Any) -> float | None:
    """a / b where both are positive figures; a zero or negative one (a clock that did not apply) says nothing."""
    a, b = num(a), num(b)
    return a / b if a is not None and b is not None and a > 0 and b > 0 else None


def _setting(row: dict[str, Any]) -> tuple:
    """What a row may be compared within: model, workload and every run setting of the cell key (bench/key.py)."""
    return (row["model"], row["workload"], *sorted(settings_of(row).items()))


def _kv_bytes(row: dict[str, Any]) -> float | None:
    """Bytes the cache held: at the end of the longest request (prompts) or its peak (requests). Zero is "not
    watched" (an engine whose pool the prompt path does not see), never a free cache: naive is not a line."""
    held = num(row.get("cache_bytes")) or num(row.get("cache_bytes_peak"))
    return held or None


def _ttft(row: dict[str, Any]) -> float | None:
    return num(row.get("ttft_p50_ms")) if is_request_row(row) else num(row.get("ttft_ms"))


def _label(row: dict[str, Any]) -> str:
    """``sinks window=32``: the params without their strategy prefix where the name already says it (a
    composition's params keep theirs: two parts may share a key)."""
    prefix = f"{row['strategy']}."
    params = ";".join(p.removeprefix(prefix) for p in str(row.get("params") or "").split(";") if p)
    return f"{row['strategy']} {params}".strip()


def compare_row(row: dict[str, Any], naive: dict[str, Any] | None, full: dict[str, Any] | None) -> dict[str, Any]:
    """One summary line: the row's figures and its ratios to naive and full (None where a term is missing)."""
    full = full or {}
    rss, full_rss = num(row.get("peak_rss_mb")), num(full.get("peak_rss_mb"))
    return {
        "strategy": _label(row), "family": family(row["strategy"]),
        "workload": row["workload"], "status": row.get("status"), "error": row.get("error", ""),
        "tokens_per_s": num(row.get("tokens_per_s")),
        "speed_vs_naive": ratio(row.get("tokens_per_s"), (naive or {}).get("tokens_per_s")),
        "speed_vs_full": ratio(row.get("tokens_per_s"), full.get("tokens_per_s")),
        "ttft_ms": _ttft(row), "ttft_vs_full": ratio(_ttft(row), _ttft(full)) if full else None,
        "tpot_ms": num(row.get("tpot_ms")), "tpot_vs_full": ratio(row.get("tpot_ms"), full.get("tpot_ms")),
        "kv_bytes": _kv_bytes(row), "kv_vs_full": ratio(_kv_bytes(row), _kv_bytes(full)) if full else None,
        "peak_rss_mb": rss, "rss_over_full_mb": rss - full_rss if rss is not None and full_rss is not None else None,
        "goodput_vs_full": ratio(row.get("goodput_rps"), full.get("goodput_rps")),
        "ppl_delta_pct": num(row.get("ppl_delta_pct")), "greedy_agreement": num(row.get("greedy_agreement")),
    }


def _showcase(strategy: str, rows: list[dict[str, Any]], full_of: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    """The row of ``strategy`` (all its rows are ``rows``) on the workload that shows its family's effect."""
    mirrored = PEER_OF.get(strategy.split("+")[0], strategy)
    kind = family(mirrored)
    requests = [r for r in rows if is_request_row(r)]
    prompts = [r for r in rows if not is_request_row(r)]
    if kind == "batching and scheduling" and requests or not prompts:
        # the highest rate that has a full row to compare with (else the highest)
        return max(requests or rows, key=lambda r: (_setting(r) in full_of, num(r.get("request_rate")) or 0.0))
    if kind == "speculative decoding":
        ok = [r for r in prompts if r.get("status") == "ok"] or prompts
        return max(ok, key=lambda r: compare_row(r, None, full_of.get(_setting(r)))["speed_vs_full"] or 0.0)
    return max(prompts, key=lambda r: _kv_bytes(full_of.get(_setting(r), {})) or 0.0)


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One comparison per strategy (with params) and model, ordered by family; naive is the baseline, not a line."""
    # request workloads' reference is sequential (naive does not run there): it stands in for naive
    naive_of = {_setting(r): r for r in rows if r["strategy"] == SERVING_REFERENCE and r.get("status") == "ok"}
    naive_of.update({_setting(r): r for r in rows if r["strategy"] == "naive" and r.get("status") == "ok"})
    full_of = {_setting(r): r for r in rows if r["strategy"] == "full" and not r.get("params")
               and r.get("status") == "ok"}
    by_strategy: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["strategy"] != "naive":
            by_strategy.setdefault((r["model"], r["strategy"], r.get("params") or ""), []).append(r)
    order = [name for name, _ in FAMILIES] + [PEERS, "other"]
    out = []
    for (model, strategy, _), group in by_strategy.items():
        shown = _showcase(strategy, group, full_of)
        line = compare_row(shown, naive_of.get(_setting(shown)), full_of.get(_setting(shown)))
        out.append({**line, "model": model})
    return sorted(out, key=lambda s: (s["model"], order.index(s["family"]), s["strategy"] != "full", s["strategy"]))


def buys_and_costs(s: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Against full: what the strategy gains and what it pays, leaving out differences within noise."""
    buys, costs = [], []

    def judge(value: float | None, noise: float, text: str, lower_is_better: bool) -> None:
        if value is None or abs(value - 1) <= noise:
            return
        (buys if (value < 1) == lower_is_better else costs).append(text.format(value))

    judge(s["speed_vs_full"], SPEED_NOISE, "{:.2f}× tok/s", False)
    judge(s["goodput_vs_full"], SPEED_NOISE, "{:.2f}× goodput", False)
    judge(s["ttft_vs_full"], LATENCY_NOISE, "{:.2f}× TTFT", True)
    judge(s["tpot_vs_full"], LATENCY_NOISE, "{:.2f}× TPOT", True)
    judge(s["kv_vs_full"], BYTES_NOISE, "{:.2f}× KV bytes", True)
    if s["rss_over_full_mb"] is not None and abs(s["rss_over_full_mb"]) > RSS_NOISE_MB:
        (buys if s["rss_over_full_mb"] < 0 else costs).append(f"{s['rss_over_full_mb']:+.0f} MiB peak RSS")
    if s["ppl_delta_pct"] is not None and abs(s["ppl_delta_pct"]) >= PPL_NOISE_PCT:
        costs.append(f"Δppl {s['ppl_delta_pct']:+.1f}%")
    if s["greedy_agreement"] is not None and s["greedy_agreement"] < 1.0:
        costs.append(f"greedy agreement {s['greedy_agreement']:.2f}")
    return buys, costs


def _x(value: float | None, spec: str = "{:.2f}×") -> str:
    return "–" if value is None else spec.format(value)


SUMMARY_HEADER = ("| family | strategy | shown on | × naive tok/s | × full tok/s | TTFT ms (× full) | TPOT ms (× full) "
                  "| KV MiB (× full) | peak RSS MiB (vs full) | Δppl % | greedy agree |")


def summary_table(lines: list[dict[str, Any]]) -> list[str]:
    out = [SUMMARY_HEADER, "|" + "---|" * SUMMARY_HEADER.count(" | ") + "---|"]
    for s in lines:
        if s["status"] != "ok":
            out.append(f"| {s['family']} | {s['strategy']} | {s['workload']} | **{s['status']}** "
                       + "| – " * 7 + "|")
            continue
        kv = "–" if s["kv_bytes"] is None else f"{s['kv_bytes'] / 2**20:.3g} ({_x(s['kv_vs_full'])})"
        rss = "–" if s["peak_rss_mb"] is None else (
            f"{s['peak_rss_mb']:.0f} ({_x(s['rss_over_full_mb'], '{:+.0f}')})")
        out.append(
            f"| {s['family']} | {s['strategy']} | {s['workload']} | {_x(s['speed_vs_naive'])} "
            f"| {_x(s['speed_vs_full'])} "
            f"| {_x(s['ttft_ms'], '{:.0f}')} ({_x(s['ttft_vs_full'])}) | {_x(s['tpot_ms'], '{:.1f}')} "
            f"({_x(s['tpot_vs_full'])}) | {kv} | {rss} | {_x(s['ppl_delta_pct'], '{:+.2f}')} "
            f"| {_x(s['greedy_agreement'], '{:.3f}')} |")
    return out


def verdicts(lines: list[dict[str, Any]]) -> list[str]:
    """One bullet per family: each member's gains and costs against full, in words."""
    out, families = [], list(dict.fromkeys(s["family"] for s in lines))
    for fam in families:
        parts = []
        for s in (s for s in lines if s["family"] == fam and not s["strategy"].startswith("full")):
            if s["status"] != "ok":
                parts.append(f"`{s['strategy']}` {s['status']} ({s['error'][:80]})")
                continue
            buys, costs = buys_and_costs(s)
            parts.append(f"`{s['strategy']}` buys {', '.join(buys) or 'nothing beyond noise'}; "
                         f"costs {', '.join(costs) or 'nothing beyond noise'} ({s['workload']})")
        if parts:
            out.append(f"- **{fam}** vs full: " + " · ".join(parts))
    return out


def summary_block(rows: list[dict[str, Any]], figures: list[tuple[str, str]], rate_lines: list[str]) -> list[str]:
    """The report's opening: the table, one verdict per family, the max sustainable rates, the Pareto figure."""
    lines = summary_rows(rows)
    if not lines:
        return []
    ok = sum(r.get("status") == "ok" for r in rows)
    out = ["## Summary", "",
           f"{len(rows)} cells, {ok} ok. Each strategy on the workload that shows its family's effect (caches: the "
           "longest context; speculation: where it is fastest; batching: the request workload); ratios against naive "
           "(request workloads: sequential, their reference) and `full` on the same workload and settings. Request "
           "workloads: TTFT is p50 from arrival, KV bytes the peak. Full tables below.", ""]
    out += summary_table(lines) + [""] + verdicts(lines) + [""]
    out += rate_lines + ([""] if rate_lines else [])
    full_lines = [s for s in lines if s["strategy"] == "full" and s["status"] == "ok"]
    for s in full_lines:
        pareto = next((name for title, name in figures if name.startswith("pareto-")
                       and title.endswith(f"{s['model']} · {s['workload']}")), None)
        if pareto:
            out += [f"![Speed vs quality vs memory — {s['model']} · {s['workload']}]({pareto})", ""]
    return out
