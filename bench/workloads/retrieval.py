"""Retrieval workloads built offline (issue #16): a fact hidden in a haystack of the derived stdlib prose at a
chosen depth, then asked for (needle-in-a-haystack; RULER's multi-key variant hides similar distractor facts too).

Nothing is downloaded or pasted: the haystack is ``bench.workloads.text``'s prose, and every key and value comes
from a seeded RNG, so a (tokenizer, seed) pair always builds the same prompts. Each prompt ends with the start of
the answer ("... The special magic number for X is"), so even a 135M model's first generated tokens are the
number: exact match and the teacher-forced answer log-prob then read the same positions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from bench.workloads.text import encode_prompt, prose_tokens, quality_text

SYLLABLES = ("ka", "lo", "mi", "ru", "te", "vo", "sa", "ni", "pe", "du", "ra", "zo", "fi", "ge", "ba", "ton")
HAYSTACK_OFFSET = 2000  # prose tokens skipped: past the long-context workloads' first contexts


@dataclass(frozen=True)
class Case:
    """One prompt of a retrieval workload and the answer it asks for."""

    length: int  # haystack tokens
    depth: int  # where the needle sits, percent of the haystack (0: first sentence, 100: last)
    prompt: list[int]  # chat-templated ids, ending with the answer's lead-in
    answer: str  # the value asked for, as text
    answer_ids: list[int]  # the tokens that should follow the prompt (a leading space, then the value)


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3))


def _insert(tokenizer: PreTrainedTokenizerBase, haystack: list[int], depth: int, needles: list[str]) -> str:
    """The haystack text with ``needles`` (sentences) placed at the sentence boundary nearest ``depth`` percent."""
    text = tokenizer.decode(haystack)
    cut = len(text) * depth // 100
    if 0 < cut < len(text):
        ends = [i + 1 for i in range(len(text) - 1) if text[i] == "." and text[i + 1] in " \n"]
        cut = min(ends, key=lambda i: abs(i - cut)) if ends else cut
    return (text[:cut].rstrip() + " " + " ".join(needles) + " " + text[cut:].lstrip()).strip()


def build_case(tokenizer: PreTrainedTokenizerBase, length: int, depth: int, seed: int, distractors: int = 0,
               offset: int = HAYSTACK_OFFSET) -> Case:
    """One needle (plus ``distractors`` similar facts under other keys, together at the same depth) in ``length``
    tokens of prose, then the question and the answer's lead-in."""
    rng = random.Random(f"{seed}:{length}:{depth}:{distractors}")
    keys: list[str] = []
    while len(keys) < 1 + distractors:
        if (k := _key(rng)) not in keys:
            keys.append(k)
    values = [str(rng.randrange(100_000, 1_000_000)) for _ in keys]
    facts = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values)]
    rng.shuffle(facts)
    asked, answer = keys[0], values[0]
    text = _insert(tokenizer, prose_tokens(tokenizer, offset, length), depth, facts)
    question = f"What is the special magic number for {asked} mentioned in the text above?"
    lead = f"The special magic number for {asked} is"
    prompt = encode_prompt(tokenizer, text + "\n\n" + question) + tokenizer(lead, add_special_tokens=False).input_ids
    whole = tokenizer(lead + " " + answer, add_special_tokens=False).input_ids
    head = tokenizer(lead, add_special_tokens=False).input_ids
    if whole[: len(head)] != head:  # a tokenizer that merges across the boundary: score the answer on its own
        return Case(length, depth, prompt, answer, tokenizer(" " + answer, add_special_tokens=False).input_ids)
    return Case(length, depth, prompt, answer, whole[len(head):])


@dataclass(frozen=True)
class RetrievalWorkload:
    """A prompt workload (runs in the prompt scenario like any other) whose prompts are retrieval cases; the cell's
    quality pass scores them (bench/measure/retrieval.py)."""

    name: str
    description: str
    lengths: tuple[int, ...]
    depths: tuple[int, ...] = (0, 25, 50, 75, 100)
    distractors: int = 0
    seed: int = 0
    max_new_tokens: int = 10  # the lead-in's answer is a space and six digits; a little slack for a stray token
    quality_context: int = 128  # the short perplexity window: retrieval scores are this workload's quality
    quality_tokens: int = 64
    reference_prompts: int | None = 1  # naive recomputes a 1k+ prompt per token: it proves agreement on one case
    tags: tuple[str, ...] = field(default_factory=lambda: ("retrieval",))
    is_retrieval_workload = True

    def cases(self, tokenizer: PreTrainedTokenizerBase) -> list[Case]:
        """Shortest haystack first (naive's reference prompts are the cheapest), then by depth."""
        return [build_case(tokenizer, n, d, self.seed, self.distractors) for n in self.lengths for d in self.depths]

    def prompts(self, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        return [c.prompt for c in self.cases(tokenizer)]

    def quality_text(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        return quality_text(tokenizer, self.quality_context, self.quality_tokens)


RETRIEVAL_WORKLOADS: dict[str, RetrievalWorkload] = {
    w.name: w
    for w in (
        RetrievalWorkload("needle", "needle in a haystack: a magic number in 1k/2k/4k tokens of prose at depths "
                          "0-100%, then asked for (15 prompts)", lengths=(1024, 2048, 4096)),
        RetrievalWorkload("multi-key", "RULER multi-key: the asked fact among 3 similar ones under other keys, "
                          "1k/2k/4k tokens at depths 0-100% (15 prompts)", lengths=(1024, 2048, 4096), distractors=3),
        RetrievalWorkload("needle-8k", "needle at depths 0-100% of a 7.5k-token haystack (near the 8k context)",
                          lengths=(7500,)),
        RetrievalWorkload("needle-short", "needle at depths 0/50/100% of 256 and 512 tokens: a cheap retrieval check",
                          lengths=(256, 512), depths=(0, 50, 100)),
    )
}
