"""`--target openai:URL` (bench/scenarios/endpoint.py): a request workload replayed against a server, with the
serving columns of the in-process path, failures counted by reason, usage-based token counts with the tokenizer
fallback said in the row, and greedy agreement against local `sequential` tokens.

Our server on random:tiny-llama is the honest target; a small fake server plays the broken ones (an HTTP error,
a stream cut short, a hang, no usage). llama.cpp's server is the third-party target, in a long test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from bench.scenarios.endpoint import Outcome, run_target, target_url, token_stamps
from bench.scenarios.requests import ServedRequest, Slo, serving_metrics
from bench.serving.app import create_app
from bench.serving.server import build_engine, serving_in_thread
from bench.serving.service import Limits
from bench.workloads.requests import RequestWorkload
from strategies.core.requests import InstantClock, Request
from strategies.core.sampling import GREEDY
from strategies.registry import compose

SMALL = RequestWorkload("small", "4 short requests", 4, context_tokens=(0, 6), new_tokens=(3, 6))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_our_server_as_target_gives_sequential_tokens_and_the_serving_columns():
    served = build_engine("random:tiny-llama", "continuous", {"continuous": {"num_blocks": 256}})
    model, tokenizer = served.loaded.model, served.loaded.tokenizer
    requests = SMALL.requests(tokenizer)
    comp = compose("sequential", {})
    reference = comp.decoder.serve(model, comp.cache_factory(model), requests, GREEDY, lambda i, t: None,
                                   InstantClock(), cache=comp.cache).tokens
    app = create_app(served.engine, tokenizer, "tiny", Limits(context=served.loaded.max_context))
    with serving_in_thread(app) as (url, _):
        row = run_target(f"openai:{url}", None, SMALL, tokenizer, 20.0, 1.0, 2, "ttft_ms=1e9,tpot_ms=1e9", 0, 0,
                         reference_tokens=reference)
    assert row["failed_requests"] == 0 and row["failed_by_reason"] == ""
    assert row["greedy_agreement"] == 1.0 and row["first_divergence"] == -1
    assert row["prompt_format"] == "token_ids"  # our server takes token ids, as OpenAI's API allows
    assert row["generated_tokens"] == sum(r.max_new_tokens for r in requests)
    assert row["output_tokens_source"] == "usage" and row["target_model"] == "tiny"
    assert row["goodput_rps"] == row["request_throughput_rps"] > 0  # every request within a huge SLO
    same = serving_metrics([ServedRequest(0.0, (0.1, 0.2), 1)], 1.0, Slo.parse(""))
    assert set(same) <= set(row)  # the in-process path's columns, every one
    assert (row["request_rate"], row["max_concurrency"], row["num_requests"]) == (20.0, 2, 4)


async def fake_completions(request: HttpRequest):
    """Behaviour by the prompt's first token: 0 fine without usage or ids, 1 HTTP 503, 2 a stream cut short,
    3 a hang, 4 fine with usage."""
    body = await request.json()
    kind = body["prompt"][0]
    if kind == 1:
        return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=503)
    if kind == 3:
        await asyncio.sleep(30)

    def chunk(text: str, finish: str | None = None) -> bytes:
        return f"data: {json.dumps({'choices': [{'index': 0, 'text': text, 'finish_reason': finish}]})}\n\n".encode()

    async def events():
        yield chunk(" hello")
        if kind == 2:
            return
        yield chunk(" world", None if kind == 4 else "length")
        if kind == 4:
            yield chunk(" again", "length")
            yield b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 3}}\n\n'
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


class Listed:
    """A workload of given requests (what the client is handed)."""

    def __init__(self, requests: list[Request]):
        self.list = requests

    def requests(self, tokenizer, rate: float, burstiness: float, seed: int) -> list[Request]:
        return self.list


def test_failures_are_counted_by_reason_and_the_tokenizer_fallback_is_said():
    from bench.models import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve("random:tiny-llama"))
    app = Starlette(routes=[Route("/v1/completions", fake_completions, methods=["POST"])])
    workload = Listed([Request(i, (kind, 5), 3) for i, kind in enumerate((0, 1, 2, 3, 4))])
    with serving_in_thread(app) as (url, server):
        row = run_target(f"openai:{url}", "fake", workload, tokenizer, math.inf, 1.0, None, "", 0, 0,
                         timeout_s=0.5, warmup=0)
        server.force_exit = True  # do not wait for the hanging handler on the way out
    assert row["failed_requests"] == 3
    assert row["failed_by_reason"] == "disconnect=1;http_503=1;timeout=1"
    assert row["output_tokens_source"] == "tokenizer+usage"
    fallback = len(tokenizer.encode(" hello world", add_special_tokens=False))
    assert row["generated_tokens"] == fallback + 3
    assert row["slo_attainment"] <= 2 / 5


def test_a_server_that_is_gone_fails_every_request_as_connect():
    port = free_port()  # nothing listens there now
    workload = Listed([Request(i, (1, 2), 2) for i in range(3)])
    row = run_target(f"openai:http://127.0.0.1:{port}/v1", "m", workload, None, math.inf, 1.0, None, "", 0, 0,
                     warmup=0)
    assert row["failed_requests"] == 3 and row["failed_by_reason"] == "connect=3"
    assert row["generated_tokens"] == 0


def test_token_stamps_follow_the_servers_count():
    def outcome(chunks, ids=None) -> Outcome:
        return Outcome(0, 0.0, chunks=chunks, token_ids=ids)

    assert token_stamps(outcome([(1.0, 2), (2.0, 1)], [5, 6, 7]), 3) == (1.0, 1.0, 2.0)
    assert token_stamps(outcome([(1.0, None), (2.0, None)]), 4) == (1.0, 2.0, 2.0, 2.0)
    assert token_stamps(outcome([(1.0, None), (2.0, None), (3.0, None)]), 2) == (1.0, 3.0)


@pytest.mark.parametrize("target", ["http://127.0.0.1:8000/v1", "openai:127.0.0.1:8000", "vllm:http://x/v1"])
def test_target_must_be_openai_and_a_url(target):
    with pytest.raises(ValueError, match=r"expected openai:http://HOST:PORT/v1"):
        target_url(target)


@pytest.mark.long
def test_llama_cpp_server_as_a_third_party_target():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama.cpp's server is an optional extra: pip install 'llama-cpp-python[server]'")
    from bench.models import EMBEDDED_GGUF, EMBEDDED_PACKAGE, load_tokenizer, resolve
    from bench.workloads.catalog import get_workload

    gguf = Path(importlib.util.find_spec(EMBEDDED_PACKAGE).submodule_search_locations[0]) / EMBEDDED_GGUF
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                               "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "llama.cpp's server did not start"
            time.sleep(0.5)
        tokenizer = load_tokenizer(resolve("smollm2-135m"))
        row = run_target(f"openai:{url}", None, get_workload("mixed-chat"), tokenizer, math.inf, 1.0, 4, "", 6, 0)
    finally:
        server.terminate()
        server.wait(30)
    assert row["failed_requests"] == 0, row["failure_example"]
    assert row["prompt_format"] == "text"  # llama-cpp-python's server refuses token-id prompts: sent as text
    assert row["generated_tokens"] > 0 and row["output_tokens_per_s"] > 0 and row["ttft_p50_ms"] > 0
