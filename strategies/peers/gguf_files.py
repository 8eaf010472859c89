"""GGUF files of one model at the precisions the llama.cpp peer compares: written once next to the source.

The embedded model ships as Q4_1; kvbench's own fp32 model is that file dequantized, so the llama.cpp peer's
``f32`` is the very same weights as ours, and ``bf16`` / ``q8_0`` derive from those (never from a second source).
f32 and bf16 are written here with gguf-py (metadata copied, every tensor dequantized; bf16 only for matrices,
norms stay f32 as llama.cpp's own converter does); q8_0 and others are requantized from the f32 file by
llama.cpp itself (``llama_model_quantize``), so they are what llama.cpp users run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

FLOAT_KINDS = ("f32", "bf16")


def write_float_gguf(source: Path, target: Path, kind: str) -> Path:
    """``source`` with every tensor dequantized to f32 (``kind='f32'``) or bf16 matrices (``'bf16'``), written
    atomically to ``target``."""
    import gguf

    if kind not in FLOAT_KINDS:
        raise ValueError(f"unknown float GGUF kind {kind!r}; allowed: {', '.join(FLOAT_KINDS)}")
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".gguf-", suffix=".tmp")
    os.close(fd)
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or \
                field.name.startswith("GGUF."):
            continue  # written by the writer itself, or changed below
        kind_of = field.types[0]
        sub = field.types[-1] if kind_of == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind_of, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if kind == "f32" else gguf.LlamaFileType.MOSTLY_BF16)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if kind == "bf16" and values.ndim == 2:
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, target)
    return target


def decode_weight_bytes(path: Path) -> int:
    """Bytes of weights one llama.cpp decode step reads from the GGUF at ``path``: every tensor as stored, except
    that the token embedding is read one row for the lookup — and whole as well when the output projection is tied
    to it (no ``output.weight``), as kvbench counts its own model (strategies/kernels/weight_quant.py)."""
    import gguf

    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    total = sum(int(t.n_bytes) for name, t in tensors.items() if name != "token_embd.weight")
    embed = tensors.get("token_embd.weight")
    if embed is not None:
        row = int(embed.n_bytes) // (int(embed.n_elements) // int(embed.shape[0]))
        total += row + (0 if "output.weight" in tensors else int(embed.n_bytes))
    return total
