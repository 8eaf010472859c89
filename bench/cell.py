"""One cell (model × workload × strategy) measured in its own process: load, warm up, time, probe, score."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from bench import env
from bench.measure.quality import agreement, mean_kl, perplexity
from bench.measure.timing import (
    peak_rss_mb,
    reset_cuda_peaks,
)
from bench.models import LoadedModel, load_model
from bench.scenarios.prompts import run_prompts
from bench.scenarios.requests import run_serving
from bench.workloads.catalog import get_workload
from strategies.core.base import Unsupported
from strategies.core.sampling import Sampling
from strategies.kernels.packed_linear import pack_linear_weights
from strategies.registry import Composition, compose, params_label

REFERENCE = "naive"
SERVING_REFERENCE = "sequential"  # request workloads: full cache, one request at a time (itself exact vs naive)


def reference_for(workload: str) -> str:
    """The strategy whose tokens a workload's quality columns compare with."""
    try:
        is_requests = getattr(get_workload(workload), "is_request_workload", False)
    except ValueError:
        return REFERENCE
    return SERVING_REFERENCE if is_requests else REFERENCE


@dataclass
class Cell:
    model: str
    workload: str
    strategy: str
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeats: int = 3
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    sampling: str = ""
    out_dir: str = "."
    quality: bool = True
    request_rate: float = math.inf  # request workloads only: arrivals and SLO
    burstiness: float = 1.0
    slo: str = ""
    num_requests: int = 0  # request workloads: serve only the first N requests (0: all)
    weights: str = "packed"  # packed: our strategies run oneDNN-packed fp32 linears (peers never); stock: as loaded

    @property
    def key(self) -> str:
        return "|".join((self.model, self.workload, self.strategy, params_label(self.params)))

    @property
    def is_reference(self) -> bool:
        return self.strategy == reference_for(self.workload)

    def reference_path(self) -> Path:
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{self.model}__{self.workload}")
        return Path(self.out_dir) / ".reference" / f"{safe}__{self.dtype}__{self.sampling or 'greedy'}.pt"

    def base_row(self) -> dict[str, Any]:
        return {"model": self.model, "workload": self.workload, "strategy": self.strategy,
                "params": params_label(self.params), "repeats": self.repeats, "seed": self.seed,
                "sampling": self.sampling or "greedy", "dtype": self.dtype, "device": self.device,
                "weights": "stock",
                "threads": self.threads or torch.get_num_threads(), "torch_version": torch.__version__,
                "transformers_version": transformers.__version__, "kvbench_version": env.kvbench_version(),
                # per row too, so a row read apart from its file's environment still says what ran it
                "python_version": env.python_version(), "cpu": env.cpu_model(), "cpu_capability": env.cpu_capability(),
                "git_rev": env.git_rev()}


def run_cell(cell: Cell) -> dict[str, Any]:
    """Measure one cell; returns {'row': ..., 'spread': ..., 'samples': ...}. Raises on failure."""
    transformers.utils.logging.disable_progress_bar()
    if cell.threads:
        torch.set_num_threads(cell.threads)
    torch.manual_seed(cell.seed)
    row = cell.base_row()
    comp = compose(cell.strategy, cell.params)
    row["lossless"] = comp.lossless
    workload = get_workload(cell.workload)
    sampling = Sampling.parse(cell.sampling)
    if cell.seed and not sampling.is_greedy:
        sampling = Sampling(**{**asdict(sampling), "seed": cell.seed})

    t0 = time.perf_counter()
    loaded = load_model(cell.model, cell.dtype, cell.device, cell.seed)
    row["load_s"] = time.perf_counter() - t0
    model = loaded.model
    rss_after_load = peak_rss_mb()
    if cell.weights == "packed" and not comp.decoder.peer and pack_linear_weights(model):
        row["weights"] = "packed"
    if comp.cache is not None and (reason := comp.cache.supports(model)):
        raise Unsupported(f"{comp.cache.name} does not support {cell.model}: {reason}")
    # Drafts are built here, after packing (a bf16 draft packs like its target) and before any warm-up.
    comp.decoder.prepare(model, load=lambda spec: load_model(spec, cell.dtype, cell.device, cell.seed).model)
    # a request workload (arrivals, many requests) is measured as a server is: bench/scenarios/requests.py
    scenario = run_serving if getattr(workload, "is_request_workload", False) else run_prompts
    reset_cuda_peaks(cell.device)
    figures, spreads, samples, tokens = scenario(cell, comp, loaded, workload, sampling)
    row.update(figures)
    return finish_row(cell, comp, loaded, workload, sampling, row, tokens, spreads, samples, rss_after_load)


def finish_row(cell: Cell, comp: Composition, loaded: LoadedModel, workload: Any, sampling: Sampling,
               row: dict[str, Any], tokens: list[list[int]], spreads: dict, samples: dict,
               rss_after_load: float) -> dict[str, Any]:
    """The end of every cell, prompts or requests: quality against the reference, memory, status."""
    # tokens are always compared with the reference (a lossless strategy must prove it); ppl/KL only with quality
    row.update(quality(cell, comp, loaded, workload, tokens, with_ppl=cell.quality))
    row["peak_rss_mb"] = peak_rss_mb()
    row["rss_over_model_mb"] = row["peak_rss_mb"] - rss_after_load
    row["status"], row["error"] = "ok", ""
    if comp.lossless and sampling.is_greedy and row.get("greedy_agreement", 1.0) < 1.0:
        row["status"] = "failed"
        row["error"] = (f"lossless strategy diverged from {reference_for(cell.workload)}'s greedy tokens at position "
                        f"{row['first_divergence']}")
    samples["itl_ms"] = samples["itl_ms"][:2000]  # enough for distribution plots, bounded file size
    return {"row": row, "spread": spreads, "samples": samples}


def quality(cell: Cell, comp: Composition, loaded: LoadedModel, workload: Any, tokens: list[list[int]],
            with_ppl: bool = True) -> dict[str, Any]:
    """Agreement with the reference's greedy tokens (naive's; sequential's on request workloads), perplexity
    through this strategy's cache path, KL vs the reference."""
    model = loaded.model
    out: dict[str, Any] = {}
    saved: dict[str, Any] = {"tokens": tokens}  # without quality scoring, the reference holds tokens only
    if with_ppl:
        context, continuation = workload.quality_text(loaded.tokenizer)
        logprobs = comp.decoder.score(model, comp.cache_factory(model), context, continuation).float().cpu()
        out["ppl"] = perplexity(logprobs, continuation)
        saved.update(logprobs=logprobs, ppl=out["ppl"])
    path = cell.reference_path()
    if cell.is_reference:
        save_reference(path, saved)
        exact = {"ppl_delta_pct": 0.0, "kl_vs_naive": 0.0} if with_ppl else {}
        return {**out, **exact, "greedy_agreement": 1.0, "first_divergence": -1}
    if not path.exists():
        return out
    ref = torch.load(path)
    frac, out["first_divergence"] = agreement(ref["tokens"], tokens[: len(ref["tokens"])])
    if not math.isnan(frac):
        out["greedy_agreement"] = frac
    if with_ppl and "logprobs" in ref:
        out["ppl_delta_pct"] = 100 * (out["ppl"] - ref["ppl"]) / ref["ppl"]
        out["kl_vs_naive"] = max(0.0, mean_kl(ref["logprobs"], logprobs))
    return out


def save_reference(path: Path, saved: dict[str, Any]) -> None:
    """Written whole or not at all (temp file, then rename): the cells compared with it read it concurrently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(saved, tmp)
    os.replace(tmp, path)
