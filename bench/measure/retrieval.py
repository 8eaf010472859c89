"""Retrieval scores through a strategy's own cache path (issue #16): exact match of the generated answer and the
teacher-forced log-probability of the correct one, per haystack length and needle depth.

The generated tokens are the cell's own timed generation (the decoder prefilled the haystack into its cache and
decoded from it), so exact match costs nothing extra. The answer log-prob is ``decoder.score``: prefill the same
prompt into a fresh cache of the strategy, then teacher-force the answer through it one token at a time. The
log-prob keeps separating strategies where a small model's accuracy is all zeros or all ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from bench.workloads.retrieval import Case

# (prompt ids, answer ids) -> log-probs [len(answer), vocab] through the strategy's cache
Scorer = Callable[[list[int], list[int]], torch.Tensor]
# A hit is the value as a whole number in the first line of the answer: "482913." counts, "4829130" does not.
_NUMBER = re.compile(r"\d+")


def is_hit(generated: str, answer: str) -> bool:
    first_line = generated.strip().split("\n", 1)[0] if generated.strip() else ""
    return answer in _NUMBER.findall(first_line)


def answer_logprob(logprobs: torch.Tensor, answer_ids: Sequence[int]) -> float:
    """Sum of the answer tokens' log-probs (nats): log P(answer | prompt) under teacher forcing."""
    idx = torch.tensor(list(answer_ids), device=logprobs.device).unsqueeze(1)
    return logprobs.float().gather(1, idx).sum().item()


def case_key(case: Case) -> str:
    return f"{case.length}:{case.depth}"


def score_cases(cases: Sequence[Case], tokens: Sequence[Sequence[int]], tokenizer: PreTrainedTokenizerBase,
                scorer: Scorer) -> list[dict[str, Any]]:
    """Per case generated (one list of new tokens per case, in order; cases past ``tokens`` are not scored):
    {length, depth, hit, logprob, generated}."""
    out = []
    for case, generated in zip(cases, tokens):
        text = tokenizer.decode(list(generated), skip_special_tokens=True)
        out.append({"length": case.length, "depth": case.depth, "hit": is_hit(text, case.answer),
                    "logprob": answer_logprob(scorer(case.prompt, case.answer_ids), case.answer_ids),
                    "generated": text})
    return out


def retrieval_columns(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Row columns: the means (retrieval_acc, answer_logprob), per haystack length (``@1024``) and per case
    (``@1024:50``, the heatmap's cells), and how many cases were scored."""
    if not results:
        return {}
    row: dict[str, Any] = {"retrieval_cases": len(results), **_means(results, "")}
    for length in sorted({r["length"] for r in results}):
        row.update(_means([r for r in results if r["length"] == length], f"@{length}"))
    for r in results:
        row[f"retrieval_hit@{r['length']}:{r['depth']}"] = float(r["hit"])
        row[f"answer_logprob@{r['length']}:{r['depth']}"] = r["logprob"]
    return row


def _means(results: Sequence[dict[str, Any]], suffix: str) -> dict[str, float]:
    return {f"retrieval_acc{suffix}": sum(r["hit"] for r in results) / len(results),
            f"answer_logprob{suffix}": sum(r["logprob"] for r in results) / len(results)}


def compare_with_reference(results: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]],
                           atol: float = 1e-3) -> str | None:
    """None if every case the reference scored has the same hit and (within ``atol`` nats, float noise between
    cache paths) the same answer log-prob here; else the first case that differs. Lossless strategies must pass."""
    for ref, got in zip(reference, results):
        where = f"length {ref['length']} depth {ref['depth']}%"
        if ref["hit"] != got["hit"]:
            return f"retrieval at {where}: hit={got['hit']} but the reference's hit={ref['hit']}"
        if not math.isclose(ref["logprob"], got["logprob"], abs_tol=atol):
            return f"answer log-prob at {where}: {got['logprob']:.4f} but the reference's {ref['logprob']:.4f}"
    return None
