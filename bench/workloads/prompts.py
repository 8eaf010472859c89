"""Single-prompt workloads: the prompts a cell runs, how many tokens each generates, and the text quality is
scored on. Request workloads (arrivals, many requests) are in requests.py; catalog.py names them all."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from bench.workloads.text import CHAT_PROMPTS, encode_prompt, prose_tokens, quality_text

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
        return quality_text(tokenizer, self.quality_context, self.quality_tokens)


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
