"""Workloads named by a spec rather than listed: token-length controlled ``random:`` ones and the user's own files.

- ``random:in=512,out=128,n=32[,prefix=256]``: as vLLM's random dataset, ``n`` requests of exactly ``in`` prompt
  tokens (after a shared ``prefix`` of that many tokens) and ``out`` new tokens each, the tokens taken from the offline
  prose (bench/workloads/text.py), no chat template: the lengths are exact.
- ``prompts:FILE.jsonl``: one request per line, ``{"prompt": "...", "max_tokens": N}`` or
  ``{"messages": [{"role": ..., "content": ...}, ...], "max_tokens": N}`` (the model's chat template applies).
- ``sharegpt:FILE.json[,n=N]``: a local copy of a ShareGPT-format file, as vLLM reads it: each conversation's first
  human turn is the prompt, the reply's token count its max new tokens (the first N usable ones).

All are request workloads (arrivals, --request-rate, --max-concurrency). A bad file is one line naming the line
(or entry) and the problem.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from bench.workloads.requests import RequestWorkload
from bench.workloads.text import QUALITY_OFFSET, encode_prompt, prose_tokens

SPEC_PREFIXES = ("random:", "prompts:", "sharegpt:")
RANDOM_KEYS = {"in": "prompt tokens per request", "out": "new tokens per request", "n": "requests",
               "prefix": "tokens of a prefix every request shares (default 0)"}
SHAREGPT_DEFAULT_N = 100


def is_spec(name: str) -> bool:
    return name.startswith(SPEC_PREFIXES)


def split_workloads(text: str) -> list[str]:
    """A comma list of workloads where ``random:in=8,out=4,n=2`` keeps its own commas: a ``key=value`` piece
    continues the spec before it."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if out and "=" in piece and ":" not in piece and is_spec(out[-1]):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def _options(spec: str, allowed: dict[str, str], what: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if key not in allowed or not eq:
            raise ValueError(f"bad {what} option {item!r}; allowed: " + ", ".join(f"{k}=N ({v})"
                                                                              for k, v in allowed.items()))
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"{what} option {key}={value!r} is not a whole number") from None
    return values


@dataclass(frozen=True)
class RandomWorkload(RequestWorkload):
    prompt_tokens: int = 16
    output_tokens: int = 4
    prefix_tokens: int = 0

    def build(self, tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], int]]:
        # Prompt tokens come from the prose before QUALITY_OFFSET (the quality text lies beyond it), wrapping around.
        span = QUALITY_OFFSET - self.prefix_tokens - self.prompt_tokens
        prefix = prose_tokens(tokenizer, 0, self.prefix_tokens) if self.prefix_tokens else []
        return [(prefix + prose_tokens(tokenizer, self.prefix_tokens + (i * self.prompt_tokens) % span,
                                       self.prompt_tokens), self.output_tokens) for i in range(self.num_requests)]


def random_workload(name: str) -> RandomWorkload:
    opts = _options(name.removeprefix("random:"), RANDOM_KEYS, "random workload")
    missing = [k for k in ("in", "out", "n") if k not in opts]
    if missing:
        raise ValueError(f"random workload {name!r} lacks {', '.join(missing)}; e.g. random:in=512,out=128,n=32")
    if opts["in"] < 1 or opts["out"] < 1 or opts["n"] < 1 or opts.get("prefix", 0) < 0:
        raise ValueError(f"random workload {name!r}: in, out and n must be >= 1, prefix >= 0")
    if opts.get("prefix", 0) + opts["in"] > QUALITY_OFFSET // 2:
        raise ValueError(f"random workload {name!r}: prefix + in must be <= {QUALITY_OFFSET // 2} tokens")
    prefix = opts.get("prefix", 0)
    return RandomWorkload(name, f"{opts['n']} requests of {prefix}+{opts['in']} prompt tokens (prose, exact length)"
                          f", {opts['out']} new tokens each", opts["n"], context_tokens=(0, 0),
                          new_tokens=(opts["out"], opts["out"]), shared_context=bool(prefix),
                          prompt_tokens=opts["in"], output_tokens=opts["out"], prefix_tokens=prefix)


