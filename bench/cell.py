"""One cell (model × workload × strategy) measured in its own process: load, warm up, time, probe, score."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from bench import env
from bench.key import SETTINGS, cell_key
from bench.measure.output_length import generate_with_eos, length_columns
from bench.measure.quality import (
    KL_POSITIONS,
    agreement,
    eos_ids,
    mean_kl,
    perplexity,
    ppl_delta_ci,
    ppl_delta_pct,
    quality_window,
    target_logprobs,
)
from bench.measure.retrieval import compare_with_reference, retrieval_columns, score_cases
from bench.measure.timing import (
    peak_rss_mb,
    reset_cuda_peaks,
)
from bench.models import LoadedModel, load_model
from bench.scenarios.prompts import run_prompts
from bench.scenarios.requests import run_serving
from bench.workloads.catalog import get_workload
from strategies.core.base import StrategyFailed, Unsupported
from strategies.core.sampling import Sampling
from strategies.kernels.attention_impl import attention_unsupported, set_attention
from strategies.kernels.compile_step import FixedCapacity, compile_unsupported, install
from strategies.kernels.weight_layout import prepare_weights
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
    weights: str = "auto"  # auto: the faster of the two on this CPU; packed: oneDNN-packed linears; stock: as loaded
    max_concurrency: int = 0  # request workloads: at most N requests in flight (0: no limit)
    weight_quant: str = "none"  # weight-only int8/int4 linears (strategies/kernels/weight_quant.py)
    attn: str = "sdpa"  # attention implementation (strategies/kernels/attention_impl.py)
    compile: str = "none"  # torch.compile mode of the decode step (strategies/kernels/compile_step.py)
    target: str = ""  # openai:URL: a running server is measured instead of a strategy (bench/scenarios/endpoint.py)
    target_model: str = ""

    @property
    def key(self) -> str:
        """Every setting that changes what is measured (bench/key.py): resume and compare never mix cells."""
        return cell_key(self.model, self.workload, self.strategy, params_label(self.params),
                        {k: getattr(self, k) for k in SETTINGS})

    @property
    def reference_group(self) -> tuple:
        """Cells whose quality columns compare with the same reference tokens (and whose speedup shares a naive)."""
        return (self.model, self.workload, self.dtype, self.weights, self.sampling, self.seed, self.device, self.attn)

    @property
    def is_reference(self) -> bool:
        """The in-process, full-precision reference (naive, or sequential on request workloads)."""
        return (self.strategy == reference_for(self.workload) and self.weight_quant == "none" and not self.target
                and self.compile == "none")

    def reference_path(self) -> Path:
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{self.model}__{self.workload}")
        settings = f"{self.dtype}__{self.weights}__{self.seed}__{self.device}__{self.sampling or 'greedy'}"
        settings += f"__{self.attn}" if self.attn != SETTINGS["attn"] else ""  # one reference per attention
        safe_settings = "".join(c if c.isalnum() or c in "-._" else "_" for c in settings)
        return Path(self.out_dir) / ".reference" / f"{safe}__{safe_settings}.pt"

    def base_row(self) -> dict[str, Any]:
        return {"model": self.model, "workload": self.workload, "strategy": self.strategy,
                "params": params_label(self.params), "repeats": self.repeats, "seed": self.seed,
                "sampling": self.sampling or "greedy", "dtype": self.dtype, "device": self.device,
                "weights": "stock", "attn": self.attn, "compile": self.compile,
                "threads": self.threads or torch.get_num_threads(), "torch_version": torch.__version__,
                "transformers_version": transformers.__version__, "kvbench_version": env.kvbench_version(),
                # per row too, so a row read apart from its file's environment still says what ran it
                "python_version": env.python_version(), "cpu": env.cpu_model(), "cpu_capability": env.cpu_capability(),
                "git_rev": env.git_rev()}


def run_target_cell(cell: Cell, row: dict[str, Any]) -> dict[str, Any]:
    """A running server measured by replaying the workload's requests over HTTP (no model loaded here); greedy
    agreement against the local reference's tokens when that cell ran first."""
    from bench.models import load_tokenizer, resolve
    from bench.scenarios.endpoint import run_target

    sampling = Sampling.parse(cell.sampling)
    ref_path = cell.reference_path()
    reference = torch.load(ref_path)["tokens"] if ref_path.exists() else None
    row.update(lossless=True, weights="", target=cell.target, target_model=cell.target_model)
    try:
        figures = run_target(cell.target, cell.target_model or None, get_workload(cell.workload),
                             load_tokenizer(resolve(cell.model)), cell.request_rate, cell.burstiness,
                             cell.max_concurrency or None, cell.slo, cell.num_requests, cell.seed,
                             reference_tokens=reference, sampling=None if sampling.is_greedy else sampling)
    except ValueError as e:
        raise Unsupported(str(e)) from None
    row.update(figures)
    row["status"], row["error"] = "ok", ""
    row["peak_rss_mb"] = peak_rss_mb()
    return {"row": row, "spread": {}, "samples": {}}


