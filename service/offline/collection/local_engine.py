"""`--engine local`: the Localizer in this process, images decoded by a small thread pool while the
backbone runs the batch before them. The fastest way on one machine: no serialization, no scheduler."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from .worker import BatchWorker, Loaded

# Batches being decoded ahead of the one on the backbone: enough to hide decoding, few enough to
# keep memory at a few batches of images whatever the collection's size.
DECODE_AHEAD = 2


def run_local(
    worker: BatchWorker, paths: Sequence[str], *, batch_size: int, decode_threads: int
) -> Iterator[pa.Table]:
    """One table of rows per batch of `batch_size` paths, in order."""
    starts = iter(range(0, len(paths), batch_size))
    with ThreadPoolExecutor(decode_threads, thread_name_prefix="spa-batch-decode") as pool:
        ahead: deque[tuple[Sequence[str], list[Future[Loaded]]]] = deque()

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                batch = paths[start : start + batch_size]
                ahead.append((batch, [pool.submit(worker.load, p) for p in batch]))

        for _ in range(DECODE_AHEAD):
            submit_next()
        while ahead:
            batch, futures = ahead.popleft()
            submit_next()
            yield worker.localize(batch, [f.result() for f in futures])
