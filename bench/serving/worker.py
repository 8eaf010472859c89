"""The engine in its own thread, and the bridge to the event loop.

Torch work never runs on the event loop: one dedicated thread owns the ``Engine`` (which is single-threaded by
design) and runs its loop — take every queued command (add, abort), run one ``step``, hand its tokens back. The
event loop talks to it only through a thread-safe queue; tokens come back in ONE ``loop.call_soon_threadsafe``
per step (not one per token), which puts each request's outputs on that request's asyncio queue. Between steps
the engine publishes its ``stats()`` as a fresh dict, which /metrics reads without a lock (a reference swap).

An exception inside ``step`` fails every request then in the engine (they get the error, their blocks are
aborted) and the thread carries on: one bad batch must not take the server down.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from strategies.core.sampling import Sampling
from strategies.scheduling.engine import Engine, StepOutput


@dataclass(frozen=True)
class Add:
    request_id: Hashable
    prompt: Sequence[int]
    max_new_tokens: int
    sampling: Sampling | None
    stop_on_eos: bool
    sink: asyncio.Queue


@dataclass(frozen=True)
class Abort:
    request_id: Hashable


_STOP = object()


class EngineWorker:
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop):
        self.engine, self.loop = engine, loop
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.sinks: dict[Hashable, asyncio.Queue] = {}  # engine thread only
        self.snapshot: dict[str, Any] = engine.stats()
        self.thread = threading.Thread(target=self._run, name="kvbench-engine", daemon=True)

    # --- event-loop side ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def submit(self, request_id: Hashable, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling | None,
               stop_on_eos: bool) -> asyncio.Queue:
        """Queue a request; its StepOutputs (or one exception) arrive on the returned queue."""
        sink: asyncio.Queue = asyncio.Queue()
        self.commands.put(Add(request_id, prompt, max_new_tokens, sampling, stop_on_eos, sink))
        return sink

    def abort(self, request_id: Hashable) -> None:
        self.commands.put(Abort(request_id))

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what the engine holds, then end the thread."""
        self.commands.put(_STOP)
        self.thread.join(timeout)

    # --- engine thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not (stopping and not self.engine.has_work):
            # block for the next command only when idle; otherwise take what is there and step
            block = not self.engine.has_work and not stopping
            while True:
                try:
                    command = self.commands.get(block=block)
                except queue.Empty:
                    break
                block = False
                if command is _STOP:
                    stopping = True
                else:
                    self._apply(command)
            if self.engine.has_work:
                self._step()
            self.snapshot = self.engine.stats()

    def _apply(self, command: Add | Abort) -> None:
        if isinstance(command, Abort):
            self.engine.abort(command.request_id)
            self.sinks.pop(command.request_id, None)
            return
        try:
            self.engine.add(command.request_id, command.prompt, command.max_new_tokens, command.sampling,
                            command.stop_on_eos)
        except ValueError as e:  # RequestTooLarge among them: the request is refused, the engine untouched
            self._send([(command.sink, e)])
            return
        except Exception as e:  # noqa: BLE001 - anything else fails this request, never the engine thread
            self.engine.abort(command.request_id)
            self._send([(command.sink, e)])
            return
        self.sinks[command.request_id] = command.sink

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - fail the requests in flight, keep serving the next ones
            failed = [(sink, e) for sink in self.sinks.values()]
            for request_id in list(self.sinks):
                self.engine.abort(request_id)
            self.sinks.clear()
            self._send(failed)
            return
        batch = []
        for out in outputs:
            sink = self.sinks.get(out.request_id)
            if sink is not None:
                batch.append((sink, out))
            if out.finished:
                self.sinks.pop(out.request_id, None)
        if batch:
            self._send(batch)

    def _send(self, batch: list[tuple[asyncio.Queue, StepOutput | Exception]]) -> None:
        try:
            self.loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the loop has closed (shutdown): nobody is left to read these
            pass


def _deliver(batch: list[tuple[asyncio.Queue, StepOutput | Exception]]) -> None:
    for sink, item in batch:
        sink.put_nowait(item)
