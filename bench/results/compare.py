"""`kvbench compare BASELINE CURRENT`: every metric of every cell, judged by the rule of its kind
(bench/results/metrics.py).

Exit codes: 0 pass, 1 regression, 2 bad input, 3 the current run has failed cells. Nothing measured is never 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from math import comb
from pathlib import Path
from typing import Any

from scipy.stats import mannwhitneyu

from bench.key import SERVING, SETTINGS, canonical, cell_key, settings_of
from bench.results.metrics import (
    ABSOLUTE,
    CONFIG,
    EXACT,
    INFO,
    QUALITY,
    RATIO,
    UP,
    Metric,
    better_ratio,
    metric,
)
from bench.results.rows import ResultsError, load_results, row_key

# What makes absolute figures of two runs incomparable. cpu_capability: the same CPU model can run other kernels.
ENV_KEYS = ("cpu", "cpu_capability", "cores", "gpu", "python", "torch_version", "transformers_version")
# ... and quality figures too: the perplexity and long-context text is the installed Python's docstrings.
TEXT_ENV_KEYS = ("python",)
# Verdicts that fail the comparison; "insufficient data" joins them with --strict, absolute ones with --gate-absolute.
FAILING = {"regression", "changed", "missing", "baseline-only"}
PASS, REGRESSION, BAD_INPUT, CURRENT_FAILED = 0, 1, 2, 3
ORDER = {EXACT: 0, QUALITY: 1, RATIO: 2, ABSOLUTE: 3, INFO: 4}  # table rows: what gates first


@dataclass
class Options:
    quality_tol: float = 0.01
    ratio_tol: float = 0.10
    p_threshold: float = 0.002  # asv's defaults: p < 0.002 and a change of at least 1.1×
    min_factor: float = 1.1
    gate_absolute: bool = False
    strict: bool = False


@dataclass
class Line:
    """One metric of one cell."""

    metric: Metric
    baseline: Any
    current: Any
    verdict: str
    note: str = ""

    @property
    def factor(self) -> float:
        try:
            return better_ratio(self.metric, float(self.baseline), float(self.current))
        except (TypeError, ValueError):
            return float("nan")


@dataclass
class CellResult:
    key: str
    side: str  # "both", "baseline-only", "current-only"
    lines: list[Line] = field(default_factory=list)
    note: str = ""


@dataclass
class Comparison:
    cells: list[CellResult]
    env_diff: dict[str, tuple[Any, Any]]
    current_failed: list[str]
    options: Options
    env_unknown: dict[str, str] = field(default_factory=dict)  # key -> the side that does not record it

    def gating(self, line: Line) -> bool:
        if line.metric.kind == ABSOLUTE and not self.options.gate_absolute:
            return False
        return line.verdict in FAILING or (self.options.strict and line.verdict == "insufficient data")

    def failures(self) -> list[tuple[str, Line]]:
        out = [(c.key, line) for c in self.cells for line in c.lines if self.gating(line)]
        return out + [(c.key, Line(metric("status"), "", "", "baseline-only")) for c in self.cells
                      if c.side == "baseline-only"]

    def exit_code(self) -> int:
        if self.current_failed:
            return CURRENT_FAILED
        return REGRESSION if self.failures() else PASS


def load(path: Path, side: str) -> dict[str, Any]:
    try:
        data = load_results(Path(path))
    except ResultsError as e:
        raise ResultsError(f"{side}: {e}") from None
    if not data["rows"]:
        raise ResultsError(f"{side}: {path} measured nothing (no rows); rerun it")
    if any(not isinstance(r, dict) or "strategy" not in r or "status" not in r for r in data["rows"]):
        raise ResultsError(f"{side}: {path} has rows without 'strategy'/'status'; it was not written by kvbench")
    return data


def is_lossless(brow: dict[str, Any], crow: dict[str, Any]) -> bool | None:
    """The row says whether its strategy is lossless (a baseline written before rows said so: unknown, judged as
    lossy — toleranced, never exact)."""
    for row in (crow, brow):
        if isinstance(row.get("lossless"), bool):
            return row["lossless"]
    return None


def number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def judge_absolute(m: Metric, base: list[float], cur: list[float], opt: Options) -> tuple[str, str]:
    b, c = sorted(base)[len(base) // 2], sorted(cur)[len(cur) // 2]
    factor = better_ratio(m, b, c)
    if math.isnan(factor) or max(factor, 1 / factor) < opt.min_factor:
        return "same", ""
    if 2 / comb(len(base) + len(cur), len(base)) >= opt.p_threshold:  # the smallest two-sided exact p possible
        return "insufficient data", f"n={len(base)}+{len(cur)} cannot reach p<{opt.p_threshold:g}"
    p = mannwhitneyu(base, cur, alternative="two-sided").pvalue
    if p >= opt.p_threshold:
        return "same", f"p={p:.3g}"
    return ("improved" if factor > 1 else "regression"), f"p={p:.3g}"


def ratio_range(cell: dict, reference: dict, value: float) -> tuple[float, float]:
    """Lowest and highest speedup the repeats allow: cell's slowest / reference's fastest, and the reverse."""
    s, r = (x.get("tokens_per_s", {}).get("values") or [] for x in (cell, reference))
    if not s or not r or min(r) <= 0 or min(s) <= 0:
        return value, value  # no spread recorded: the tolerance alone decides
    return min(s) / max(r), max(s) / min(r)


def judge(m: Metric, b: float, c: float, opt: Options, spread: tuple) -> tuple[str, str]:
    """``spread``: (baseline, current) repeat values for absolute metrics, (low, high) ranges for ratios."""
    if m.kind == EXACT:
        return ("same", "") if math.isclose(b, c, rel_tol=1e-9, abs_tol=1e-12) else ("changed", "")
    if m.kind == QUALITY:
        worse = (c - b) if m.direction != UP else (b - c)
        allowed = opt.quality_tol * (abs(b) if m.relative_tol else m.tol_scale)
        if abs(worse) <= allowed:
            return "same", ""
        return ("regression" if worse > 0 else "improved"), f"tolerance {allowed:.4g} {m.unit}"
    if m.kind == RATIO:
        factor = better_ratio(m, b, c)
        if math.isnan(factor) or abs(factor - 1) <= opt.ratio_tol:
            return "same", ""
        (b_lo, b_hi), (c_lo, c_hi) = spread
        if (c_hi >= b_lo) if factor < 1 else (c_lo <= b_hi):  # the repeats' own spread explains the move
            return "within noise", f"beyond {opt.ratio_tol:.0%}, but the repeat ranges overlap"
        return ("regression" if factor < 1 else "improved"), f"tolerance {opt.ratio_tol:.0%}"
    if m.kind == ABSOLUTE:
        return judge_absolute(m, spread[0] or [b], spread[1] or [c], opt)
    return "info", ""


def environment_diff(benv: dict, cenv: dict) -> tuple[dict[str, tuple[Any, Any]], dict[str, str]]:
    """Keys whose values differ, and keys only one side records (a file from an older kvbench): those are unknown,
    not different, so an old baseline keeps judging a run made on the same machine."""
    diff, unknown = {}, {}
    for k in ENV_KEYS:
        b, c = benv.get(k), cenv.get(k)
        if b is None or c is None:
            if (b, c) != (None, None):
                unknown[k] = "baseline" if b is None else "current"
        elif str(b) != str(c):
            diff[k] = (b, c)
    return diff, unknown


def pair_older_rows(brows: dict[str, dict], crows: dict[str, dict]) -> dict[str, dict]:
    """A baseline row written before rows carried their key records the threads torch used, not the ones asked for,
    so its key leaves threads out (bench/key.py): it pairs with the one current cell equal to it but for threads
    (the regression baseline ran --threads 1; the settings note still shows a difference in what ran)."""
    out = {}
    unmatched = {}
    for key in crows:
        if key not in brows:
            unmatched.setdefault(drop_setting(key, "threads"), []).append(key)
    for key, row in brows.items():
        match = unmatched.get(key, []) if key not in crows and not row.get("cell_key") else []
        out[match[0] if len(match) == 1 else key] = row
    return out


def drop_setting(key: str, name: str) -> str:
    return "|".join(p for i, p in enumerate(key.split("|")) if i < 4 or not p.startswith(name + "="))


def reference_key(row: dict[str, Any]) -> str:
    """The key of the naive row whose tokens/s this row's speedup divides by: same model, workload and settings."""
    settings = {k: v for k, v in settings_of(row).items() if k not in SERVING}
    return cell_key(str(row.get("model", "")), str(row.get("workload", "")), "naive", "", settings)


