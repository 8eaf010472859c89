"""The FastAPI app of ``kvbench serve``: OpenAI's completions, chat completions and models, plus health and metrics.

Every refusal is a 4xx in OpenAI's error shape with one line saying what is wrong and what is allowed, and the
server keeps serving: the body is read under a size limit before it is parsed, parsing and validation raise
``ApiError``, and one handler turns every ApiError (and FastAPI's own 404/405) into that shape. A client that goes
away frees its blocks at once: a stream is aborted when the response is torn down unfinished (``EngineStream``),
a plain request when the client's disconnect arrives while it waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from bench.serving.cache import ResponseCache
from bench.serving.metrics import CONTENT_TYPE, ServerCounters, registry_for, render
from bench.serving.responses import Framing, sse
from bench.serving.schemas import ApiError, ChatRequest, CompletionRequest, parse
from bench.serving.service import Limits, Run, Service
from bench.serving.worker import EngineWorker
from strategies.scheduling.engine import Engine

DRAIN_FACTOR = 16  # an oversize body up to this many times the limit is read and dropped, so the client hears 413


class EngineStream(StreamingResponse):
    """A streaming response that always closes its run: a client gone mid-stream frees the request's blocks."""

    def __init__(self, content: AsyncIterator[bytes], run: Run, counters: ServerCounters):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.run, self.counters = run, counters

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            finished = self.run.outcome.finish_reason is not None
            self.counters.requests["ok" if finished else "client_disconnected"] += 1
            self.run.close()


async def read_body(request: Request, limit: int) -> bytes:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {kind or 'none'!r}")
    declared = request.headers.get("content-length", "")
    body, over = bytearray(), declared.isdigit() and int(declared) > limit
    if over and int(declared) > DRAIN_FACTOR * limit:
        raise ApiError(413, f"request body of {declared} bytes is over this server's limit of {limit} bytes")
    async for chunk in request.stream():
        if not over:
            body += chunk
            over = len(body) > limit
    if over:
        raise ApiError(413, f"request body is over this server's limit of {limit} bytes")
    return bytes(body)


async def wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine, tokenizer: Any, model_name: str, limits: Limits, response_cache: int = 0) -> FastAPI:
    counters, cache = ServerCounters(), ResponseCache(response_cache)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = EngineWorker(engine, asyncio.get_running_loop())
        worker.start()
        state["worker"] = worker
        state["service"] = Service(worker, tokenizer, model_name, limits, cache, counters)
        yield
        worker.stop()  # uvicorn has drained the open requests by now (SIGTERM: stop accepting, finish, exit)

    app = FastAPI(title="kvbench serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    registry = registry_for(lambda: state["worker"].snapshot if "worker" in state else engine.stats(), counters)
    app.state.kvbench = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        counters.requests[f"http_{e.status}"] += 1
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {e.detail}; endpoints: /v1/completions, " \
                  "/v1/chat/completions, /v1/models, /health, /metrics"
        return JSONResponse(ApiError(e.status_code, message).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        counters.requests["http_500"] += 1
        error = ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "kvbench", "max_model_len": limits.context}]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE)

    async def generate(request: Request, chat: bool) -> Response:
        service: Service = state["service"]
        req = parse(await read_body(request, limits.max_body_bytes), ChatRequest if chat else CompletionRequest)
        job = service.admit(req)
        run = await service.start(job)
        framing = Framing(chat, job.request_id, model_name, req.return_token_ids)
        if req.stream:
            return EngineStream(sse(run, framing, req.include_usage), run, counters)
        try:
            if not await finished_unless_gone(run, request):
                counters.requests["client_disconnected"] += 1
                return Response(status_code=499)  # nobody is listening; the code is nginx's, for the logs
        finally:
            run.close()
        counters.requests["ok"] += 1
        return JSONResponse(framing.whole(run.outcome, len(job.prompt)))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    return app


async def finished_unless_gone(run: Run, request: Request) -> bool:
    """Run to the end (True), or stop as soon as the client disconnects (False)."""

    async def consume() -> None:
        async for _ in run.pieces():
            pass

    work, gone = asyncio.ensure_future(consume()), asyncio.ensure_future(wait_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():
        work.cancel()
        return False
    work.result()  # an engine failure surfaces here as ApiError
    return True
