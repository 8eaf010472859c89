"""How a cell's weights are laid out before anything is timed: oneDNN-packed or stock, then weight-only quantized.

``--weights auto`` (the default) measures instead of assuming: the packing trick that paid on an AMD EPYC (MKL's
generic sgemm path there) loses to MKL in fp32 on an Intel Xeon and wins in bf16 (docs/MEASUREMENTS.md). So
each cell times one decode step's worth of matrix-vector products (every linear of the model, M=1) both ways on
the CPU at hand, keeps the faster, and the row records the choice and both timings.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from strategies.kernels.packed_linear import BATCH_HINT, can_pack, pack_linear_weights
from strategies.kernels.weight_quant import decode_weight_bytes, quantize_weights

LAYOUTS = ("auto", "packed", "stock")
PROBE_PASSES = 5


def _time_pass(fn, passes: int) -> float:
    fn()  # warm: oneDNN primitive creation, page-in
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


@torch.inference_mode()
def probe_layouts(model: nn.Module, passes: int = PROBE_PASSES) -> dict[str, float]:
    """ms for one M=1 product with every linear of ``model``, stock (F.linear) and oneDNN-packed, best of
    ``passes``. Packs copies of the weights, so it costs one more copy of the linears while it runs."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, BATCH_HINT) for w in weights]
    xs = [torch.randn(1, w.shape[1], dtype=w.dtype, device=w.device) for w in weights]

    def stock() -> None:
        for x, w in zip(xs, weights):
            F.linear(x, w)

    def onednn() -> None:
        for x, p in zip(xs, packed):
            torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")

    return {"stock_ms": _time_pass(stock, passes), "packed_ms": _time_pass(onednn, passes)}


def prepare_weights(model: nn.Module, layout: str, weight_quant: str, peer: bool, compiled: bool = False
                    ) -> dict[str, Any]:
    """Lay out ``model``'s weights in place; returns the row's fields: ``weights`` (the layout used),
    ``weight_quant``, ``weight_bytes`` (read per decode step) and, for ``auto``, the probe's timings.

    Peers (transformers' own paths) never get our packing — "ours vs the library" includes that kernel choice —
    but do get the weight quantization, so a quantized row compares like with like. A ``compiled`` decode step
    (--compile) runs stock weights too: inductor cannot trace oneDNN's opaque packed tensors."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weights layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    fields: dict[str, Any] = {"weights": "stock", "weight_quant": weight_quant}
    if weight_quant == "none" and not peer and not compiled and can_pack(model):
        chosen = layout
        if layout == "auto":
            probe = probe_layouts(model)
            fields.update(weights_probe_stock_ms=probe["stock_ms"], weights_probe_packed_ms=probe["packed_ms"])
            chosen = "packed" if probe["packed_ms"] < probe["stock_ms"] else "stock"
        if chosen == "packed" and pack_linear_weights(model):
            fields["weights"] = "packed"
    quantize_weights(model, weight_quant)
    fields["weight_bytes"] = decode_weight_bytes(model)
    return fields