def run_cell(cell: Cell) -> dict[str, Any]:
    """Measure one cell; returns {'row': ..., 'spread': ..., 'samples': ...}. Raises on failure."""
    transformers.utils.logging.disable_progress_bar()
    if cell.threads:
        torch.set_num_threads(cell.threads)
    torch.manual_seed(cell.seed)
    row = cell.base_row()
    if cell.target:
        return run_target_cell(cell, row)
    comp = compose(cell.strategy, cell.params)
    if reason := attention_unsupported(cell.attn, comp.decoder.name, comp.decoder.peer):
        raise Unsupported(reason)
    row["lossless"] = exact_required(cell, comp)
    workload = get_workload(cell.workload)
    sampling = Sampling.parse(cell.sampling)
    if cell.seed and not sampling.is_greedy:
        sampling = Sampling(**{**asdict(sampling), "seed": cell.seed})

    t0 = time.perf_counter()
    loaded = load_model(cell.model, cell.dtype, cell.device, cell.seed)
    row["load_s"] = time.perf_counter() - t0
    model = loaded.model
    rss_after_load = peak_rss_mb()
    serving = getattr(workload, "is_request_workload", False)
    if reason := compile_unsupported(cell.compile, comp.decoder.name, comp.decoder.params(),
                                     comp.cache.name if comp.cache else None, model, cell.device, not serving):
        raise Unsupported(reason)
    row.update(prepare_weights(model, cell.weights, cell.weight_quant, comp.decoder.peer, cell.compile != "none"))
    row["attn"] = set_attention(model, cell.attn)
    if comp.cache is not None and (reason := comp.cache.supports(model)):
        raise Unsupported(f"{comp.cache.name} does not support {cell.model}: {reason}")
    # Drafts are built here, after packing (a bf16 draft packs like its target) and before any warm-up.
    comp.decoder.prepare(model, load=lambda spec: load_model(spec, cell.dtype, cell.device, cell.seed).model)
    if cell.compile != "none":
        comp, row["compile_s"] = compile_decode(cell, comp, loaded, workload)
    # a request workload (arrivals, many requests) is measured as a server is: bench/scenarios/requests.py
    scenario = run_serving if serving else run_prompts
    reset_cuda_peaks(cell.device)
    figures, spreads, samples, tokens = scenario(cell, comp, loaded, workload, sampling)
    row.update(figures)
    return finish_row(cell, comp, loaded, workload, sampling, row, tokens, spreads, samples, rss_after_load)


def compile_decode(cell: Cell, comp: Composition, loaded: LoadedModel, workload: Any) -> tuple[Composition, float]:
    """Compile the decode step before anything is timed: every cache of the cell gets one capacity (the longest
    prompt + new tokens), and three untimed decode steps trace and compile it; their wall time is ``compile_s``."""
    prompts = workload.prompts(loaded.tokenizer)
    comp = replace(comp, cache=FixedCapacity(comp.cache, max(map(len, prompts)) + workload.max_new_tokens - 1))
    compiled = install(loaded.model, cell.compile, cell.attn)
    comp.decoder.generate(loaded.model, comp.cache_factory(loaded.model), prompts[:1], 4, Sampling.parse(""),
                          lambda i, t: None)
    if not compiled.calls:
        raise StrategyFailed("the compiled decode step never ran (the lean path did not take this cache)")
    compiled.seal()
    return comp, compiled.compile_s


def finish_row(cell: Cell, comp: Composition, loaded: LoadedModel, workload: Any, sampling: Sampling,
               row: dict[str, Any], tokens: list[list[int]], spreads: dict, samples: dict,
               rss_after_load: float) -> dict[str, Any]:
    """The end of every cell, prompts or requests: quality against the reference, memory, status."""
    # tokens are always compared with the reference (a lossless strategy must prove it); ppl/KL only with quality
    row.update(quality(cell, comp, loaded, workload, tokens, with_ppl=cell.quality))
    row["peak_rss_mb"] = peak_rss_mb()
    row["rss_over_model_mb"] = row["peak_rss_mb"] - rss_after_load
    row["status"], row["error"] = "ok", ""
    if row["lossless"] and sampling.is_greedy and row.get("greedy_agreement", 1.0) < 1.0:
        row["status"] = "failed"
        row["error"] = (f"lossless strategy diverged from {reference_for(cell.workload)}'s greedy tokens at position "
                        f"{row['first_divergence']}")
    elif row["lossless"] and row.get("retrieval_mismatch"):
        row["status"] = "failed"
        row["error"] = f"lossless strategy differs from the reference: {row['retrieval_mismatch']}"
    samples["itl_ms"] = samples["itl_ms"][:2000]  # enough for distribution plots, bounded file size
    return {"row": row, "spread": spreads, "samples": samples}


