"""The micro-batcher on its own, with a stand-in localize function whose batches are recorded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest
from service_helpers import until
from spa_service.errors import Overloaded, ShuttingDown
from spa_service.http.batching import MicroBatcher

pytestmark = pytest.mark.anyio


class Recorder:
    """A localize function that answers each item with (item, batch size) and records its batches."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None, fail_on: object = None) -> None:
        self.batches: list[list[object]] = []
        self.delay_s = delay_s
        self.gate = gate
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, images: Sequence[object], options: Sequence[object]) -> list[tuple[object, int]]:
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.delay_s)
        if self.fail_on in images:
            raise ValueError(f"cannot do {self.fail_on}")
        self.batches.append(list(images))
        return [(image, len(images)) for image in images]


def batcher(fn: Recorder, *, size: int = 4, delay_ms: float = 1.0, queue: int = 64) -> MicroBatcher:
    return MicroBatcher(fn, max_batch_size=size, max_delay_s=delay_ms / 1000, max_queue_size=queue)


async def results(futures) -> list[object]:
    return [done.result for done in await asyncio.gather(*futures)]


async def test_concurrent_jobs_share_batches_in_one_thread() -> None:
    fn = Recorder(delay_s=0.02)
    b = batcher(fn, size=4)
    b.start()
    futures = [f for i in range(10) for f in b.submit([(i, None)])]
    assert await results(futures) == [(i, n) for i, n in zip(range(10), [4, 4, 4, 4, 4, 4, 4, 4, 2, 2])]
    assert fn.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(fn.threads) == 1
    await b.close()


async def test_window_waits_for_a_late_arrival() -> None:
    fn = Recorder()
    b = batcher(fn, size=2, delay_ms=60_000)  # the batch runs once full, long before the window ends
    b.start()
    first = b.submit([("a", None)])
    await asyncio.sleep(0)  # the collector is now waiting for more
    second = b.submit([("b", None)])
    assert await results(first + second) == [("a", 2), ("b", 2)]
    await b.close()


async def test_a_lone_job_waits_out_the_window() -> None:
    b = batcher(Recorder(), size=8, delay_ms=300)
    b.start()
    started = time.perf_counter()
    assert await results(b.submit([("c", None)])) == [("c", 1)]
    assert time.perf_counter() - started >= 0.3  # a lower bound: a loaded machine only adds to it
    await b.close()


async def test_full_queue_refuses_whole_requests() -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    b = batcher(fn, size=1, delay_ms=0, queue=2)
    b.start()
    running = b.submit([("running", None)])
    await until(lambda: b.queue_depth == 0)  # it left the queue for the worker
    queued = b.submit([("q1", None)])
    with pytest.raises(Overloaded):
        b.submit([("q2", None), ("q3", None)])  # all or none: one slot left is not enough
    assert b.queue_depth == 1
    queued += b.submit([("q2", None)])
    with pytest.raises(Overloaded):
        b.submit([("q3", None)])
    gate.set()
    assert await results(running + queued) == [("running", 1), ("q1", 1), ("q2", 1)]
    await b.close()


async def test_close_finishes_queued_work_then_refuses() -> None:
    fn = Recorder(delay_s=0.02)
    b = batcher(fn, size=2)
    b.start()
    futures = b.submit([(i, None) for i in range(5)])
    await b.close()
    assert all(f.done() for f in futures)
    assert [image for image, _ in await results(futures)] == list(range(5))
    with pytest.raises(ShuttingDown):
        b.submit([("late", None)])


async def test_a_failing_image_does_not_fail_its_batch_mates() -> None:
    fn = Recorder(fail_on="bad")
    b = batcher(fn, size=4, delay_ms=50)
    b.start()
    futures = b.submit([("a", None), ("bad", None), ("c", None)])
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0].result == ("a", 1) and outcomes[2].result == ("c", 1)
    assert isinstance(outcomes[1], ValueError)
    assert (await results(b.submit([("d", None)]))) == [("d", 1)]  # the collector lives on
    await b.close()


