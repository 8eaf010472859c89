"""`quant-int8`, `quant-int4`, `quant-mixed` (int8 keys + int4 values): group-wise quantized K/V with a
full-precision residual window of recent tokens (KIVI; transformers' QuantizedCache).

Tokens are quantized in blocks: token ``i`` stays full precision until the sequence passes the next multiple of
``residual`` beyond it, so after every update the layer holds ``q = residual * ((T - 1) // residual)`` quantized
tokens and the last ``T - q`` (1..residual) in full precision. The quantized state is a function of ``T`` alone
and quantization is per token (see kv_quant), so a rollback inside the residual window is exact; one reaching into
the quantized part drops whole tokens from it (those left stay quantized until the next block boundary, where the
layout is again what it would have been).

Attention reads ``dequantize(old) ++ full-precision recent``, written into one work buffer per K and V shared by
all layers of the cache (attention consumes layer ``l``'s view before layer ``l+1`` updates). The buffer is held
between steps, so ``nbytes`` counts it: it costs one layer's worth of a full cache at ``max_len``, and saves
allocating (and page-faulting) a fresh tensor in every layer of every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from strategies.core.base import CacheStrategy, KVCache, KVLayer, kv_shape, num_cache_layers
from strategies.kernels import kv_quant


class WorkBuffer:
    """One [batch, heads, capacity, head_dim] buffer reused by every layer of a cache; grows if ever too small."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buffer: torch.Tensor | None = None

    def view(self, like: torch.Tensor, tokens: int) -> torch.Tensor:
        b, h, _, d = like.shape
        buf = self.buffer
        fits = buf is not None and buf.shape[:2] == (b, h) and buf.shape[3] == d and buf.dtype == like.dtype
        if not fits or buf.shape[2] < tokens:
            self.capacity = max(self.capacity, tokens)
            buf = self.buffer = torch.empty(b, h, self.capacity, d, dtype=like.dtype, device=like.device)
        return buf[:, :, :tokens]


class QuantizedLayer(KVLayer):
    lean_decode = True  # update() alone decides what is attended

    def __init__(self, key_bits: int, value_bits: int, group_size: int, residual: int, symmetric: bool,
                 work: tuple[WorkBuffer, WorkBuffer]):
        super().__init__()
        self.bits = (key_bits, value_bits)
        self.group_size, self.residual, self.symmetric = group_size, residual, symmetric
        self.work = work
        self.quantized: list[kv_quant.QTensor | None] = [None, None]  # keys, values
        self.num_quantized = 0
        self.keys = self.values = None  # the full-precision residual window

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.is_initialized = True
        out = []
        for i, (recent, new) in enumerate(((self.keys, key_states), (self.values, value_states))):
            n_res = 0 if recent is None else recent.shape[-2]
            buf = self.work[i].view(new, self.num_quantized + n_res + new.shape[-2])
            q = self.quantized[i]
            if q is not None:  # the old tokens as quantized; the recent and new ones exact
                kv_quant.dequantize(q, out=buf[:, :, : self.num_quantized])
            if n_res:
                buf[:, :, self.num_quantized : self.num_quantized + n_res] = recent
            buf[:, :, self.num_quantized + n_res :] = new
            out.append(buf)
        # clone: a fresh token's tensor may be a view into a larger projection output (gpt2's fused qkv)
        self.keys = key_states.clone() if self.keys is None else torch.cat([self.keys, key_states], dim=-2)
        self.values = value_states.clone() if self.values is None else torch.cat([self.values, value_states], dim=-2)
        self._quantize_up_to(self.residual * ((self.get_seq_length() - 1) // self.residual))
        return out[0], out[1]

    def _quantize_up_to(self, target: int) -> None:
        n = target - self.num_quantized
        if n <= 0:
            return
        for i, recent in enumerate((self.keys, self.values)):
            block = kv_quant.quantize(recent[:, :, :n], self.bits[i], self.group_size, self.symmetric)
            self.quantized[i] = kv_quant.cat(self.quantized[i], block)
        self.keys, self.values = self.keys[:, :, n:].clone(), self.values[:, :, n:].clone()
        self.num_quantized = target

    def get_seq_length(self) -> int:
        return self.num_quantized + (0 if self.keys is None else self.keys.shape[-2])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to drop")
        keep = max(0, self.get_seq_length() + tokens_to_remove)
        if keep >= self.num_quantized:
            n = keep - self.num_quantized
            self.keys, self.values = self.keys[:, :, :n].clone(), self.values[:, :, :n].clone()
            return
        self.quantized = [kv_quant.keep_first(q, keep) for q in self.quantized]
        self.num_quantized = keep
        self.keys, self.values = self.keys[:, :, :0].clone(), self.values[:, :, :0].clone()

    def reset(self) -> None:
        self.quantized, self.num_quantized, self.keys, self.values = [None, None], 0, None, None

    def tensors(self) -> list[torch.Tensor]:
        held = [t for q in self.quantized if q is not None for t in q.tensors()]
        held += [t for t in (self.keys, self.values) if t is not None]
        return held + [w.buffer for w in self.work if w.buffer is not None]


@dataclass
class QuantizedCache(CacheStrategy):
    """Shared parameters; the three registered names fix the bits of keys and values."""

    key_bits = 8
    value_bits = 8
    group_size: int = field(default=64, metadata={
        "help": "values per fp16 scale and zero-point, >= 1; divides head_dim (larger: one group per head)"})
    residual: int = field(
        default=32, metadata={"help": "recent tokens kept in full precision, quantized in blocks of this many, >= 1"})
    symmetric: bool = field(default=False, metadata={
        "help": "true: a scale per group, zero at 0; false: a scale and a zero-point per group"})

    def validate(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 and divide head_dim, got {self.group_size}")
        # a group_size above head_dim means one group per head (so the default runs on small heads too)
        if self.residual < 1:
            raise ValueError(f"residual must be >= 1 (recent tokens kept in full precision), got {self.residual}")

    def group_for(self, model: PreTrainedModel) -> int:
        """The group size used on ``model``: ``group_size``, or one group per head when heads are smaller."""
        return min(self.group_size, kv_shape(model.config)[2])

    def supports(self, model: PreTrainedModel) -> str | None:
        head_dim = kv_shape(model.config)[2]
        if head_dim % self.group_for(model):
            return f"group_size {self.group_size} must divide head_dim {head_dim}"
        return None

    def new_cache(self, model: PreTrainedModel, batch: int, max_len: int) -> KVCache:
        if reason := self.supports(model):
            raise ValueError(f"{self.name}: {reason}")
        work = (WorkBuffer(max_len), WorkBuffer(max_len))
        return KVCache([QuantizedLayer(self.key_bits, self.value_bits, self.group_for(model), self.residual,
                                       self.symmetric, work) for _ in range(num_cache_layers(model.config))])


@dataclass
class QuantInt8(QuantizedCache):
    name = "quant-int8"
    summary = "K and V group-wise int8 (fp16 scales/zeros), recent `residual` tokens in full precision"


@dataclass
class QuantInt4(QuantizedCache):
    name = "quant-int4"
    summary = "K and V group-wise int4 packed two per byte (fp16 scales/zeros), recent tokens full precision"
    key_bits = 4
    value_bits = 4


@dataclass
class QuantMixed(QuantizedCache):
    name = "quant-mixed"
    summary = "int8 keys + int4 values (keys are the more sensitive), recent tokens full precision"
    key_bits = 8
    value_bits = 4