def compare_cell(key: str, brow: dict, crow: dict, spreads: tuple[dict, dict, dict, dict],
                 env_diff: dict[str, tuple[Any, Any]], opt: Options) -> CellResult:
    """``spreads``: this cell's baseline and current spread, then its naive reference's (for speedup ranges)."""
    bspread, cspread, bref, cref = spreads
    cell = CellResult(key, "both")
    # The cell key's settings (bench/key.py), as each row records them: matched rows were requested alike, but a row
    # says what ran (threads torch chose, weights a peer ran), and figures made under other settings do not compare.
    settings = [f"{k} {brow.get(k)}→{crow.get(k)}" for k in SETTINGS
                if canonical(k, brow.get(k)) != canonical(k, crow.get(k))]
    cell.note = "settings differ: " + ", ".join(settings) if settings else ""
    # Why a line is not comparable, or "" when it is: absolute figures by any difference, quality by the text's.
    why_absolute = ", ".join([*(f"different {k}" for k in env_diff), *(["settings differ"] if settings else [])])
    why_quality = ", ".join(f"different {k}: other docstrings" for k in TEXT_ENV_KEYS if k in env_diff)
    b_ok, c_ok = brow.get("status") == "ok", crow.get("status") == "ok"
    status = "same" if brow.get("status") == crow.get("status") else "regression" if b_ok else \
        "improved" if c_ok else "changed"
    cell.lines.append(Line(metric("status"), brow.get("status"), crow.get("status"), status,
                           "" if c_ok else str(crow.get("error", ""))[:120]))
    if not (b_ok and c_ok):
        return cell  # a failed side has no figures to compare
    lossless = is_lossless(brow, crow)
    names = [k for k in dict.fromkeys([*brow, *crow]) if k not in CONFIG and k != "status"]
    for name in names:
        m = metric(name, lossless)
        b, c = number(brow.get(name)), number(crow.get(name))
        if b is None and c is None:
            continue
        if c is None or b is None:
            gone = c is None and m.kind in (EXACT, QUALITY, RATIO)
            cell.lines.append(Line(m, brow.get(name), crow.get(name), "missing" if gone else "info",
                                   "only in baseline" if c is None else "only in current"))
            continue
        why = why_absolute if m.kind == ABSOLUTE else why_quality if m.kind == QUALITY else ""
        if why:
            cell.lines.append(Line(m, b, c, "not comparable", why))
            continue
        values = (bspread.get(name, {}).get("values") or [], cspread.get(name, {}).get("values") or [])
        if m.kind == RATIO:  # only speedup_vs_naive has the spread of both its terms
            values = ((b, b), (c, c)) if name != "speedup_vs_naive" else \
                (ratio_range(bspread, bref, b), ratio_range(cspread, cref, c))
        verdict, note = judge(m, b, c, opt, values)
        cell.lines.append(Line(m, b, c, verdict, note))
    cell.lines.sort(key=lambda line: (line.metric.name != "status", ORDER[line.metric.kind]))
    return cell


