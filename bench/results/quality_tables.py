"""The report's long-context quality tables (issue #16): retrieval per strategy and haystack length, the most
compressed setting per strategy family that keeps 95% of full's retrieval, Δppl with its bootstrap interval, and
output lengths before EOS. No matplotlib here: report.md renders these without importing it."""

from __future__ import annotations

import math
import re
from typing import Any

from bench.results.rows import num

KEEP = 0.95  # a compressed cache "keeps" retrieval when it scores >= 95% of full's
CASE = re.compile(r"^retrieval_hit@(\d+):(\d+)$")


def groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["model"], r["workload"]), []).append(r)
    return out


def lengths_of(group: list[dict[str, Any]]) -> list[int]:
    return sorted({int(m.group(1)) for r in group for k in r if (m := CASE.match(k))})


def _fmt(v: Any, spec: str) -> str:
    f = num(v)
    return "–" if f is None else spec.format(f)


def keeps(row: dict[str, Any], full: dict[str, Any], suffix: str) -> tuple[bool, bool]:
    """(keeps accuracy, keeps answer log-prob) at ``suffix`` ('' or '@1024'): accuracy >= 95% of full's (full at
    0 counts as kept only by a 0 too), answer probability >= 95% of full's (log-prob within ln 0.95)."""
    acc, ref_acc = num(row.get(f"retrieval_acc{suffix}")), num(full.get(f"retrieval_acc{suffix}"))
    lp, ref_lp = num(row.get(f"answer_logprob{suffix}")), num(full.get(f"answer_logprob{suffix}"))
    by_acc = acc is not None and ref_acc is not None and acc >= KEEP * ref_acc
    by_lp = lp is not None and ref_lp is not None and lp >= ref_lp + math.log(KEEP)
    return by_acc, by_lp


def smallest_budget(group: list[dict[str, Any]]) -> list[str]:
    """Per lossy strategy family and haystack length: the most compressed row that keeps 95% of full's retrieval."""
    full = next((r for r in group if r["strategy"] == "full" and "retrieval_acc" in r), None)
    lossy = [r for r in group if not r.get("lossless") and "retrieval_acc" in r and num(r.get("compression_ratio"))]
    if full is None or not lossy:
        return []
    lengths = lengths_of(group)
    head = "| strategy | " + " | ".join(f"{n} tokens: by accuracy / by log-prob" for n in lengths) + " |"
    out = [f"Most compressed setting keeping ≥ {KEEP:.0%} of `full`'s retrieval (accuracy; answer probability):", "",
           head, "|" + "---|" * (len(lengths) + 1)]
    for family in sorted({r["strategy"] for r in lossy}):
        rows = sorted((r for r in lossy if r["strategy"] == family), key=lambda r: -num(r["compression_ratio"]))
        # When none keeps it, say which settings were tried: the answer is "a budget above these".
        tried = "none of " + ", ".join(r.get("params") or "default" for r in rows) + " kept it"
        cells = []
        for n in lengths:
            picks = []
            for which in (0, 1):
                best = next((r for r in rows if keeps(r, full, f"@{n}")[which]), None)
                picks.append(f"{best.get('params') or 'default'} ({num(best['compression_ratio']):.1f}×)"
                             if best else tried)
            cells.append(" / ".join(picks))
        out.append(f"| {family} | " + " | ".join(cells) + " |")
    return out + [""]


def retrieval_block(group: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in group if "retrieval_acc" in r]
    if not rows:
        return []
    lengths = lengths_of(rows)
    head = ["strategy", "params", "compression ×", "cases", "accuracy", "answer log-prob"]
    head += [f"acc @{n}" for n in lengths] + [f"log-prob @{n}" for n in lengths]
    out = ["Retrieval through each strategy's own cache (exact match of the generated answer; teacher-forced "
           "log-prob of the correct one, nats):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["strategy"], r.get("params") or "", _fmt(r.get("compression_ratio"), "{:.2f}"),
                 str(r.get("retrieval_cases", "")), _fmt(r["retrieval_acc"], "{:.2f}"),
                 _fmt(r.get("answer_logprob"), "{:.3f}")]
        cells += [_fmt(r.get(f"retrieval_acc@{n}"), "{:.2f}") for n in lengths]
        cells += [_fmt(r.get(f"answer_logprob@{n}"), "{:.3f}") for n in lengths]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""] + smallest_budget(group)


def ppl_ci_block(group: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in group if num(r.get("ppl_delta_ci_low")) is not None and r["strategy"] != "naive"]
    if not rows:
        return []
    out = ["Δ perplexity vs the reference with its 95% paired block-bootstrap interval (n.s.: the interval holds 0):",
           "", "| strategy | params | scored tokens | Δppl % | 95% CI | significant |", "|---|---|---|---|---|---|"]
    for r in rows:
        low, high = num(r["ppl_delta_ci_low"]), num(r.get("ppl_delta_ci_high"))
        sig = "n.s." if high is None or low <= 0.0 <= high else "yes"
        out.append(f"| {r['strategy']} | {r.get('params') or ''} | {r.get('ppl_tokens', '–')} | "
                   f"{_fmt(r.get('ppl_delta_pct'), '{:+.2f}')} | [{_fmt(r['ppl_delta_ci_low'], '{:+.2f}')}, "
                   f"{_fmt(r.get('ppl_delta_ci_high'), '{:+.2f}')}] | {sig} |")
    return out + [""]


def length_block(group: list[dict[str, Any]]) -> list[str]:
    """The EOS-allowed pass (bench/measure/output_length.py): the reference's lengths, then each lossy row's."""
    rows = [r for r in group if num(r.get("tokens_before_eos")) is not None]
    if not any(num(r.get("output_length_ratio")) is not None for r in rows):
        return []
    out = ["Output length before EOS, EOS allowed (censored at the workload's max new tokens), vs the reference's on "
           "the same prompts:", "", "| strategy | params | tokens before EOS | EOS rate | × reference |",
           "|---|---|---|---|---|"]
    out += [f"| {r['strategy']} | {r.get('params') or ''} | {_fmt(r.get('tokens_before_eos'), '{:.1f}')} | "
            f"{_fmt(r.get('eos_rate'), '{:.2f}')} | "
            f"{_fmt(r.get('output_length_ratio'), '{:.3f}') if 'output_length_ratio' in r else 'reference'} |"
            for r in rows]
    return out + [""]


def quality_sections(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown for report.md: per model and workload, whichever of the four blocks its rows have."""
    out: list[str] = []
    for (model, workload), group in groups([r for r in rows if r.get("status") == "ok"]).items():
        body = retrieval_block(group) + ppl_ci_block(group) + length_block(group)
        if body:
            out += [f"## Long-context quality · {model} · {workload}", ""] + body
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both compression (higher) and quality (higher), by compression."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)
