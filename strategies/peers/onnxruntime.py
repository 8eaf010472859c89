"""`onnxruntime`: the model exported to ONNX with its KV cache (strategies/peers/onnx_export.py), run by ONNX Runtime's
CPU provider, as an engine peer row.

Same prompts (token ids), same ``max_new_tokens`` with EOS suppressed, the same token selection as our own decoders
(greedy or seeded sampling over the graph's logits). Prefill, then one token per ``run`` over ONNX Runtime's own
cache: each step's present K/V (OrtValues, never copied through numpy) is the next step's past. The graph is
exported once per weights hash and dtype; the row reports the export's seconds (``export_s``, measured when it was
written, never inside a timed repeat) and whether this cell found it cached. Quality is scored through the same
cache. Prompts run one after another (a one-at-a-time engine, as llama.cpp's peer); request workloads are served
one by one in arrival order by the default ``serve``. fp32 on the CPU only, dense weights only: anything else is a
skipped row with the reason. Optional extra ``onnx``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from strategies.core.base import DecodingStrategy, Emit, Generation, NewCache, Unsupported, kv_shape
from strategies.core.sampling import Sampling, eos_ids

INSTALL = "pip install 'kvbench[onnx]'"
LEVELS = ("all", "extended", "basic", "none")


def _import_ort() -> Any:
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter translates with it)
    except ImportError as e:
        raise Unsupported(f"onnxruntime peer needs {e.name or 'onnxruntime'}, which is not installed: {INSTALL}"
                          ) from None
    return onnxruntime


@dataclass
class OnnxRuntime(DecodingStrategy):
    name = "onnxruntime"
    lossless = False  # another engine's kernels: agreement is measured, not assumed
    takes_cache = False
    peer = True
    summary = "peer: the model exported to ONNX with its KV cache, run by ONNX Runtime's CPU provider"
    graph_opt: str = field(default="all", metadata={"help": f"ONNX Runtime graph optimizations: {', '.join(LEVELS)}"})
    _session: Any = field(default=None, init=False, repr=False)
    _figures: dict = field(default_factory=dict, init=False, repr=False)

    def validate(self) -> None:
        if self.graph_opt not in LEVELS:
            raise ValueError(f"onnxruntime.graph_opt must be one of {', '.join(LEVELS)}, got {self.graph_opt!r}")

    def prepare(self, model: PreTrainedModel, load: Any = None) -> None:
        """Export (or find) the graph and open an ONNX Runtime session on it: untimed, before any warm-up."""
        ort = _import_ort()
        from strategies.peers import onnx_export

        if model.device.type != "cpu":
            raise Unsupported(f"onnxruntime runs ONNX Runtime's CPU provider; this model is on {model.device}")
        if model.dtype != torch.float32:
            raise Unsupported(f"onnxruntime is exported in float32 only (ONNX Runtime's CPU provider lacks half "
                              f"precision kernels for this graph); got {str(model.dtype).removeprefix('torch.')}")
        if (quant := getattr(model, "_kvbench_weight_quant", "none")) != "none":
            raise Unsupported(f"onnxruntime exports dense weights; --weight-quant {quant} has no ONNX export here")
        try:
            path, meta, cached = onnx_export.exported(model)
        except Exception as e:  # an architecture the exporter cannot trace: this peer cannot run the model
            raise Unsupported(f"onnxruntime: torch.onnx.export failed on this {model.config.model_type} model: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the row's threads, as every other row
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, {
            "all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
            "none": "ORT_DISABLE_ALL"}[self.graph_opt])
        options.log_severity_level = 3  # errors only
        start = time.perf_counter()
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._layers, self._kv_heads, self._head_dim = kv_shape(model.config)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._banned = eos_ids(model)
        self._figures = {"export_s": meta["export_s"], "onnx_cached": cached,
                         "onnx_session_s": time.perf_counter() - start, "onnx_bytes": onnx_export.graph_bytes(path),
                         "onnxruntime_version": ort.__version__}

    def _empty_past(self) -> dict[str, Any]:
        from onnxruntime import OrtValue

        empty = np.zeros((1, self._kv_heads, 0, self._head_dim), dtype=np.float32)
        return {f"past_{kind}_{i}": OrtValue.ortvalue_from_numpy(empty)
                for kind in ("key", "value") for i in range(self._layers)}

    def _step(self, ids: list[int], past: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """One forward over ``ids`` after ``past``: the last position's logits [vocab] and the new past."""
        from onnxruntime import OrtValue

        feed = {"input_ids": OrtValue.ortvalue_from_numpy(np.array([ids], dtype=np.int64)), **past}
        out = self._session.run_with_ort_values(self._outputs, feed)
        present = {name.replace("present_", "past_", 1): value for name, value in zip(self._outputs[1:], out[1:])}
        return torch.from_numpy(out[0].numpy()[0, -1]), present

    def kv_bytes(self, past: dict[str, Any]) -> int:
        """Bytes of the K/V ``past`` holds, from its tensors' shapes: 2 · layers · kv_heads · head_dim · tokens · 4."""
        return sum(int(np.prod(v.shape())) * 4 for v in past.values())

    def generate(self, model: PreTrainedModel, new_cache: NewCache, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling, emit: Emit) -> Generation:
        if self._session is None:
            self.prepare(model)
        outputs, held, peak = [], 0, 0
        for i, prompt in enumerate(prompts):
            gen = sampling.generator()
            seq = torch.tensor(prompt + [0] * max_new_tokens, dtype=torch.long).unsqueeze(0)
            n, past, before = len(prompt), self._empty_past(), 0
            logits, past = self._step(prompt, past)
            for t in range(max_new_tokens):
                if t:
                    before = self.kv_bytes(past)
                    logits, past = self._step([int(seq[0, n + t - 1])], past)
                token = int(sampling.select(logits.unsqueeze(0), seq[:, : n + t], gen, self._banned))
                seq[0, n + t] = token
                emit(i, [token])
            outputs.append(seq[0, n:].tolist())
            # the cache after the last step, and while it ran (ONNX Runtime concatenates: past and present both live)
            if (now := self.kv_bytes(past)) > held:
                held, peak = now, now + before
        tokens = held // (2 * self._layers * self._kv_heads * self._head_dim * 4)
        return Generation(outputs, {**self._figures, "cache_bytes": held, "cache_bytes_peak": peak,
                                    "cache_bytes_per_token": held / tokens if tokens else 0.0})

    def score(self, model: PreTrainedModel, new_cache: NewCache, prompt_ids: list[int],
              continuation_ids: list[int]) -> torch.Tensor:
        """Through ONNX Runtime's own cache: prefill the prompt, then one continuation token per run."""
        if self._session is None:
            self.prepare(model)
        logits, past = self._step(prompt_ids, self._empty_past())
        rows = [logits]
        for token in continuation_ids[:-1]:
            logits, past = self._step([token], past)
            rows.append(logits)
        return torch.stack(rows).float().log_softmax(-1)
