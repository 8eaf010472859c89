"""Build the served engine the way a benchmark cell builds its model, and run the app under uvicorn.

The model is loaded and its linears packed exactly as bench/cell.py does for a non-peer strategy, so the server's
greedy tokens are the benchmark's. ``uvicorn.Server.run`` installs uvicorn's SIGINT/SIGTERM handlers: on either it
stops accepting connections, lets the open requests finish (the drain; ``drain_timeout_s`` bounds it), then the
app's lifespan stops the engine thread.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from bench.models import LoadedModel, load_model
from strategies.caches.prefix_cache import PrefixCache
from strategies.kernels.weight_layout import LAYOUTS, prepare_weights
from strategies.registry import compose
from strategies.scheduling.continuous import ContinuousBatching
from strategies.scheduling.engine import Engine

SERVABLE = "continuous or continuous+prefix-cache"


@dataclass
class Served:
    loaded: LoadedModel
    engine: Engine
    strategy: str
    packed: bool


def build_engine(model: str, strategy: str, params: dict[str, dict[str, Any]], dtype: str = "float32",
                 device: str = "cpu", seed: int = 0, weights: str = "auto") -> Served:
    """Load ``model`` and build the engine for ``strategy``; ValueError (one line) for what cannot be served."""
    comp = compose(strategy, params)
    if not isinstance(comp.decoder, ContinuousBatching):
        raise ValueError(f"kvbench serve runs the continuous-batching engine: --strategies {SERVABLE}, "
                         f"not {strategy!r}")
    if weights not in LAYOUTS:
        raise ValueError(f"--weights must be one of {', '.join(LAYOUTS)}, got {weights!r}")
    loaded = load_model(model, dtype, device, seed)
    if comp.cache is not None and (reason := comp.cache.supports(loaded.model)):
        raise ValueError(f"{comp.cache.name} does not support {model}: {reason}")
    # as a benchmark cell lays them out (auto: the faster of stock and oneDNN-packed on this CPU, timed at start)
    packed = prepare_weights(loaded.model, weights, "none", peer=False)["weights"] == "packed"
    engine = Engine(loaded.model, comp.decoder, prefix_cache=isinstance(comp.cache, PrefixCache))
    return Served(loaded, engine, strategy, packed)


def run_server(app: FastAPI, host: str, port: int, drain_timeout_s: float | None = None) -> int:
    """Serve until SIGINT/SIGTERM (then drain and return 0); 1 when the address cannot be bound."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port or --host") from None
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=drain_timeout_s,
                            timeout_keep_alive=30)
    # uvicorn re-raises the signal it drained on once it is done, with the handlers it found installed: make those
    # no-ops, so a drained server returns 0 instead of dying of its own SIGTERM
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


@contextmanager
def serving_in_thread(app: FastAPI, host: str = "127.0.0.1") -> Iterator[tuple[str, uvicorn.Server]]:
    """The app on a free loopback port in a background thread: yields (base URL ending in /v1, server). Setting
    ``server.should_exit`` is what uvicorn's SIGTERM handler does (drain, then stop)."""
    sock = socket.socket()
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # off the main thread: no signal handlers
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}/v1", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