async def test_cancelled_jobs_are_skipped() -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    b = batcher(fn, size=1, delay_ms=0)
    b.start()
    first = b.submit([("first", None)])
    cancelled = b.submit([("gone", None)])
    cancelled[0].cancel()
    last = b.submit([("last", None)])
    gate.set()
    await results(first + last)
    assert fn.batches == [["first"], ["last"]]
    await b.close()


async def test_queue_wait_is_reported() -> None:
    gate = threading.Event()
    b = batcher(Recorder(gate=gate), size=1, delay_ms=0)
    b.start()
    submitted = time.perf_counter()
    first, second = b.submit([("a", None), ("b", None)])
    await until(lambda: b.queue_depth == 1)  # "a" is running, held by the gate; "b" waits
    await asyncio.sleep(0.05)
    held_ms = (time.perf_counter() - submitted) * 1e3
    gate.set()
    assert (await second).queue_ms >= held_ms - 1  # it waited at least as long as the gate was held
    assert (await first).queue_ms < (await second).queue_ms
    await b.close()


class Finisher:
    """A finish step: (backbone result, options) -> the results; held by `gate`, failing on `fail_on`."""

    def __init__(self, gate: threading.Event | None = None, fail_on: object = None) -> None:
        self.gate = gate
        self.fail_on = fail_on
        self.finished: list[list[object]] = []

    def __call__(self, run: list[tuple[object, int]], options: Sequence[object]) -> list[tuple[object, int, str]]:
        if self.gate is not None:
            assert self.gate.wait(10)
        if any(image == self.fail_on for image, _ in run):
            raise ValueError(f"cannot finish {self.fail_on}")
        self.finished.append([image for image, _ in run])
        return [(image, n, "finished") for image, n in run]


def split_batcher(fn: Recorder, finish: Finisher, *, size: int = 1, delay_ms: float = 1.0) -> MicroBatcher:
    return MicroBatcher(fn, max_batch_size=size, max_delay_s=delay_ms / 1000, max_queue_size=64, finish=finish)


async def test_the_next_backbone_call_overlaps_the_last_finish() -> None:
    gate = threading.Event()
    fn, finish = Recorder(), Finisher(gate=gate)
    b = split_batcher(fn, finish)
    b.start()
    futures = b.submit([("a", None), ("b", None)])
    # "a" is held in its finish step, and "b"'s backbone call runs all the same.
    await until(lambda: fn.batches == [["a"], ["b"]])
    assert not any(f.done() for f in futures)
    gate.set()
    assert await results(futures) == [("a", 1, "finished"), ("b", 1, "finished")]
    await b.close()


async def test_close_waits_for_batches_being_finished() -> None:
    gate = threading.Event()
    b = split_batcher(Recorder(), Finisher(gate=gate))
    b.start()
    futures = b.submit([("a", None)])
    await until(lambda: b.queue_depth == 0)
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.01)
    gate.set()
    await closing
    assert futures[0].done() and (await results(futures)) == [("a", 1, "finished")]


async def test_a_failing_finish_does_not_fail_its_batch_mates() -> None:
    fn, finish = Recorder(), Finisher(fail_on="bad")
    b = split_batcher(fn, finish, size=3, delay_ms=60_000)  # the batch runs once full
    b.start()
    futures = b.submit([("a", None), ("bad", None), ("c", None)])
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0].result == ("a", 1, "finished") and outcomes[2].result == ("c", 1, "finished")
    assert isinstance(outcomes[1], ValueError)
    assert fn.batches[0] == ["a", "bad", "c"]  # one backbone call for the three, then one by one
    await b.close()


async def test_no_window_is_waited_for_images_nobody_is_sending() -> None:
    coming = [True]
    fn = Recorder()
    b = MicroBatcher(fn, max_batch_size=8, max_delay_s=60.0, max_queue_size=64, more_coming=lambda: coming[0])
    b.start()
    first = b.submit([("a", None)])
    await asyncio.sleep(0.01)
    assert not first[0].done()  # another image is on its way: the window is kept open for it
    coming[0] = False
    second = b.submit([("b", None)])  # the last one: the batch starts without waiting out the 60 s
    assert await asyncio.wait_for(results(first + second), 10) == [("a", 2), ("b", 2)]
    lone = b.submit([("c", None)])
    assert await asyncio.wait_for(results(lone), 10) == [("c", 1)]
    await b.close()