def compare(baseline: dict[str, Any], current: dict[str, Any], opt: Options | None = None) -> Comparison:
    opt = opt or Options()
    benv, cenv = baseline.get("environment", {}), current.get("environment", {})
    env_diff, env_unknown = environment_diff(benv, cenv)
    brows = {row_key(r): r for r in baseline["rows"]}
    crows = {row_key(r): r for r in current["rows"]}
    brows = pair_older_rows(brows, crows)
    cells = []
    for key in dict.fromkeys([*brows, *crows]):
        if key not in crows:
            cells.append(CellResult(key, "baseline-only", note="not measured by the current run"))
        elif key not in brows:
            cells.append(CellResult(key, "current-only", note="not in the baseline (refresh it: make baseline)"))
        else:
            brow, crow = brows[key], crows[key]
            bspread, cspread = (data.get("spread", {}) for data in (baseline, current))
            spreads = (bspread.get(row_key(brow), {}), cspread.get(key, {}),
                       bspread.get(reference_key(brow), {}), cspread.get(reference_key(crow), {}))
            cells.append(compare_cell(key, brow, crow, spreads, env_diff, opt))
    failed = [k for k, r in crows.items() if r.get("status") == "failed"]
    if not any(r.get("status") == "ok" for r in crows.values()):
        failed = failed or list(crows)  # a run that measured nothing never passes
    return Comparison(cells, env_diff, failed, opt, env_unknown)


def compare_paths(baseline: Path, current: Path, opt: Options | None = None) -> Comparison:
    return compare(load(baseline, "baseline"), load(current, "current"), opt)
