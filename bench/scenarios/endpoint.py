"""`--target openai:URL`: a request workload replayed against any OpenAI-compatible server (ours, llama.cpp's, vLLM,
SGLang, TGI), measured with the same columns as the in-process serving path (bench/scenarios/requests.py).

Each request is sent at its arrival time (``--request-rate``/``--burstiness``, at most ``--max-concurrency`` open at
once) to ``/completions`` as prompt token ids with ``ignore_eos`` and its ``max_tokens``, streaming, greedy unless a
sampling is given — so a server of the same model must produce the workload's exact tokens. As in-process
(bench/scenarios/requests.py and concurrency.py), every latency is measured from when the request is SENT: its
arrival, or with ``--max-concurrency`` the moment a slot frees (vLLM's rule). Each streamed chunk is a token
time; a chunk carrying k tokens (``token_ids``) gives its time to all k, as a multi-token emission does in-process.
Output tokens are the server's ``usage`` counts; a server that sends no usage is counted by re-tokenizing its text,
and the row says which (``output_tokens_source``).

A request that does not complete is a failure with a reason — ``http_<status>``, ``timeout``, ``connect`` (refused),
``disconnect`` (the connection or stream broke before the end), ``stream_error`` (an error event) — counted in
``failed_requests`` and ``failed_by_reason``; the run always completes and the others are measured.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from transformers import PreTrainedTokenizerBase

from bench.measure.quality import agreement
from bench.scenarios.requests import ServedRequest, Slo, serving_metrics
from strategies.core.requests import Request
from strategies.core.sampling import Sampling

SCHEME = "openai:"
WARMUP_REQUESTS = 2  # untimed requests first (the in-process path warms up too): first-call costs stay out


def target_url(target: str) -> str:
    """'openai:http://host:port/v1' -> 'http://host:port/v1'; ValueError naming the allowed form otherwise."""
    url = target[len(SCHEME):].rstrip("/") if target.startswith(SCHEME) else ""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--target {target!r}: expected openai:http://HOST:PORT/v1 (an OpenAI-compatible server)")
    return url


@dataclass
class Outcome:
    """One request as the client saw it."""

    index: int
    arrival_s: float
    chunks: list[tuple[float, int | None]] = field(default_factory=list)  # (time, token ids in it or None)
    token_ids: list[int] | None = None  # when the server returns them
    text: str = ""
    usage_tokens: int | None = None
    failure: str | None = None  # reason key
    detail: str = ""
    sent_s: float = 0.0
    end_s: float = 0.0


def payload(model: str, request: Request, sampling: Sampling | None, text: str | None = None) -> dict[str, Any]:
    prompt: Any = list(request.prompt) if text is None else text
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": request.max_new_tokens,
                            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
                            "return_token_ids": True, "temperature": 0.0}
    if sampling is not None and not sampling.is_greedy:
        body.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                    min_p=sampling.min_p, seed=sampling.seed + request.index)
    if sampling is not None and sampling.repetition_penalty != 1.0:
        body["repetition_penalty"] = sampling.repetition_penalty
    return body


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any], out: Outcome, t0: float) -> None:
    """Send one streaming request and read its chunks into ``out`` (raises on transport errors)."""
    finished = done = False
    async with client.stream("POST", f"{url}/completions", json=body) as resp:
        if resp.status_code >= 400:
            out.failure = f"http_{resp.status_code}"
            raw = (await resp.aread()).decode(errors="replace")
            try:
                out.detail = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                out.detail = raw[:200]
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                out.failure, out.detail = "stream_error", str(event["error"].get("message", event["error"]))
                return
            if event.get("usage"):
                out.usage_tokens = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or []:
                ids = choice.get("token_ids")
                out.chunks.append((time.perf_counter() - t0, len(ids) if ids is not None else None))
                if ids is not None:
                    out.token_ids = (out.token_ids or []) + list(ids)
                out.text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                finished = finished or choice.get("finish_reason") is not None
    if not (finished or done):
        out.failure, out.detail = "disconnect", "the stream ended before the request finished"


async def send(client: httpx.AsyncClient, url: str, model: str, request: Request, sampling: Sampling | None,
               t0: float, slots: asyncio.Semaphore | None, timeout_s: float, text: str | None = None) -> Outcome:
    out = Outcome(request.index, request.arrival_s)
    await asyncio.sleep(max(0.0, t0 + request.arrival_s - time.perf_counter()))
    try:
        if slots is not None:
            await slots.acquire()
        out.sent_s = time.perf_counter() - t0
        try:
            await asyncio.wait_for(stream_one(client, url, payload(model, request, sampling, text), out, t0), timeout_s)
        finally:
            if slots is not None:
                slots.release()
    except (TimeoutError, httpx.TimeoutException):
        out.failure, out.detail = "timeout", f"no complete answer within {timeout_s:g} s"
    except httpx.ConnectError as e:
        out.failure, out.detail = "connect", str(e) or "connection refused"
    except (httpx.TransportError, json.JSONDecodeError) as e:
        out.failure, out.detail = "disconnect", f"{type(e).__name__}: {e}"
    out.end_s = time.perf_counter() - t0
    return out


async def replay(url: str, model: str, requests: list[Request], sampling: Sampling | None,
                 max_concurrency: int | None, timeout_s: float, warmup: int,
                 texts: dict[int, str] | None = None) -> tuple[list[Outcome], float]:
    """Warm up untimed, then send every request at its arrival; (outcomes by request, run duration)."""
    width = max(1, max_concurrency or len(requests))
    limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        warm = [Request(r.index, r.prompt, r.max_new_tokens, 0.0) for r in requests[:warmup]]
        await asyncio.gather(*(send(client, url, model, r, sampling, time.perf_counter(), None, timeout_s,
                                    (texts or {}).get(r.index)) for r in warm))
        slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(send(client, url, model, r, sampling, t0, slots, timeout_s,
                                               (texts or {}).get(r.index)) for r in requests))
    return list(outcomes), max((o.end_s for o in outcomes), default=0.0)


def served_model(url: str, timeout_s: float = 10.0) -> str:
    """The first model the server lists (``--target-model`` not given); ValueError in one line if unreachable."""
    try:
        data = httpx.get(f"{url}/models", timeout=timeout_s).json()["data"]
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"--target {url}: cannot list its models at {url}/models ({type(e).__name__}: {e}); "
                         "is the server up? pass --target-model NAME to skip the lookup") from None


def accepts_token_ids(url: str, model: str, timeout_s: float = 60.0) -> bool:
    """OpenAI's /completions takes a prompt as token ids, and so do vLLM and ours; llama-cpp-python's server takes
    text only (a 4xx/5xx validation error naming the prompt). Asked once with a two-token prompt; any other answer
    or none: assume ids (the run itself then counts the failures)."""
    try:
        answer = httpx.post(f"{url}/completions", json={"model": model, "prompt": [1, 2], "max_tokens": 1},
                            timeout=timeout_s)
    except httpx.HTTPError:
        return True
    return not (answer.status_code >= 400 and "prompt" in answer.text)


def token_stamps(out: Outcome, count: int) -> tuple[float, ...]:
    """One time per output token: a chunk's time for each token it carried; without token ids, one per chunk,
    the last chunk's time repeated (or the surplus chunks dropped) to match the server's count."""
    if out.token_ids is not None and all(n is not None for _, n in out.chunks):
        return tuple(t for t, n in out.chunks for _ in range(n or 0))
    times = [t for t, _ in out.chunks]
    if len(times) >= count:
        return tuple(times[: count - 1] + times[-1:]) if count else ()
    return tuple(times + times[-1:] * (count - len(times)))


def run_target(target: str, target_model: str | None, workload: Any, tokenizer: PreTrainedTokenizerBase,
               rate: float, burstiness: float, max_concurrency: int | None, slo: str, num_requests: int, seed: int,
               reference_tokens: list[list[int]] | None = None, sampling: Sampling | None = None,
               timeout_s: float = 300.0, warmup: int = WARMUP_REQUESTS) -> dict[str, Any]:
    """Replay ``workload`` against ``target`` once; the row's figures (columns of bench/scenarios/requests.py plus
    the target's). ``reference_tokens[i]`` are request i's reference greedy tokens (sequential's), if known."""
    url = target_url(target)
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be >= 1 (or left out: no limit), got {max_concurrency}")
    model = target_model or served_model(url)
    requests = workload.requests(tokenizer, rate, burstiness, seed)
    requests = requests[:num_requests] if num_requests else requests
    # a server that takes text only gets the prompt decoded (special tokens kept as text): it tokenizes it itself
    texts = None if accepts_token_ids(url, model) else {r.index: tokenizer.decode(r.prompt) for r in requests}
    outcomes, duration = asyncio.run(replay(url, model, requests, sampling, max_concurrency, timeout_s, warmup,
                                            texts))
    row = target_figures(target, model, requests, outcomes, duration, Slo.parse(slo), tokenizer, reference_tokens,
                         max_concurrency)
    row.update({"request_rate": rate, "burstiness": burstiness, "prompt_format": "token_ids" if texts is None
                else "text"})
    return row


def target_figures(target: str, model: str, requests: list[Request], outcomes: list[Outcome], duration: float,
                   slo: Slo, tokenizer: PreTrainedTokenizerBase, reference: list[list[int]] | None,
                   max_concurrency: int | None) -> dict[str, Any]:
    served, tokens, sources, reasons = [], {}, Counter(), Counter()
    for r, out in zip(requests, outcomes):
        if out.failure is None and not out.chunks:
            out.failure, out.detail = "disconnect", "the stream carried no tokens"
        if out.failure is not None:
            reasons[out.failure] += 1
            served.append(ServedRequest(out.sent_s, (), len(r.prompt)))
            continue
        ids = out.token_ids if out.token_ids is not None else tokenizer.encode(out.text, add_special_tokens=False)
        count = out.usage_tokens if out.usage_tokens is not None else len(ids)
        sources["usage" if out.usage_tokens is not None else "tokenizer"] += 1
        tokens[r.index] = list(ids)
        served.append(ServedRequest(out.sent_s, token_stamps(out, count), len(r.prompt)))
    row = serving_metrics(served, duration, slo) if duration > 0 else {}
    failed = [o for o in outcomes if o.failure is not None]
    row.update({"target": target, "target_model": model, "num_requests": len(requests),
                "max_concurrency": max_concurrency or 0, "slo": str(slo),
                "prompt_tokens": sum(len(r.prompt) for r in requests),
                "generated_tokens": sum(len(s.stamps) for s in served),
                "short_requests": sum(1 for r, s in zip(requests, served) if s.stamps and
                                      len(s.stamps) < r.max_new_tokens),
                "failed_requests": len(failed),
                "failed_by_reason": ";".join(f"{k}={v}" for k, v in sorted(reasons.items())),
                "failure_example": f"request {failed[0].index}: {failed[0].failure}: {failed[0].detail}"[:300]
                if failed else "",
                "output_tokens_source": "+".join(sorted(sources)) or "none"})
    if reference is not None and tokens:
        done = sorted(tokens)
        frac, first = agreement([reference[i] for i in done], [tokens[i] for i in done])
        row.update({"greedy_agreement": frac, "first_divergence": first} if not math.isnan(frac) else {})
    return row
