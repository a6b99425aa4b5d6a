"""The router side of the server: a bounded queue and the micro-batching policy.

HTTP handlers `submit` their request's items (for prediction: one (task, example) pair per text,
of any task); one worker collects items in arrival order until it has `max_batch_size` of them or
the oldest has waited `max_wait_s`, hands them to the model side in one call (`run_batch`, which
runs off the event loop), and answers each request when all its items are back. This is
text-generation-inference's split: the router knows queues and time, nothing of models or
methods; the model side (`engine.py`) knows nothing of requests.

Admission is bounded: when the texts admitted and not yet answered would pass `max_queue`,
`submit` raises `QueueFull` at once (the server answers 503 with `Retry-After`). Items of one
request may land in different batches. One bad item fails only its own request.

    >>> batcher = MicroBatcher(run_batch, max_batch_size=32, max_wait_s=0.005, max_queue=1024)
    >>> batcher.start()                                 # inside the running event loop
    >>> await batcher.submit([("sst2", {"sentence": "a gripping film"})])
    [Prediction(label='1', ...)]
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

RunBatch = Callable[[list], Awaitable[list]]
"""Results for a batch of items, in order: each a value, or the exception that item raised."""


class QueueFull(Exception):
    """Admitting the request would put more than `max_queue` texts in flight."""


class QueueClosed(Exception):
    """The server is stopping; the item was never run."""


@dataclass
class _Request:
    future: asyncio.Future
    results: list
    missing: int


@dataclass
class _Item:
    payload: object
    request: _Request = field(repr=False)
    index: int
    arrived: float


class MicroBatcher:
    """Collects items from many requests into batches of at most `max_batch_size`, waiting at most
    `max_wait_s` after the oldest waiting item arrived; at most `max_queue` items in flight."""

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, max_wait_s: float, max_queue: int,
                 on_batch: Callable[[int], None] | None = None):
        self.run_batch, self.on_batch = run_batch, on_batch
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self.in_flight = 0
        """Items admitted and not yet answered: waiting in the queue or in the model."""
        self._waiting: deque[_Item] = deque()
        self._running: list[_Item] = []
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="prompttune-batcher")

    async def stop(self) -> None:
        """Stop the worker; items not yet answered fail with `QueueClosed`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for item in [*self._running, *self._waiting]:
            self._answer(item, QueueClosed("the server is stopping"))
        self._running, self._waiting = [], deque()

    def fail_waiting(self, error: Exception) -> None:
        """Answer every item still waiting (not yet in the model) with `error`; the batch in the model
        finishes. For a server that is stopping and cannot wait for its whole queue."""
        waiting, self._waiting = self._waiting, deque()
        for item in waiting:
            self._answer(item, error)

    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Count `n` items in flight for work that does not go through the queue (a generation
        request runs alone); raises `QueueFull` as `submit` does."""
        self._reserve(n)
        try:
            yield
        finally:
            self.in_flight -= n

    async def submit(self, payloads: list) -> list:
        """Queue `payloads`; return their results in order once all are back. Raises `QueueFull`
        (nothing queued), or the exception of the first item that failed."""
        self._reserve(len(payloads))
        loop = asyncio.get_running_loop()
        request = _Request(loop.create_future(), [None] * len(payloads), len(payloads))
        now = loop.time()
        self._waiting.extend(_Item(p, request, i, now) for i, p in enumerate(payloads))
        self._arrived.set()
        return await request.future

    def _reserve(self, n: int) -> None:
        if self.in_flight + n > self.max_queue:
            raise QueueFull(f"{self.in_flight} texts are in flight; {n} more would pass the limit of {self.max_queue}")
        self.in_flight += n

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._waiting[0].arrived + self.max_wait_s
            while len(self._waiting) < self.max_batch_size and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            self._running = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch_size))]
            if self.on_batch is not None:
                self.on_batch(len(self._running))
            try:
                results = await self.run_batch([item.payload for item in self._running])
            except Exception as e:  # the model side failed as a whole: every item of the batch fails with it
                results = [e] * len(self._running)
            batch, self._running = self._running, []
            for item, result in zip(batch, results, strict=True):
                self._answer(item, result)

    def _answer(self, item: _Item, result) -> None:
        self.in_flight -= 1
        request = item.request
        if request.future.done():  # failed by an earlier item, or the client went away
            return
        if isinstance(result, BaseException):
            request.future.set_exception(result)
            return
        request.results[item.index] = result
        request.missing -= 1
        if request.missing == 0:
            request.future.set_result(request.results)
