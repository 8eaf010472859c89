"""`kvbench serve`: the wire format checked by the official `openai` client, every malformed request a 4xx in
OpenAI's error shape while the server keeps serving, stop strings, the response cache, sampling seeds, a client
that disconnects freeing its blocks, the SIGTERM drain, and the real model's greedy tokens equal to `sequential`'s.

Servers run in a thread on a free loopback port (uvicorn, as `kvbench serve` runs it); random:tiny-llama except the
one real-model case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import pytest

from bench.commands import serve as serve_command
from bench.serving.app import create_app
from bench.serving.server import build_engine, serving_in_thread
from bench.serving.service import Limits
from bench.serving.text import TextStream

MODEL = "tiny"


def make_server(spec: str = "random:tiny-llama", name: str = MODEL, response_cache: int = 0,
                strategy: str = "continuous", num_blocks: int = 512, **limits):
    served = build_engine(spec, strategy, {"continuous": {"num_blocks": num_blocks}})
    limits = Limits(context=served.loaded.max_context, **limits)
    return served, create_app(served.engine, served.loaded.tokenizer, name, limits, response_cache)


@pytest.fixture(scope="module")
def tiny():
    served, app = make_server(response_cache=8, max_body_bytes=8192, max_tokens=1900)
    with serving_in_thread(app) as (url, _):
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, app, served


def root(client: httpx.Client, path: str) -> str:
    """An endpoint outside /v1 (health, metrics)."""
    return str(client.base_url).rstrip("/").removesuffix("/v1") + path


def stats(app) -> dict:
    return app.state.kvbench["worker"].snapshot


def wait_idle(app, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = stats(app)
        if s["running"] == 0 and s["waiting"] == 0 and s["blocks_used"] == 0:
            return s
        time.sleep(0.05)
    raise AssertionError(f"engine still busy: {stats(app)}")


def test_official_openai_client_streams_chat_with_usage(tiny):
    import openai  # a dev dependency: a client we did not write checks the wire format
    client, _, _ = tiny
    api = openai.OpenAI(base_url=str(client.base_url).rstrip("/"), api_key="unused", max_retries=0)
    assert [m.id for m in api.models.list().data] == [MODEL]
    messages = [{"role": "user", "content": "Say something."}]
    chunks = list(api.chat.completions.create(model=MODEL, messages=messages, stream=True, max_tokens=6,
                                              temperature=0, stream_options={"include_usage": True},
                                              extra_body={"ignore_eos": True}))
    content = [c for c in chunks if c.choices]
    assert len(content) == 6  # one chunk per token
    assert content[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in content] == [None] * 5 + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    streamed = "".join(c.choices[0].delta.content or "" for c in content)
    whole = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert whole.choices[0].message.content == streamed
    assert whole.usage.completion_tokens == 6 and whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens


BIG = "x" * 9000
MALFORMED = [  # (what, path, request kwargs, status)
    ("bad JSON", "/completions", {"content": b'{"prompt": "hi",'}, 400),
    ("JSON array body", "/completions", {"json": ["hi"]}, 400),
    ("missing prompt", "/completions", {"json": {"model": MODEL}}, 400),
    ("prompt of wrong type", "/completions", {"json": {"prompt": 42}}, 400),
    ("empty prompt", "/completions", {"json": {"prompt": ""}}, 400),
    ("token id outside the vocabulary", "/completions", {"json": {"prompt": [1, 10**9]}}, 400),
    ("max_tokens as a string", "/completions", {"json": {"prompt": "hi", "max_tokens": "10"}}, 400),
    ("negative max_tokens", "/completions", {"json": {"prompt": "hi", "max_tokens": -5}}, 400),
    ("max_tokens over the limit", "/completions", {"json": {"prompt": "hi", "max_tokens": 5000}}, 400),
    ("prompt over the context", "/completions", {"json": {"prompt": [1] * 2040, "max_tokens": 16}}, 400),
    ("temperature out of range", "/completions", {"json": {"prompt": "hi", "temperature": -1}}, 400),
    ("top_p zero", "/completions", {"json": {"prompt": "hi", "top_p": 0}}, 400),
    ("n > 1", "/completions", {"json": {"prompt": "hi", "n": 3}}, 400),
    ("seed out of range", "/completions", {"json": {"prompt": "hi", "temperature": 1, "seed": 2**70}}, 400),
    ("five stop strings", "/completions", {"json": {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}}, 400),
    ("stream as a string", "/completions", {"json": {"prompt": "hi", "stream": "yes"}}, 400),
    ("unknown model", "/completions", {"json": {"prompt": "hi", "model": "gpt-9"}}, 404),
    ("wrong content type", "/completions", {"content": b'{"prompt": "hi"}', "headers": {"content-type": "text/plain"}},
     415),
    ("huge body", "/completions", {"json": {"prompt": BIG}}, 413),
    ("chat without messages", "/chat/completions", {"json": {"messages": []}}, 400),
    ("chat message with unknown role", "/chat/completions",
     {"json": {"messages": [{"role": "wizard", "content": "hi"}]}}, 400),
    ("chat content of wrong type", "/chat/completions", {"json": {"messages": [{"role": "user", "content": 7}]}},
     400),
    ("unknown endpoint", "/embeddings", {"json": {"input": "hi"}}, 404),
]


@pytest.mark.parametrize("what,path,kwargs,status", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_is_a_4xx_in_openai_shape_and_the_server_stays_up(tiny, what, path, kwargs, status):
    client, _, _ = tiny
    kwargs = {"headers": {"content-type": "application/json"}, **kwargs}
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and "\n" not in error["message"] and error["type"] == "invalid_request_error"
    assert client.get("/models").status_code == 200


def test_malformed_cases_cover_the_issue_list():
    assert len(MALFORMED) >= 15


def test_completion_token_ids_stop_strings_and_seeded_sampling(tiny):
    client, _, served = tiny
    body = {"model": MODEL, "prompt": "The cache", "max_tokens": 12, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True}
    first = client.post("/completions", json=body).json()["choices"][0]
    ids = first["token_ids"]
    assert len(ids) == 12 and first["text"] == served.loaded.tokenizer.decode(ids, skip_special_tokens=True)
    text = first["text"]
    stop = next(text[i : i + 3] for i in range(len(text) // 2, len(text) - 3) if text[i : i + 3].strip())
    stopped = client.post("/completions", json={**body, "stop": [stop]}).json()["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["text"] == text[: text.find(stop)]
    sampled = {**body, "temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 7}
    a, b = (client.post("/completions", json=sampled).json()["choices"][0]["token_ids"] for _ in range(2))
    assert a == b and len(a) == 12


def test_text_stream_holds_back_a_possible_stop_string(tiny):
    tok = tiny[2].loaded.tokenizer
    stream = TextStream(tok, ["world!"])
    released = "".join(stream.add(t) for t in tok("Hello world! Bye").input_ids)
    assert released == "Hello " and stream.stopped and stream.finish() == ""
    plain = TextStream(tok, ["zzz"])
    assert "".join(plain.add(t) for t in tok("naïve café").input_ids) + plain.finish() == "naïve café"


def test_response_cache_answers_identical_greedy_requests(tiny):
    client, _, _ = tiny
    body = {"prompt": "A response cache", "max_tokens": 5, "temperature": 0, "ignore_eos": True}

    def hits() -> float:
        line = next(x for x in client.get(root(client, "/metrics")).text.splitlines()
                    if x.startswith("kvbench_response_cache_hits_total"))
        return float(line.split()[-1])

    before = hits()
    first = client.post("/completions", json=body).json()["choices"][0]["text"]
    again = client.post("/completions", json={**body, "stream": True})
    streamed = "".join(json.loads(line[6:])["choices"][0]["text"] for line in again.text.splitlines()
                       if line.startswith("data: {"))
    assert streamed == first and hits() == before + 1
    client.post("/completions", json={**body, "temperature": 0.5, "seed": 1})
    assert hits() == before + 1  # sampled requests are never cached


def test_metrics_health_and_models(tiny):
    client, _, _ = tiny
    text = client.get(root(client, "/metrics")).text
    for name in ("kvbench_requests_running", "kvbench_requests_waiting", "kvbench_kv_blocks_used",
                 "kvbench_kv_blocks_total 512.0", "kvbench_prefix_cache_hit_rate", "kvbench_preemptions_total",
                 "kvbench_generation_tokens_total", "kvbench_response_cache_hits_total"):
        assert name in text
    assert client.get(root(client, "/health")).json() == {"status": "ok"}


def test_a_client_that_disconnects_frees_its_blocks(tiny):
    client, app, _ = tiny
    before = stats(app)["tokens_generated"]
    body = {"prompt": "Tell me everything.", "max_tokens": 1900, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with client.stream("POST", "/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert stats(app)["blocks_used"] > 0
    after = wait_idle(app)
    assert after["tokens_generated"] - before < 1900  # aborted, not run to the end
    with pytest.raises(httpx.ReadTimeout):  # a plain request, the client gives up waiting
        client.post("/completions", json={**body, "stream": False}, timeout=0.5)
    after = wait_idle(app)
    assert after["tokens_generated"] - before < 2 * 1900


def test_drain_finishes_open_streams_then_stops():
    served, app = make_server(strategy="continuous+prefix-cache")
    assert served.engine.prefix is not None  # the prefix cache is on
    with serving_in_thread(app) as (url, server):
        with httpx.Client(base_url=url, timeout=60) as client:
            body = {"prompt": "Drain", "max_tokens": 8, "temperature": 0, "ignore_eos": True, "stream": True}
            with client.stream("POST", "/completions", json=body) as r:
                lines = r.iter_lines()
                next(line for line in lines if line.startswith("data:"))
                server.should_exit = True  # what uvicorn's SIGTERM handler does
                rest = [line for line in lines if line.startswith("data:")]
            assert rest[-1] == "data: [DONE]" and len(rest) == 7 + 1
            deadline = time.monotonic() + 10
            while server.started and not server.should_exit and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/models", timeout=2)


@pytest.mark.parametrize("argv,message", [
    (["--strategies", "sequential"], "runs the continuous-batching engine"),
    (["--param", "continuous.max_batch=1,2"], "one value per parameter"),
    (["--param", "nosuch.key=1"], "unknown strategy"),
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--model", "random:tiny-llama", "--dtype", "float8"], "unknown dtype"),
])
def test_serve_command_refuses_bad_options_in_one_line(argv, message, capsys):
    parser = argparse.ArgumentParser(prog="kvbench")
    serve_command.add_parser(parser.add_subparsers(dest="command"))
    assert serve_command.run(parser.parse_args(["serve", *argv])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_real_model_greedy_tokens_equal_sequential():
    from bench.workloads.text import encode_prompt
    from strategies.core.requests import InstantClock, Request
    from strategies.core.sampling import GREEDY
    from strategies.registry import compose

    served, app = make_server("smollm2-135m", "smollm2-135m", num_blocks=64)  # 64 x 16 tokens: two short requests
    tokenizer, model = served.loaded.tokenizer, served.loaded.model
    prompts = [encode_prompt(tokenizer, q) for q in ("What does a KV cache hold?", "Name three colours.")]
    comp = compose("sequential", {})
    requests = [Request(i, tuple(p), 8) for i, p in enumerate(prompts)]
    reference = comp.decoder.serve(model, comp.cache_factory(model), requests, GREEDY, lambda i, t: None,
                                   InstantClock(), cache=comp.cache).tokens

    async def together(url: str) -> list[list[int]]:  # concurrent: the two share the engine's batches
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            answers = await asyncio.gather(*(client.post("/completions", json={
                "prompt": p, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "return_token_ids": True})
                for p in prompts))
        return [a.json()["choices"][0]["token_ids"] for a in answers]

    with serving_in_thread(app) as (url, _):
        assert asyncio.run(together(url)) == reference


def test_serve_lays_out_weights_as_a_cell_does(monkeypatch):
    """auto keeps whichever layout the probe timed faster on this CPU, as benchmark cells do; a bad value is named."""
    from strategies.kernels import weight_layout

    for stock_ms, packed_ms in ((5.0, 1.0), (1.0, 5.0)):
        monkeypatch.setattr(weight_layout, "probe_layouts", lambda model, s=stock_ms, p=packed_ms: {
            "stock_ms": s, "packed_ms": p})
        served = build_engine("random:tiny-llama", "continuous", {}, weights="auto")
        assert served.packed == (packed_ms < stock_ms)
    with pytest.raises(ValueError, match="--weights must be one of auto, packed, stock, got 'fast'"):
        build_engine("random:tiny-llama", "continuous", {}, weights="fast")