def exact_required(cell: Cell, comp: Composition) -> bool:
    """Whether this cell's tokens must equal the reference's. Quantized weights change the model: measured against
    the full-precision reference, not required. In half precision the cache path and naive's recompute round
    differently (other matmul shapes), so a near-tie may flip a token of any exact strategy: agreement is
    reported, exactness is required in float32 only."""
    return comp.lossless and cell.weight_quant == "none" and cell.dtype == "float32"


def quality(cell: Cell, comp: Composition, loaded: LoadedModel, workload: Any, tokens: list[list[int]],
            with_ppl: bool = True) -> dict[str, Any]:
    """Agreement with the reference's greedy tokens (naive's; sequential's on request workloads), perplexity
    through this strategy's cache path with a paired bootstrap interval of its delta, KL vs the reference,
    output lengths before EOS, and on retrieval workloads the retrieval scores (bench/measure/retrieval.py)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    eos = eos_ids(model, tokenizer)
    out: dict[str, Any] = {}
    saved: dict[str, Any] = {"tokens": tokens}  # without quality scoring, the reference holds tokens only
    if with_ppl:
        context, continuation = quality_window(workload, tokenizer)
        logprobs = comp.decoder.score(model, comp.cache_factory(model), context, continuation).float().cpu()
        out["ppl"] = perplexity(logprobs, continuation)
        targets = target_logprobs(logprobs, continuation)
        out["ppl_tokens"] = len(continuation)
        # full distributions for KL only over the first positions: a 1k window of them would be ~200 MB
        saved.update(logprobs=logprobs[:KL_POSITIONS], targets=targets, ppl=out["ppl"])
        if getattr(workload, "is_retrieval_workload", False):
            saved["retrieval"] = score_cases(workload.cases(tokenizer), tokens, tokenizer, lambda prompt, answer: (
                comp.decoder.score(model, comp.cache_factory(model), prompt, answer)))
            out.update(retrieval_columns(saved["retrieval"]))
    path = cell.reference_path()
    lengths = with_ppl and not any(getattr(workload, f"is_{kind}_workload", False) for kind in ("request", "retrieval"))
    if cell.is_reference:
        if lengths:
            saved["eos_tokens"] = generate_with_eos(comp, model, workload, tokenizer, len(tokens))
            out.update(length_columns(saved["eos_tokens"], eos, None))  # the reference: no ratio to itself
        save_reference(path, saved)
        exact = {"ppl_delta_pct": 0.0, "kl_vs_naive": 0.0, "ppl_delta_ci_low": 0.0, "ppl_delta_ci_high": 0.0,
                 "ppl_delta_significant": False} if with_ppl else {}
        return {**out, **exact, "greedy_agreement": 1.0, "first_divergence": -1}
    if not path.exists():
        return out
    ref = torch.load(path)
    if lengths and not exact_required(cell, comp) and not comp.decoder.peer and ref.get("eos_tokens"):
        mine = generate_with_eos(comp, model, workload, tokenizer, len(ref["eos_tokens"]))
        out.update(length_columns(mine, eos, ref["eos_tokens"]))
    frac, out["first_divergence"] = agreement(ref["tokens"], tokens[: len(ref["tokens"])])
    if not math.isnan(frac):
        out["greedy_agreement"] = frac
    if with_ppl and "targets" in ref and len(ref["targets"]) == len(targets):
        out["ppl_delta_pct"] = ppl_delta_pct(ref["targets"], targets)
        low, high = ppl_delta_ci(ref["targets"], targets)
        out.update(ppl_delta_ci_low=low, ppl_delta_ci_high=high, ppl_delta_significant=not low <= 0.0 <= high)
        n = min(len(ref["logprobs"]), len(logprobs))
        out["kl_vs_naive"] = max(0.0, mean_kl(ref["logprobs"][:n], logprobs[:n]))
    elif with_ppl and "ppl" in ref and "targets" not in ref:  # an older reference (resumed run)
        out["ppl_delta_pct"] = 100 * (out["ppl"] - ref["ppl"]) / ref["ppl"]
    if exact_required(cell, comp) and "retrieval" in ref and "retrieval" in saved:
        # log-probs of two exact fp32 paths differ by float rounding only: ~1e-5 nats
        if why := compare_with_reference(saved["retrieval"], ref["retrieval"], atol=1e-3):
            out["retrieval_mismatch"] = why
    return out


def save_reference(path: Path, saved: dict[str, Any]) -> None:
    """Written whole or not at all (temp file, then rename): the cells compared with it read it concurrently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(saved, tmp)
    os.replace(tmp, path)
