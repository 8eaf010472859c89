"""`kvbench compare`'s output: one table per cell (Markdown and rich), then a one-line summary."""

from __future__ import annotations

import math
from typing import Any

from bench.results.compare import CURRENT_FAILED, PASS, REGRESSION, TEXT_ENV_KEYS, Comparison, Line, number
from bench.results.metrics import Metric

HEADER = ("metric [unit]", "kind", "baseline", "current", "change", "× better", "verdict")
COLOURS = {"regression": "bold red", "changed": "bold red", "missing": "bold red", "baseline-only": "bold red",
           "improved": "green", "insufficient data": "yellow", "not comparable": "yellow", "within noise": "yellow",
           "same": "dim"}


def show(v: Any, m: Metric) -> str:
    f = number(v)
    if f is None:
        return "–" if v in (None, "") or isinstance(v, float) else str(v)
    if m.unit == "B" or (f.is_integer() and abs(f) >= 1000):
        return f"{int(f):,}"
    return str(int(f)) if f.is_integer() else f"{f:.4g}"


def cells_of(line: Line) -> list[str]:
    b, c = number(line.baseline), number(line.current)
    change = "–"
    if b is not None and c is not None:
        change = "=" if b == c else f"{(c - b) / abs(b):+.1%}" if b else f"{c - b:+.4g}"
    factor = "–" if math.isnan(line.factor) else f"{line.factor:.2f}"
    verdict = line.verdict + (f" ({line.note})" if line.note else "")
    name = f"{line.metric.name} [{line.metric.unit}]" if line.metric.unit else line.metric.name
    return [name, line.metric.kind, show(line.baseline, line.metric), show(line.current, line.metric),
            change, factor, verdict]


def summary(result: Comparison) -> str:
    verdicts = [line.verdict for c in result.cells for line in c.lines] + [c.side for c in result.cells
                                                                            if c.side != "both"]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts) if v not in ("same", "info"))
    code = result.exit_code()
    what = {PASS: "pass", REGRESSION: f"REGRESSION ({len(result.failures())} gating)",
            CURRENT_FAILED: f"the current run has failed cells: {', '.join(result.current_failed)}"}[code]
    return f"{len(result.cells)} cells; {counts or 'no changes'} → exit {code}: {what}"


def environment_note(result: Comparison) -> str:
    """One line: which environment keys differ (key: baseline → current) and what that makes not comparable."""
    unknown = ""
    if result.env_unknown:
        missing = ", ".join(f"{k} (no {side} value)" for k, side in result.env_unknown.items())
        unknown = f" Unknown, so not judged (a file from an older kvbench): {missing}."
    if not result.env_diff:
        return "Same environment: absolute figures are comparable." + unknown
    diff = "; ".join(f"{k}: {b} → {c}" for k, (b, c) in result.env_diff.items())
    what = "absolute and quality" if set(TEXT_ENV_KEYS) & set(result.env_diff) else "absolute"
    return f"Different environment — {diff}: {what} figures are marked not comparable." + unknown


def to_markdown(result: Comparison) -> str:
    out = ["# kvbench compare", "", environment_note(result), ""]
    for cell in result.cells:
        out += [f"## {cell.key} — {cell.side}" if cell.side != "both" else f"## {cell.key}", ""]
        if cell.note:
            out += [cell.note, ""]
        if cell.lines:
            out += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
            out += ["| " + " | ".join(x.replace("|", "\\|") for x in cells_of(line)) + " |" for line in cell.lines]
            out.append("")
    out += [f"**{summary(result)}**", ""]
    return "\n".join(out)


def print_rich(result: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if Console().is_terminal else 140)  # CI logs: wide enough for every column
    console.print(environment_note(result))
    for cell in result.cells:
        title = cell.key if cell.side == "both" else f"{cell.key} — [bold]{cell.side}[/]"
        if not cell.lines:
            console.print(f"{title}: {cell.note}")
            continue
        table = Table(*HEADER, title=title, caption=cell.note or None, title_justify="left")
        for line in cell.lines:
            table.add_row(*cells_of(line), style=COLOURS.get(line.verdict))
        console.print(table)
    console.print(summary(result), style="bold red" if result.exit_code() else "bold green")
