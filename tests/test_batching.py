"""The dynamic batcher: batches that fit, failures that are said, a restart that works."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from search.registry.batching import DynamicBatcher, ResultCache, ServeStats, input_key


def _doubler(seen: list[int], fail_on: int | None = None):
    def predict(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        if fail_on is not None and len(seen) == fail_on:
            raise ValueError("broken batch")
        return batch * 2

    return predict


def test_requests_share_batches_up_to_the_limit_and_get_their_own_rows() -> None:
    sizes: list[int] = []

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(_doubler(sizes), max_batch=4, max_wait_ms=50, stats=ServeStats())
        batcher.start()
        requests = [np.full((n, 2), float(i)) for i, n in enumerate([1, 2, 3, 6, 1])]
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    for i, (n, answer) in enumerate(zip([1, 2, 3, 6, 1], answers, strict=True)):
        np.testing.assert_array_equal(answer, np.full((n, 2), 2.0 * i))
    assert sum(sizes) == 13 and 6 in sizes  # the large request ran alone
    assert all(size <= 4 for size in sizes if size != 6)  # no batch overflowed


def test_a_failing_batch_is_said_to_its_requests_and_the_next_one_runs() -> None:
    async def scenario() -> np.ndarray:
        batcher = DynamicBatcher(
            _doubler([], fail_on=1), max_batch=8, max_wait_ms=0, stats=ServeStats()
        )
        batcher.start()
        with pytest.raises(ValueError, match="broken batch"):
            await batcher.submit(np.ones((1, 2)))
        answer = await batcher.submit(np.ones((1, 2)))
        await batcher.stop()
        batcher.start()  # a second lifespan of the same app
        again = await batcher.submit(np.ones((1, 2)))
        await batcher.stop()
        return answer + again

    np.testing.assert_array_equal(asyncio.run(scenario()), np.full((1, 2), 4.0))


def test_the_cache_keeps_the_most_recent_and_keys_by_shape_too() -> None:
    cache = ResultCache(capacity=2)
    a, b, c = np.zeros((1, 4)), np.ones((1, 4)), np.zeros((2, 2))
    assert input_key(a) != input_key(c)  # same bytes, another shape
    cache.put(input_key(a), a)
    cache.put(input_key(b), b)
    assert cache.get(input_key(a)) is not None  # a is now the most recent
    cache.put(input_key(c), c)
    assert cache.get(input_key(b)) is None and len(cache) == 2
    assert ResultCache(0).get(input_key(a)) is None
