"""The front's MicroBatcher: rows come back to their own request, errors reach every request of the batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lungct.batching import MicroBatcher


class Recorder:
    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[int] = []
        self.fail = fail

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        await asyncio.sleep(0.01)
        if self.fail:
            raise self.fail
        return batch.reshape(len(batch), -1)[:, :1] * 2  # each row's first value, doubled


def _tensor(value: float) -> np.ndarray:
    return np.full((4, 4, 1), value, dtype=np.float32)


async def _request(batcher: MicroBatcher, value: float, decode_s: float) -> np.ndarray:
    with batcher.preparing():
        await asyncio.sleep(decode_s)  # stands in for decoding in a thread
    return await batcher.submit(_tensor(value))


def test_concurrent_requests_are_joined_and_get_their_own_rows():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=8, wait_ms=50)

    async def main():
        return await asyncio.gather(*(_request(batcher, i, 0.001 * i) for i in range(20)))

    results = asyncio.run(main())
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(20)]
    assert sum(model.batches) == 20
    assert len(model.batches) < 20 and max(model.batches) <= 8


def test_a_lone_request_does_not_wait_for_the_window():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=8, wait_ms=5_000)

    async def main():
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await _request(batcher, 3.0, 0)
        return result, loop.time() - start

    result, elapsed = asyncio.run(main())
    assert float(result[0]) == 6.0
    assert elapsed < 5.0  # nobody else is decoding: dispatched at once, not after the 5 s window
    assert model.batches == [1]


def test_the_call_error_reaches_every_request_of_the_batch():
    batcher = MicroBatcher(Recorder(fail=ConnectionError("model down")), max_batch=8, wait_ms=50)

    async def main():
        return await asyncio.gather(*(_request(batcher, i, 0) for i in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, ConnectionError) for r in results)


def test_a_cancelled_request_does_not_break_the_others():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=8, wait_ms=50)

    async def main():
        tasks = [asyncio.create_task(_request(batcher, i, 0)) for i in range(4)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[1], asyncio.CancelledError)
    assert [float(results[i][0]) for i in (0, 2, 3)] == [0.0, 4.0, 6.0]


@pytest.mark.parametrize("in_flight", [1, 2])
def test_no_more_calls_in_flight_than_allowed(in_flight):
    running = peak = 0

    async def call(batch):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return batch.reshape(len(batch), -1)[:, :1]

    batcher = MicroBatcher(call, max_batch=2, wait_ms=0, in_flight=in_flight)

    async def main():
        await asyncio.gather(*(_request(batcher, i, 0) for i in range(12)))

    asyncio.run(main())
    assert peak == in_flight
