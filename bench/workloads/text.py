"""The text every workload is made of: chat questions, and real English prose derived at run time from the
installed Python standard library's docstrings, with the token helpers both kinds of workload share.

Nothing is downloaded and no prose is pasted into the repo: the prose of the stdlib's documentation strings is
collected in a fixed module order, so the text is the same for a given Python version.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re

from transformers import PreTrainedTokenizerBase

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
QUALITY_OFFSET = 20_000  # prompts draw context from the first 20k tokens, quality text from after them

# Modules whose docstrings are long, prose-heavy and present in every CPython build.
SOURCE_MODULES = (
    "argparse", "asyncio.events", "collections", "configparser", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email.message", "enum", "fractions", "functools", "heapq", "http.client",
    "http.cookiejar", "inspect", "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing.pool",
    "optparse", "os", "pathlib", "pickle", "pydoc", "random", "shutil", "socket", "statistics", "string",
    "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest.case", "urllib.parse", "uuid", "zipfile",
)
_PROSE_LINE = re.compile(r"^[A-Z][^<>{}\[\]|=#$@\\]*[a-z][^<>{}\[\]|=#$@\\]*$")


def _paragraphs(doc: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = [line.strip() for line in block.splitlines()]
        text = " ".join(lines)
        words = text.split()
        # Keep prose: sentences of ordinary words, no doctest, no indented code or tables.
        if (len(words) >= 12 and text.isascii() and text.rstrip().endswith(".") and _PROSE_LINE.match(text)
                and not any(line.startswith((">>>", "...", "-", "*", ":")) for line in lines)):
            out.append(text)
    return out


@functools.cache
def stdlib_prose() -> str:
    """Paragraphs of English prose from stdlib docstrings, deduplicated, in a fixed order."""
    seen: set[str] = set()
    paragraphs: list[str] = []
    for name in SOURCE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module] + [obj for _, obj in sorted(vars(module).items()) if inspect.isclass(obj)
                              or inspect.isfunction(obj)]
        for obj in objects:
            members = [obj] + ([m for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
                               if inspect.isclass(obj) else [])
            for member in members:
                if getattr(member, "__module__", name) != name:
                    continue
                for para in _paragraphs(inspect.getdoc(member) or ""):
                    if para not in seen:
                        seen.add(para)
                        paragraphs.append(para)
    return "\n\n".join(paragraphs)


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


def quality_text(tokenizer: PreTrainedTokenizerBase, context: int, tokens: int) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of real prose past ``QUALITY_OFFSET``, disjoint from the prompts' context."""
    ids = prose_tokens(tokenizer, QUALITY_OFFSET, context + tokens)
    return ids[:context], ids[context:]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str, system: str = "") -> list[int]:
    """The ids of one user turn (after a ``system`` turn when given), through the chat template where there is one."""
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "system", "content": system}] if system else []
        return list(tokenizer.apply_chat_template(turns + [{"role": "user", "content": text}],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False))
    return tokenizer(f"{system}\n\n{text}" if system else text).input_ids
