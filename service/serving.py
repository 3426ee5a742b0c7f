"""The `Service` the routes talk to: one model's localizer behind its micro-batcher, plus the
CPU work around it (decoding, PNG encoding) in a small thread pool, so the event loop only routes.

A request flows: image headers -> admission (cost known before any decoding) -> decode ->
micro-batcher (backbone + post-process) -> render, each image's working set freed once rendered.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from .admission import Admission, image_work_mp
from .batching import Batched, MicroBatcher
from .errors import ImageError, TooManyImagesError
from .imaging import DecodedImage, decode_image, header_size
from .localize import Localizer, LocalizeOptions
from .metrics import Metrics
from .render import render_localization
from .schemas import LocalizeParams, LocalizeResponse
from .settings import Settings

log = logging.getLogger(__name__)

TRIM_AFTER_MP = 50.0  # requests this large hand their freed memory back to the system


def release_freed_memory() -> None:
    """glibc keeps freed heap for reuse; after a large request, give it back (malloc_trim)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@dataclass
class Processed:
    outcomes: list[LocalizeResponse | ImageError]
    batch_size: int  # the largest backbone batch these images were part of


class Service:
    """One model, served: start / stop, readiness, and `process` for the routes.

    The services of one process share the admission budget (memory is the process's) and the
    inference worker: one backbone call at a time, each using every core onnxruntime is given.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        admission: Admission,
        localizer: Localizer,
        *,
        worker: ThreadPoolExecutor,
        samples_dir: Path | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.admission = admission
        self.localizer = localizer
        self.name = localizer.card.name
        self.worker = worker
        self.samples_dir = samples_dir
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.not_ready_reason = "warming up"
        self._cpu: anyio.CapacityLimiter | None = None
        self._warmup: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving; readiness follows once the warm-up inference is done."""
        localizer = self.localizer
        self._cpu = anyio.CapacityLimiter(self.settings.decode_threads)
        self.batcher = MicroBatcher(
            localizer.localize,
            max_batch_size=min(self.settings.max_batch_size, localizer.max_batch_size),
            max_delay_s=self.settings.max_queue_delay_ms / 1000.0,
            max_queue_size=self.settings.max_queue_size,
            on_batch=partial(self.metrics.observe_batch, self.name),
            worker=self.worker,
        )
        self.metrics.ready.labels(self.name).set(0)
        self.metrics.track_queue(self.name, lambda: self.batcher.queue_depth)
        self.batcher.start()
        self._warmup = asyncio.create_task(self._warm_up(), name="spa-warmup")

    async def _warm_up(self) -> None:
        started = time.perf_counter()
        try:
            await self.batcher.run_exclusive(self.localizer.warmup)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log; serving stays off
            log.exception("warm-up failed; /readyz stays 503")
            self.not_ready_reason = f"warm-up failed: {type(exc).__name__}: {exc}"
            return
        self.ready = True
        self.metrics.ready.labels(self.name).set(1)
        log.info("model %s ready (warm-up %.0f ms)", self.localizer.card.name, (time.perf_counter() - started) * 1e3)

    def begin_shutdown(self) -> None:
        """Readiness goes false first, so load balancers stop sending before anything stops."""
        self.ready = False
        self.not_ready_reason = "shutting down"
        self.metrics.ready.labels(self.name).set(0)

    async def stop(self) -> None:
        self.begin_shutdown()
        if self._warmup is not None:
            await self._warmup
        if self.batcher is not None:
            await self.batcher.close()
            log.info("batcher drained")

    def options(self, params: LocalizeParams) -> LocalizeOptions:
        options = params.to_options(self.localizer.card.default_method)
        self.localizer.validate(options)
        return options

    def _work_mp(self, size: tuple[int, int], params: LocalizeParams, options: LocalizeOptions) -> float:
        classes = len(options.class_ids) or options.topk
        png_side = self.settings.heatmap_max_side if params.heatmap == "png" else None
        return image_work_mp(size, classes, png_max_side=png_side)

    async def process(
        self, payloads: Sequence[bytes], params: LocalizeParams, options: LocalizeOptions, started: float
    ) -> Processed:
        """Each payload's response, or the ImageError that stopped it. A request's images are
        admitted together (all or none), from their headers, before any is decoded."""
        if len(payloads) > self.settings.max_queue_size:
            raise TooManyImagesError(
                f"{len(payloads)} images in one request, more than the queue ever holds "
                f"(SPA_MAX_QUEUE_SIZE={self.settings.max_queue_size}); send at most that many per request"
            )
        outcomes: list[LocalizeResponse | ImageError | None] = [None] * len(payloads)
        sizes: dict[int, tuple[int, int]] = {}
        for i, data in enumerate(payloads):
            try:
                sizes[i] = header_size(data, max_pixels=self.settings.max_image_pixels)
            except ImageError as exc:
                outcomes[i] = exc
        ticket = self.admission.admit(sum(self._work_mp(size, params, options) for size in sizes.values()))
        try:
            decoded = await asyncio.gather(*(self._decode(payloads[i]) for i in sizes))
            images, kept = [], []
            for i, (image, decode_ms) in zip(sizes, decoded):
                if isinstance(image, ImageError):
                    outcomes[i] = image
                else:
                    images.append((image, options))
                    kept.append((i, decode_ms))
            futures = self.batcher.submit(images)
            del decoded, images  # the batcher holds the pixels only until their batch has run
            batched = await asyncio.gather(*futures)
            rendered = await asyncio.gather(
                *(self._render(done, params, decode_ms, started) for (_, decode_ms), done in zip(kept, batched))
            )
        finally:
            ticket.release()
            if ticket.work_mp >= TRIM_AFTER_MP:
                await anyio.to_thread.run_sync(release_freed_memory)
        for (i, _), response in zip(kept, rendered):
            outcomes[i] = response
        return Processed(outcomes, max((done.localization.batch_size for done in batched), default=0))

    async def _decode(self, data: bytes) -> tuple[DecodedImage | ImageError, float]:
        started = time.perf_counter()
        decode = partial(decode_image, data, max_pixels=self.settings.max_image_pixels)
        try:
            image: DecodedImage | ImageError = await anyio.to_thread.run_sync(decode, limiter=self._cpu)
        except ImageError as exc:
            image = exc
        return image, (time.perf_counter() - started) * 1e3

    async def _render(
        self, done: Batched, params: LocalizeParams, decode_ms: float, started: float
    ) -> LocalizeResponse:
        encode_started = time.perf_counter()
        render = partial(
            render_localization,
            done.localization,
            model_name=self.name,
            heatmap=params.heatmap,
            heatmap_max_side=self.settings.heatmap_max_side,
            timings_ms={"decode": decode_ms, "queue": done.queue_ms},
        )
        response = await anyio.to_thread.run_sync(render, limiter=self._cpu)
        now = time.perf_counter()
        response.timings_ms["encode"] = (now - encode_started) * 1e3
        response.timings_ms["total"] = (now - started) * 1e3
        self.metrics.observe_stages(self.name, response.timings_ms)
        return response
