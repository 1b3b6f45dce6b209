"""Dynamic batching: concurrent requests share one length-sorted forward pass.

Alone, one text costs a forward pass of a few milliseconds, and a pass over a few dozen texts costs barely
more (the CPU's vector units and the GPU idle on one short sequence). So, as Triton's dynamic batcher,
TorchServe's ``batch_size``/``max_batch_delay`` and Ray Serve's ``@serve.batch`` do, the requests that
arrive within a short window are scored together: their texts go through the model's one inference path
(tasks/inference.py: length-sorted batches, the evaluation's precision) in one call, and each request gets
its own rows back, with the model version that scored them.

- The first request of a pass waits at most ``window_s`` for company, counted from its arrival or from
  the end of the previous pass, whichever is later: requests that arrived while the previous pass ran
  join the next one, and so do those its answers set off within the window (a client under load sends
  its next request a millisecond or so after its answer). Without that wait the answered clients miss
  the next pass by a hair, and a steady load splits into halves that alternate, each pass half full: on
  a CPU a pass of 8 short texts costs far less than two passes of 4.
- A pass takes at most ``max_requests`` requests and stops adding once it holds ``max_texts`` texts (the
  largest request the service accepts), so one pass never costs much more than the largest request.
- Requests hold the model they were admitted with; a pass scores each model's requests separately, so a
  hot swap never splits a request or mixes versions within one.
- ``max_requests=1`` scores one request per pass: the service as it was before batching.

All passes run on one inference thread (tasks/serve.py explains why); the collector is a coroutine on the
server's event loop, started by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

M = TypeVar("M")  # a model: anything the scoring function takes
R = TypeVar("R")  # one text's result

log = logging.getLogger("transferline.serve")


@dataclass(frozen=True)
class BatchSettings:
    window_s: float  # how long the first request of a pass waits for others
    max_requests: int  # requests per pass at most (1: no batching)
    max_texts: int  # a pass stops taking requests once it holds this many texts


@dataclass
class _Request(Generic[M, R]):
    model: M
    texts: list[str]
    arrived: float  # loop.time()
    answer: asyncio.Future[list[R]] = field(repr=False)


@dataclass
class BatchStats:
    """Counts since start, for /version: how much sharing happens."""

    passes: int = 0
    requests: int = 0
    texts: int = 0
    largest_pass: int = 0  # requests

    def describe(self) -> dict[str, Any]:
        mean = self.requests / self.passes if self.passes else 0.0
        return {**self.__dict__, "mean_requests_per_pass": round(mean, 2)}


class Batcher(Generic[M, R]):
    """Collects requests on the event loop and scores them in shared passes on `executor`.

    Args:
        score: score(model, texts) -> one result per text, in order; runs on `executor`.
    """

    def __init__(self, score: Callable[[M, list[str]], list[R]], executor: Executor, settings: BatchSettings):
        self.score, self.executor, self.settings = score, executor, settings
        self.stats = BatchStats()
        self._pending: collections.deque[_Request[M, R]] = collections.deque()
        self._arrived: asyncio.Event | None = None  # created on the serving loop

    async def submit(self, model: M, texts: list[str]) -> list[R]:
        """The results of `texts` scored by `model`, once a pass has scored them."""
        loop = asyncio.get_running_loop()
        request = _Request(model, texts, loop.time(), loop.create_future())
        self._pending.append(request)
        self._event().set()
        return await request.answer

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Collect and score requests (run()) for the duration of the block: the app's lifespan."""
        collector = asyncio.create_task(self.run(), name="batch-collector")
        try:
            yield
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector

    async def run(self) -> None:
        """Score pending requests pass after pass, until cancelled."""
        loop = asyncio.get_running_loop()
        last_pass_end = float("-inf")
        while True:
            await self._event().wait()
            opened = max(self._pending[0].arrived, last_pass_end)
            wait = opened + self.settings.window_s - loop.time()
            if wait > 0 and not self._full():
                await asyncio.sleep(wait)
            batch = self._take()
            if not self._pending:
                self._event().clear()
            try:
                await self._score(batch)
            except Exception as err:  # never leave a caller waiting, whatever went wrong
                log.exception("a batched inference pass failed")
                _fail(batch, err)
            last_pass_end = loop.time()

    def _event(self) -> asyncio.Event:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        return self._arrived

    def _full(self) -> bool:
        texts = sum(len(r.texts) for r in self._pending)
        return len(self._pending) >= self.settings.max_requests or texts >= self.settings.max_texts

    def _take(self) -> list[_Request[M, R]]:
        batch = [self._pending.popleft()]
        texts = len(batch[0].texts)
        while self._pending and len(batch) < self.settings.max_requests:
            if texts + len(self._pending[0].texts) > self.settings.max_texts:
                break
            batch.append(self._pending.popleft())
            texts += len(batch[-1].texts)
        return batch

    async def _score(self, batch: list[_Request[M, R]]) -> None:
        """One forward call per model among the batch's requests (one, except during a hot swap)."""
        loop = asyncio.get_running_loop()
        live = [r for r in batch if not r.answer.done()]  # a caller that went away is not scored
        groups: dict[int, list[_Request[M, R]]] = {}
        for request in live:
            groups.setdefault(id(request.model), []).append(request)
        for requests in groups.values():
            texts = [text for r in requests for text in r.texts]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.score, requests[0].model, texts)
            except Exception as err:
                _fail(requests, err)
                continue
            log.debug("pass: %d requests, %d texts, %.1f ms", len(requests), len(texts),
                      (time.perf_counter() - started) * 1000)  # fmt: skip
            start = 0
            for r in requests:
                if not r.answer.done():
                    r.answer.set_result(results[start : start + len(r.texts)])
                start += len(r.texts)
            self._count(len(requests), len(texts))

    def _count(self, requests: int, texts: int) -> None:
        s = self.stats
        s.passes, s.requests, s.texts = s.passes + 1, s.requests + requests, s.texts + texts
        s.largest_pass = max(s.largest_pass, requests)


def _fail(requests: list[_Request], err: Exception) -> None:
    for r in requests:
        if not r.answer.done():
            r.answer.set_exception(err)
