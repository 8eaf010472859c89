"""The report's long-context quality figures (issue #16): compression curves (quality against compression ratio
per strategy family, with the Pareto frontier) and the needle heatmap (accuracy over haystack length × depth per
strategy). The tables are quality_tables.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.results.plots import Figure, colours, num, ok_rows, plt, save
from bench.results.quality_tables import CASE, groups, lengths_of, pareto_front

# (column, axis label) of every quality a compression curve is drawn for, where rows have it
CURVES = [("retrieval_acc", "retrieval accuracy"), ("answer_logprob", "answer log-prob (nats)"),
          ("ppl_delta_pct", "Δ perplexity % (95% CI)")]


def compression_curves(data: dict[str, Any], out_dir: Path) -> list[Figure]:
    figures = []
    for (model, workload), group in groups(ok_rows(data)).items():
        rows = [r for r in group if num(r.get("compression_ratio"))]
        metrics = [(c, t) for c, t in CURVES if sum(num(r.get(c)) is not None for r in rows) >= 2]
        if not metrics:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
        colour = colours([r["strategy"] for r in rows])
        for ax, (column, title) in zip(axes[0], metrics):
            pts = []
            for family in sorted({r["strategy"] for r in rows}):
                fam = sorted((r for r in rows if num(r.get(column)) is not None and r["strategy"] == family),
                             key=lambda r: num(r["compression_ratio"]))
                xs, ys = [num(r["compression_ratio"]) for r in fam], [num(r[column]) for r in fam]
                if column == "ppl_delta_pct":  # error bars: the bootstrap interval where the row has one
                    lo = [y - (num(r.get("ppl_delta_ci_low")) if num(r.get("ppl_delta_ci_low")) is not None else y)
                          for r, y in zip(fam, ys)]
                    hi = [(num(r.get("ppl_delta_ci_high")) if num(r.get("ppl_delta_ci_high")) is not None else y) - y
                          for r, y in zip(fam, ys)]
                    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", color=colour[family], label=family, capsize=3)
                else:
                    ax.plot(xs, ys, marker="o", color=colour[family], label=family)
                # Δppl: lower is better, so the frontier is taken over its negation
                pts += [(x, -y if column == "ppl_delta_pct" else y) for x, y in zip(xs, ys)]
            front = pareto_front(pts)
            ax.plot([x for x, _ in front], [-y if column == "ppl_delta_pct" else y for _, y in front], "k--",
                    lw=1, label="Pareto frontier")
            ax.set_xscale("log")
            ax.set_xlabel("compression ratio (full-cache bytes / held bytes)")
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Quality vs compression · {model} · {workload}")
        name = f"compression_{_safe(model)}_{_safe(workload)}.png"
        figures.append((f"Quality vs compression · {model} · {workload}", save(fig, out_dir, name)))
    return figures


def needle_heatmaps(data: dict[str, Any], out_dir: Path, limit: int = 12) -> list[Figure]:
    figures = []
    for (model, workload), group in groups(ok_rows(data)).items():
        rows = [r for r in group if any(CASE.match(k) for k in r)][:limit]
        if not rows:
            continue
        lengths = lengths_of(rows)
        depths = sorted({int(m.group(2)) for r in rows for k in r if (m := CASE.match(k))})
        cols = min(4, len(rows))
        nrows = math.ceil(len(rows) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.9 * nrows), squeeze=False,
                                 gridspec_kw={"hspace": 0.55})  # room for two-line titles
        for ax in axes.flat[len(rows):]:
            ax.axis("off")
        for ax, r in zip(axes.flat, rows):
            grid = [[num(r.get(f"retrieval_hit@{n}:{d}")) for n in lengths] for d in depths]
            image = ax.imshow([[math.nan if v is None else v for v in line] for line in grid], vmin=0, vmax=1,
                              cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths], fontsize=7)
            params = (r.get("params") or "").replace(f"{r['strategy']}.", "")
            ax.set_title(f"{r['strategy']}\n{params}" if params else r["strategy"], fontsize=7)
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="accuracy")
        fig.suptitle(f"Needle accuracy over haystack tokens × depth · {model} · {workload}", fontsize=9)
        name = f"needle_{_safe(model)}_{_safe(workload)}.png"
        fig.savefig(out_dir / name, dpi=110)  # not save(): tight_layout fights the shared colour bar
        plt.close(fig)
        figures.append((f"Needle accuracy (length × depth) · {model} · {workload}", name))
    return figures


def quality_figures(data: dict[str, Any], out_dir: Path) -> list[Figure]:
    return compression_curves(data, out_dir) + needle_heatmaps(data, out_dir)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)
