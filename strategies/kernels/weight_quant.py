"""Weight-only quantized linears with float activations (gpt-fast's int8/int4 paths, torchao's
``int8_weight_only`` / ``int4_weight_only``), on torch's own CPU kernels — no extra dependency.

Why weight-only: batch-1 decode reads every weight once per token, so its speed is bytes read. int8 halves
fp16's bytes (quarters fp32's), int4 halves them again; activations stay float, so quality loss is the
weights' rounding only.

- int8: symmetric per output channel, ``q = round(w / s)``, ``s = max|w_row| / 127``; ``aten._weight_int8pack_mm``
  multiplies float activations by int8 weights and scales in one pass.
- int4: asymmetric per group of ``group_size`` inputs (tinygemm's convention: ``w ≈ (q - 8)·scale + zero``, q in
  0..15), packed once by ``aten._convert_weight_to_int4pack_for_cpu``; ``aten._weight_int4pack_mm_for_cpu`` takes
  bf16 activations, so fp32 activations are cast in and the product cast back.

The quantized module *replaces* the dense ``nn.Linear`` (a tied LM head gets its own quantized copy; the
embedding keeps its dense rows, of which a decode step reads one). ``stored_bytes`` is what a decode step reads.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("none", "int8", "int4")
INT4_GROUPS = (64, 32)  # inputs per int4 scale/zero pair, the coarsest that divides in_features (576 = 9 × 64)
INT4_INNER_K_TILES = 2  # the CPU packing's tile count (torch's tests and torchao use 2 for CPU)


def available(mode: str) -> str | None:
    """None when ``mode`` runs on this torch build, else why not (a skipped row's reason)."""
    if mode not in MODES:
        raise ValueError(f"unknown weight quantization {mode!r}; allowed: {', '.join(MODES)}")
    needed = {"int8": ("_weight_int8pack_mm",),
              "int4": ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu")}.get(mode, ())
    missing = [op for op in needed if not hasattr(torch.ops.aten, op)]
    return f"torch {torch.__version__} lacks aten.{missing[0]}" if missing else None


class Int8WeightLinear(nn.Module):
    def __init__(self, linear: nn.Module):
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        self.register_buffer("qweight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = linear.bias

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]

    @property
    def weight(self) -> torch.Tensor:
        """Dense [out, in] values (a copy, for code that reads weights; never on the hot path)."""
        return self.dequantized().to(self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.qweight, self.scales.to(x.dtype))
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y

    @property
    def stored_bytes(self) -> int:
        return _nbytes(self.qweight, self.scales, self.bias)


class Int4WeightLinear(nn.Module):
    def __init__(self, linear: nn.Module, group_size: int | None = None):
        super().__init__()
        w = linear.weight.detach().float()
        self.out_features, self.in_features = w.shape
        group_size = group_size or int4_group(self.in_features)
        if self.in_features % group_size:
            raise ValueError(f"int4 needs in_features divisible by {group_size}, got {self.in_features}")
        self.group_size = group_size
        groups = w.reshape(self.out_features, -1, group_size)
        lo, hi = groups.amin(dim=2), groups.amax(dim=2)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        zero = lo + 8 * scale  # tinygemm: w = (q - 8)·scale + zero
        q = torch.round((groups - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.reshape(self.out_features, self.in_features), INT4_INNER_K_TILES))
        # [groups, out, 2] (scale, zero) in bf16, the kernel's layout
        self.register_buffer("scales_zeros", torch.stack([scale, zero], dim=2).transpose(0, 1).contiguous()
                             .to(torch.bfloat16))
        self.bias = linear.bias

    def dequantized(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return self._matmul(eye).float().T  # column j of W·I is row j of W

    @property
    def weight(self) -> torch.Tensor:
        """Dense [out, in] values (a copy, for code that reads weights; never on the hot path)."""
        return self.dequantized()

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2d, self.packed, self.group_size, self.scales_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self._matmul(x.reshape(-1, shape[-1]).to(torch.bfloat16)).to(x.dtype)
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y

    @property
    def stored_bytes(self) -> int:
        return _nbytes(self.packed, self.scales_zeros, self.bias)


def int4_group(in_features: int) -> int:
    for group in INT4_GROUPS:
        if in_features % group == 0:
            return group
    raise ValueError(f"int4 needs in_features divisible by one of {INT4_GROUPS}, got {in_features}")


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def quantize_weights(model: nn.Module, mode: str) -> int:
    """Replace every linear of ``model`` (a dense ``nn.Linear`` or a oneDNN-packed one) by its weight-only
    quantized form, in place; returns how many were replaced. ``none`` replaces nothing."""
    reason = available(mode)
    if reason:
        raise RuntimeError(reason)
    if mode == "none":
        return 0
    make = Int8WeightLinear if mode == "int8" else Int4WeightLinear
    count = 0
    with torch.no_grad():
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) or type(child).__name__ == "PackedLinear":
                    setattr(module, name, make(child))
                    count += 1
    model._kvbench_weight_quant = mode
    return count


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every linear as stored (quantized or dense), every norm, and one
    embedding row (a step looks up one token's row, not the table)."""
    total = 0
    for module in model.modules():
        if isinstance(module, (Int8WeightLinear, Int4WeightLinear)):
            total += module.stored_bytes
        elif isinstance(module, nn.Embedding):
            total += module.weight.shape[1] * module.weight.element_size()
        elif isinstance(module, nn.Linear):
            total += _nbytes(module.weight, module.bias)
        elif type(module).__name__ == "PackedLinear":
            total += module.in_features * module.out_features * module.packed.element_size() + _nbytes(module.bias)
        else:
            total += sum(_nbytes(p) for p in module.parameters(recurse=False))
    return total