@dataclass(frozen=True)
class FileWorkload(RequestWorkload):
    """Requests read from a file: ``items`` holds (prompt text or chat messages, max new tokens)."""

    items: tuple[tuple[Any, int], ...] = ()

    def build(self, tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], int]]:
        return [(_encode(tokenizer, prompt), n) for prompt, n in self.items[: self.num_requests]]


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return encode_prompt(tokenizer, prompt)
    messages = [dict(m) for m in prompt]
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))
    return tokenizer("\n\n".join(m["content"] for m in messages)).input_ids


def _messages(value: Any, where: str) -> tuple:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: every message needs a string 'role' and 'content', got {json.dumps(m)[:80]}")
    return tuple(tuple(sorted(m.items())) for m in value)


def _file(path_text: str, what: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"{what} file {path_text!r} not found")
    return path


@functools.cache
def prompts_workload(name: str) -> FileWorkload:
    path = _file(name.removeprefix("prompts:"), "--prompts")
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg}); each line must be one object like "
                                 '{"prompt": "...", "max_tokens": 64}') from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected an object with 'prompt' or 'messages' and 'max_tokens'")
            if ("prompt" in obj) == ("messages" in obj):
                raise ValueError(f"{where}: needs exactly one of 'prompt' (a string) or 'messages' (a chat list)")
            if "prompt" in obj and not (isinstance(obj["prompt"], str) and obj["prompt"]):
                raise ValueError(f"{where}: 'prompt' must be a non-empty string")
            n = obj.get("max_tokens")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{where}: 'max_tokens' must be a whole number >= 1, got {json.dumps(n)}")
            items.append((obj["prompt"] if "prompt" in obj else _messages(obj["messages"], where), n))
    if not items:
        raise ValueError(f"{path}: no requests (one JSON object per line)")
    return FileWorkload(name, f"{len(items)} requests from {path.name}", len(items), (0, 0),
                        (min(n for _, n in items), max(n for _, n in items)), items=tuple(items))


@functools.cache
def sharegpt_workload(name: str) -> FileWorkload:
    path_text, _, rest = name.removeprefix("sharegpt:").partition(",")
    limit = _options(rest, {"n": "conversations to use (default 100)"}, "sharegpt").get("n", SHAREGPT_DEFAULT_N)
    path = _file(path_text, "sharegpt")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg}); a ShareGPT file is a JSON list of "
                         '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}') from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    items = []
    for i, entry in enumerate(data):
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str)
                                                  for t in turns):
            raise ValueError(f"{path}: entry {i}: needs 'conversations', a list of {{'from', 'value'}} objects")
        if len(turns) < 2 or not turns[0]["value"].strip() or not turns[1]["value"].strip():
            continue  # vLLM skips conversations without a prompt and a reply as well
        items.append((turns[0]["value"], turns[1]["value"]))
        if len(items) == limit:
            break
    if not items:
        raise ValueError(f"{path}: no conversation with a human turn and a reply")
    return ShareGptWorkload(name, f"{len(items)} ShareGPT conversations from {path.name}", len(items), (0, 0),
                            (1, 1), items=tuple(items))


@dataclass(frozen=True)
class ShareGptWorkload(FileWorkload):
    """Max new tokens of each request: its reply's length in the model's tokens (as vLLM's ShareGPT sampler)."""

    def build(self, tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], int]]:
        return [(encode_prompt(tokenizer, prompt), max(1, len(tokenizer(reply, add_special_tokens=False).input_ids)))
                for prompt, reply in self.items[: self.num_requests]]

    @property
    def max_new_tokens(self) -> int:
        return max(len(reply.split()) * 2 for _, reply in self.items)  # generous: only the context check reads it


def spec_workload(name: str) -> RequestWorkload:
    if name.startswith("random:"):
        return random_workload(name)
    if name.startswith("prompts:"):
        return prompts_workload(name)
    return sharegpt_workload(name)
