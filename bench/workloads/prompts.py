"""Workloads: the prompts a cell runs, how many tokens each generates, and the text quality is scored on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from bench.workloads.text import stdlib_prose

CHAT_PROMPTS = (
    "Explain in a few sentences why the sky looks blue during the day and red at sunset.",
    "Write a short, friendly email asking a colleague to review a pull request before Friday.",
    "What are three practical ways to reduce the memory a Python program uses?",
    "Give me a simple recipe for a vegetable soup that takes less than thirty minutes.",
    "Summarize the difference between a process and a thread for a new programmer.",
    "Suggest a name for a small bakery and explain why it would attract customers.",
    "How does a bicycle stay upright while it is moving? Keep the answer short.",
    "List the steps to plan a weekend hiking trip for two people.",
    "Why do we have leap years, and how often do they happen?",
    "Describe what a hash table is and when you would use one.",
)
# Editing requests whose answer mostly copies the given text: where prompt lookup should shine.
COPY_EDIT_PROMPTS = (
    "Fix the spelling mistakes in this paragraph and write it out again in full:\n\n"
    "The comittee met on tuesday to discus the new budjet. Every departement was asked to send a short report "
    "before the end of the month, and the reports will be reveiwed by the finance team. The meeting ended "
    "with a vote to keep the libary open on weekends during the sumer.",
    "Rewrite this note with correct capitalization and punctuation, keeping every word:\n\n"
    "dear sam thanks for the update on the garden project the new beds are ready and the tomatoes went in on "
    "monday we still need two bags of soil and a longer hose could you pick them up on your way home "
    "see you at dinner alex",
)
COPY_EDIT_CONTEXT = (  # (question, prose tokens, prose offset): real stdlib prose the model is asked to reproduce
    ("Repeat the text above word for word.", 100, 1000),
    ("Copy the text above exactly, then stop.", 100, 8000),
)
SMOKE_PROMPTS = ("What is the capital of France?", "Name two primary colors.")


@dataclass(frozen=True)
class Message:
    """A prompt: optional context (long real text) followed by a question."""

    question: str
    context_tokens: int = 0  # tokens of stdlib prose placed before the question
    context_offset: int = 0  # where in the prose the context starts (in tokens)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    messages: tuple[Message, ...]
    max_new_tokens: int
    quality_context: int = 128  # tokens of prose before the scored continuation
    quality_tokens: int = 128  # continuation tokens scored through the cache path, one at a time
    reference_prompts: int | None = None  # prompts naive runs (None: all); naive is O(n²), agreement is over these
    tags: tuple[str, ...] = field(default_factory=tuple)

    def prompts(self, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        """Token ids of every prompt; instruct models get their chat template."""
        return [encode_prompt(tokenizer, self.render(m, tokenizer)) for m in self.messages]

    def render(self, message: Message, tokenizer: PreTrainedTokenizerBase) -> str:
        if not message.context_tokens:
            return message.question
        context = prose_tokens(tokenizer, message.context_offset, message.context_tokens)
        return tokenizer.decode(context) + "\n\n" + message.question

    def quality_text(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of real prose, disjoint from the prompts' context."""
        ids = prose_tokens(tokenizer, QUALITY_OFFSET, self.quality_context + self.quality_tokens)
        return ids[: self.quality_context], ids[self.quality_context :]


QUALITY_OFFSET = 20_000  # prompts draw context from the first 20k tokens, quality text from after them


def prose_tokens(tokenizer: PreTrainedTokenizerBase, offset: int, count: int) -> list[int]:
    ids = _prose_ids(tokenizer)
    if offset + count > len(ids):
        raise ValueError(f"only {len(ids)} tokens of prose are available; asked for {offset + count}")
    return ids[offset : offset + count]


_PROSE_CACHE: dict[int, list[int]] = {}


def _prose_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    key = id(tokenizer)
    if key not in _PROSE_CACHE:
        _PROSE_CACHE[key] = tokenizer(stdlib_prose(), add_special_tokens=False).input_ids
    return _PROSE_CACHE[key]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))
    return tokenizer(text).input_ids


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("smoke", "2 short chat prompts, 8 new tokens: a seconds-long check of the whole path",
                 tuple(Message(q) for q in SMOKE_PROMPTS), max_new_tokens=8, quality_context=32,
                 quality_tokens=16),
        Workload("chat-short", "10 short chat prompts (~40 tokens), 128 new tokens each",
                 tuple(Message(q) for q in CHAT_PROMPTS), max_new_tokens=128, quality_context=128,
                 quality_tokens=128, reference_prompts=2),
        Workload("long-context", "2 prompts of ~1024 tokens of real prose plus a question, 32 new tokens",
                 (Message("Summarize the text above in two sentences.", 1000, 0),
                  Message("What is the main topic of the text above?", 1000, 5000)),
                 max_new_tokens=32, quality_context=1024, quality_tokens=64, reference_prompts=1),
        # Windows and eviction must show their cost: the answer sits ~2k tokens back, at the start of the text.
        Workload("long-doc", "2 prompts of ~2.2k tokens of real prose, then a question about its beginning; 32 new",
                 (Message("Near the beginning of the text above, HTTP CONNECT tunneling is described. What is the "
                          "host passed to the constructor used as? Answer in one sentence.", 2200, 10_000),
                  Message("What does the first paragraph of the text above explain? Answer briefly.", 2200, 4_000)),
                 max_new_tokens=32, quality_context=2048, quality_tokens=64, reference_prompts=1),
        Workload("copy-edit", "4 requests to repeat, fix or reformat a given passage, 96 new tokens each",
                 tuple(Message(q) for q in COPY_EDIT_PROMPTS) + tuple(Message(*c) for c in COPY_EDIT_CONTEXT),
                 max_new_tokens=96, quality_context=128, quality_tokens=64, reference_prompts=2),
    )
}


def all_workloads() -> dict:
    """Single-prompt workloads and request workloads (bench/workloads/requests.py, which builds on this module)."""
    from bench.workloads.requests import REQUEST_WORKLOADS

    return {**WORKLOADS, **REQUEST_WORKLOADS}


def get_workload(name: str) -> Workload:
    known = all_workloads()
    if name not in known:
        raise ValueError(f"unknown workload {name!r}; allowed: {', '.join(known)}")
    return known[name]


PromptBuilder = Callable[[PreTrainedTokenizerBase], list[list[int]]]
