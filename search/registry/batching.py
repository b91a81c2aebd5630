"""What `search serve` does between a request and the model: batch, cache, count.

* ``DynamicBatcher`` gathers requests that arrive within ``max_wait_ms`` of the first, up to
  ``max_batch`` items, and runs them through the model as one batch on one worker thread:
  a batch of 16 costs far less than 16 single calls, at the price of the wait.
  ``max_batch=1`` turns batching off (each request runs alone, in arrival order).
* ``ResultCache`` is an LRU map from a hash of the input bytes (with shape and dtype) to
  the outputs: a repeated input skips the model.
* ``ServeStats`` counts requests, cache hits and batches, and keeps the recent request
  latencies for p50/p95 and the throughput since the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

RECENT_LATENCIES = 10_000  # requests kept for the percentiles
Pending = tuple[np.ndarray, "asyncio.Future[np.ndarray]"]  # a request's inputs, its answer


def input_key(inputs: np.ndarray) -> str:
    """A hash of what the model sees: dtype, shape and bytes."""
    digest = hashlib.sha256(f"{inputs.dtype}{inputs.shape}".encode())
    digest.update(np.ascontiguousarray(inputs).tobytes())
    return digest.hexdigest()


class ResultCache:
    """Least-recently-used outputs by input hash; ``capacity`` 0 disables it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: str, outputs: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._entries[key] = outputs
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class ServeStats:
    """Counters and recent latencies, read by ``/metrics``."""

    requests: int = 0
    cache_hits: int = 0
    rejected: int = 0
    batches: int = 0
    batched_items: int = 0
    started: float | None = None  # perf_counter of the first request
    last: float | None = None  # perf_counter of the last answer
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self) -> float:
        now = time.perf_counter()
        with self.lock:
            if self.started is None:
                self.started = now
        return now

    def answered(self, began: float, *, cached: bool) -> None:
        now = time.perf_counter()
        with self.lock:
            self.requests += 1
            self.cache_hits += int(cached)
            self.latencies_ms.append((now - began) * 1e3)
            self.last = now

    def ran_batch(self, items: int) -> None:
        with self.lock:
            self.batches += 1
            self.batched_items += items

    def snapshot(self) -> dict[str, float | int | None]:
        with self.lock:
            times = np.array(self.latencies_ms) if self.latencies_ms else None
            span = (self.last - self.started) if self.started and self.last else 0.0
            return {
                "requests": self.requests,
                "cache_hits": self.cache_hits,
                "rejected": self.rejected,
                "batches": self.batches,
                "mean_batch_size": self.batched_items / self.batches if self.batches else None,
                "latency_p50_ms": float(np.percentile(times, 50)) if times is not None else None,
                "latency_p95_ms": float(np.percentile(times, 95)) if times is not None else None,
                "throughput_per_s": self.requests / span if span > 0 else None,
            }


class DynamicBatcher:
    """Runs ``predict`` on batches gathered from concurrent ``submit`` calls (see module)."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        max_wait_ms: float,
        stats: ServeStats,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be at least 1 and max_wait_ms not negative")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self._stats = stats
        self._queue: asyncio.Queue[Pending] | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._carried: Pending | None = None  # a request that did not fit the last batch

    def start(self) -> None:
        """Start gathering on the running event loop (the server's); again after ``stop``."""
        self._queue = asyncio.Queue()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        self._task = asyncio.get_running_loop().create_task(self._gather_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    async def submit(self, inputs: np.ndarray) -> np.ndarray:
        """The outputs for ``inputs`` (a batch of one or more items), once its batch ran."""
        if self._queue is None:
            raise RuntimeError("DynamicBatcher.start() has not run on this event loop")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((inputs, future))
        return await future

    async def _gather_forever(self) -> None:
        while True:
            pending = await self._gather()
            try:
                await self._run(pending)
            except Exception as error:  # never let one bad batch stop the server
                for _, future in pending:
                    if not future.done():
                        future.set_exception(error)

    async def _gather(self) -> list[Pending]:
        """The next batch: the first waiting request, and those within the wait that fit.

        A request larger than ``max_batch`` runs alone; one that would overflow the batch
        waits for the next.
        """
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first, self._carried = self._carried or await self._queue.get(), None
        pending, items = [first], len(first[0])
        deadline = loop.time() + self.max_wait_s
        while items < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                nxt = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            if items + len(nxt[0]) > self.max_batch:
                self._carried = nxt
                break
            pending.append(nxt)
            items += len(nxt[0])
        return pending

    async def _run(self, pending: list[Pending]) -> None:
        batch = np.concatenate([inputs for inputs, _ in pending])
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._worker, self._predict, batch)
        if len(outputs) != len(batch):
            raise RuntimeError(f"the model answered {len(outputs)} rows for {len(batch)}")
        self._stats.ran_batch(len(batch))
        start = 0
        for inputs, future in pending:
            if not future.done():
                future.set_result(outputs[start : start + len(inputs)])
            start += len(inputs)
