"""fp32 linear layers through oneDNN with weights reordered once (what inductor's CPU freezing pass does).

Why: on this class of CPU (AMD EPYC) ``F.linear`` in fp32 goes to MKL's sgemm, which takes a generic code path
on non-Intel CPUs: a one-token decode reads the weights at ~9 GB/s, and a batch of 8 costs 2x a batch of 1.
oneDNN dispatches by ISA (AVX-512 here). Measured on SmolLM2-135M's 121 fused matrices, 2 threads: M=1 46 ->
25 ms, M=8 57 -> 24 ms, M=64 152 -> 111 ms. The packed tensor *replaces* the dense one, so no memory is added
(except a tied LM head, whose embedding keeps the dense copy); ``weight`` gives the dense values back on demand.

Every strategy of ours runs with packed weights; the transformers peers run the stock model (``peer = True``),
so "ours vs the library" includes this kernel choice, as llama.cpp's numbers include its own kernels.
``--weights stock`` turns it off. Only fp32 and bf16 on CPU with oneDNN present are packed; anything else is left
alone.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from transformers import PreTrainedModel

BATCH_HINT = 128  # oneDNN picks a blocked layout for this M; measured as good for M = 1..512


def can_pack(model: PreTrainedModel) -> bool:
    return (model.device.type == "cpu" and model.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and _onednn_takes(model.dtype))


@functools.cache
def _onednn_takes(dtype: torch.dtype) -> bool:
    """oneDNN's bf16 linear needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT; an AVX2-only CPU (AMD EPYC here) refuses
    the reorder with a RuntimeError, so such models stay stock instead of failing the cell."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), BATCH_HINT)
    except RuntimeError:
        return False
    return True


class PackedLinear(nn.Module):
    """An ``nn.Linear`` whose weight lives in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """Dense [out, in] values (a copy: for code that reads weights, never on the hot path)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def __deepcopy__(self, memo: dict) -> PackedLinear:  # oneDNN's opaque tensors have no storage to copy
        linear = self.to_linear()
        if self.bias is not None:
            linear.bias = copy.deepcopy(self.bias, memo)
        return PackedLinear(linear)

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight = nn.Parameter(self.weight, requires_grad=False)
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def pack_linear_weights(model: PreTrainedModel) -> int:
    """Replace every ``nn.Linear`` of ``model`` by a ``PackedLinear`` (once); returns how many were packed.

    Loaded weights are often views of a safetensors memory map, whose pages stay resident while any tensor of the
    file lives. So the remaining dense tensors of each module (norms, embeddings) are copied once its linears are
    packed: every map is released, and with a sharded checkpoint released shard by shard, keeping peak RSS near
    one copy of the weights."""
    if getattr(model, "_kvbench_packed", None) is not None or not can_pack(model):
        return getattr(model, "_kvbench_packed", None) or 0
    with torch.no_grad():
        model._kvbench_packed = _pack_children(model)
    return model._kvbench_packed


def _pack_children(module: nn.Module) -> int:
    # Recursive, holding no list of all modules: a replaced nn.Linear must die at once for its map to be released.
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, PackedLinear(child))
            count += 1
        else:
            count += _pack_children(child)
    for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        tensor.data = tensor.data.clone()  # off the file map
    return count


def unpacked(model: nn.Module) -> nn.Module:
    """``model`` with every ``PackedLinear`` turned back into an ``nn.Linear`` in place (for torch's own
    transforms, e.g. dynamic int8 quantization, which only know ``nn.Linear``)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, PackedLinear):
                setattr(module, name, child.to_linear())
    return model
