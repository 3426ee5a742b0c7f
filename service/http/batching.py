"""Dynamic micro-batching: concurrent requests share one backbone call.

Requests enqueue (image, options) jobs on the event loop; one collector task takes up to
`max_batch_size` jobs, waiting at most `max_delay_s` after the oldest one arrived for more
(Triton's `max_queue_delay`), and runs the batch in a single worker thread: onnxruntime
already uses every core, so two batches at once would only fight over them. Given a `finish`
step (the service's post-process and rendering), the worker thread runs only the backbone and
the batch is finished in the `finisher` pool, so the next batch's backbone overlaps the last
one's post-process instead of waiting for it. The queue is
bounded so that overload is answered at once (`Overloaded`) instead of piling up. Jobs whose
request was cancelled (its client hung up) are skipped, and make room in the queue. Should the
collector itself ever fail, every job waiting on it fails with `ModelUnavailable` and the owner
is told (readiness goes off), rather than requests waiting forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spa_service.pipeline.imaging import DecodedImage

from ..errors import ModelUnavailable, Overloaded, ShuttingDown

log = logging.getLogger(__name__)

T = TypeVar("T")
# Each job carries its image and the caller's options for it (whatever the two steps read).
# Without a finish step: the whole pipeline, one result per image. With one: the backbone stage,
# whose result (a BackboneRun) `finish(result, options)` turns into one result per image.
LocalizeFn = Callable[[Sequence[DecodedImage], Sequence[Any]], Any]
FinishFn = Callable[[Any, Sequence[Any]], list[Any]]
BatchObserver = Callable[[int, float], None]
MoreComing = Callable[[], bool]
FailureObserver = Callable[[ModelUnavailable], None]


@dataclass(frozen=True)
class Batched:
    result: Any  # what the pipeline (or its finish step) gave for this image
    queue_ms: float  # from entering the queue until its batch started
    batch_size: int  # images that shared its backbone call


@dataclass
class _Job:
    image: DecodedImage
    options: Any
    future: asyncio.Future[Batched]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gathers jobs into batches and runs them, one batch at a time, in one worker thread.

    `on_batch(size, seconds)` is called on the event loop after every backbone call;
    `on_failure(error)` once, if the collector stops on an unexpected error. With `finish`,
    `localize` is the backbone stage and `finish` runs in `finisher` (default: the loop's pool).
    `more_coming()`, if given, says whether any image is on its way to the queue (being read or
    decoded): when none is, a batch starts at once instead of waiting out the window for nobody.
    """

    def __init__(
        self,
        localize: LocalizeFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        on_batch: BatchObserver | None = None,
        on_failure: FailureObserver | None = None,
        worker: ThreadPoolExecutor | None = None,
        finish: FinishFn | None = None,
        finisher: Executor | None = None,
        more_coming: MoreComing | None = None,
    ) -> None:
        self._localize = localize
        self._finish = finish
        self._finisher = finisher
        self._more_coming = more_coming
        self._finishing: set[asyncio.Task[None]] = set()  # batches past the backbone, being finished
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._on_failure = on_failure
        self._pending: deque[_Job] = deque()
        self._running: list[_Job] = []  # the batch being run
        self._arrived = asyncio.Event()
        # Several batchers (one per model) may share one worker: one backbone call at a time in the process.
        self._owns_worker = worker is None
        self._worker = worker or ThreadPoolExecutor(max_workers=1, thread_name_prefix="spa-infer")
        self._collector: asyncio.Task[None] | None = None
        self._accepting = False
        self.failure: ModelUnavailable | None = None

    @property
    def queue_depth(self) -> int:
        """Images waiting for a backbone call (not counting the batch running now)."""
        return len(self._pending)

    def start(self) -> None:
        self._accepting = True
        self._collector = asyncio.create_task(self._collect_until_failure(), name="spa-batcher")

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the inference thread, between batches (warm-up uses it)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    def submit(self, items: Sequence[tuple[DecodedImage, Any]]) -> list[asyncio.Future[Batched]]:
        """Enqueue all items or none; raises Overloaded, ShuttingDown or ModelUnavailable."""
        if self.failure is not None:
            raise self.failure
        if not self._accepting:
            raise ShuttingDown("the server is shutting down; retry on another instance")
        if len(self._pending) + len(items) > self._max_queue_size:
            # Jobs of requests that were cancelled still sit in the queue: they give way first.
            self._pending = deque(job for job in self._pending if not job.future.done())
        if len(self._pending) + len(items) > self._max_queue_size:
            raise Overloaded(
                f"{len(self._pending)} images are already waiting (queue limit {self._max_queue_size}); retry shortly"
            )
        loop = asyncio.get_running_loop()
        jobs = [_Job(image, options, loop.create_future()) for image, options in items]
        self._pending.extend(jobs)
        self._arrived.set()
        return [job.future for job in jobs]

    async def close(self) -> None:
        """Stop accepting, finish every queued job, then stop the worker thread."""
        self._accepting = False
        self._arrived.set()
        if self._collector is not None:
            await self._collector
        while self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        if self._owns_worker:
            await asyncio.get_running_loop().run_in_executor(None, self._worker.shutdown)

    async def _collect_until_failure(self) -> None:
        try:
            await self._collect()
        except Exception as exc:
            log.exception("the micro-batcher stopped; its queued requests fail and readiness goes off")
            self._fail(exc)
        except BaseException as exc:  # cancelled: nothing is left to run the queued jobs either
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        self._accepting = False
        self.failure = ModelUnavailable(
            f"this model stopped serving after an internal failure ({type(exc).__name__}: {exc}); "
            "retry on another instance"
        )
        for job in [*self._running, *self._pending]:
            _deliver_error(job, self.failure)
        self._pending.clear()
        if self._on_failure is not None:
            self._on_failure(self.failure)

    async def _collect(self) -> None:
        while self._pending or self._accepting:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._fill_window()
            self._running = self._take_batch()
            if self._running:
                await self._execute(self._running)
            self._running = []

    async def _fill_window(self) -> None:
        """Wait for more jobs until the batch is full or the oldest job has waited max_delay_s."""
        deadline = self._pending[0].enqueued + self._max_delay_s
        while self._accepting and len(self._pending) < self._max_batch_size:
            if self._more_coming is not None and not self._more_coming():
                return
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        while self._pending and len(batch) < self._max_batch_size:
            job = self._pending.popleft()
            if not job.future.done():  # its request was cancelled (client went away): skip the work
                batch.append(job)
        return batch

    async def _execute(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            result = await self.run_exclusive(lambda: self._run(batch))
        except Exception as exc:  # noqa: BLE001 - delivered to the requests, never lost
            await self._failed_batch(batch, exc)
            return
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), time.perf_counter() - started)
            except Exception:  # noqa: BLE001 - an observer must never stop the collector
                log.exception("batch observer failed")
        if self._finish is None:
            self._deliver(batch, result, started)
            return
        # Not awaited: the collector goes on to the next batch while this one is finished.
        task = asyncio.create_task(self._finish_batch(batch, result, started), name="spa-finish")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish_batch(self, batch: list[_Job], run: Any, started: float) -> None:
        if all(job.future.done() for job in batch):  # every request went away: nothing to finish
            return
        options = [job.options for job in batch]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._finisher, self._finish, run, options)
            _check_count(results, batch)
        except Exception as exc:  # noqa: BLE001 - delivered to the requests, never lost
            await self._failed_batch(batch, exc)
            return
        self._deliver(batch, results, started)

    async def _failed_batch(self, batch: list[_Job], exc: Exception) -> None:
        if len(batch) == 1:
            _deliver_error(batch[0], exc)
            return
        # One bad image must not fail the others it happened to share a batch with.
        log.warning("batch of %d failed (%s: %s); retrying one by one", len(batch), type(exc).__name__, exc)
        for job in batch:
            await self._execute([job])

    @staticmethod
    def _deliver(batch: list[_Job], results: list[Any], started: float) -> None:
        for job, result in zip(batch, results):
            if not job.future.done():
                job.future.set_result(Batched(result, (started - job.enqueued) * 1e3, len(batch)))

    def _run(self, batch: list[_Job]) -> Any:
        result = self._localize([job.image for job in batch], [job.options for job in batch])
        if self._finish is None:
            _check_count(result, batch)
        return result


def _check_count(results: list[Any], batch: list[_Job]) -> None:
    if len(results) != len(batch):
        raise RuntimeError(f"localize returned {len(results)} results for {len(batch)} images")


def _deliver_error(job: _Job, exc: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
