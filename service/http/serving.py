"""The `Service` the routes talk to: one model's localizer behind its micro-batcher, plus the
CPU work around it (reading headers, decoding, PNG encoding) in the process's small thread pool,
so the event loop only routes.

A request flows: image headers (read off the loop) -> admission (cost known before any
decoding) -> decode, straight to the model's input size -> micro-batcher (the backbone on the
inference thread; the post-process and rendering of the response, in one CPU-pool task per
batch, overlapping the next batch's backbone). Each image's outcome is its own: a failure on
one is that image's error.
A request cancelled because its client hung up (middleware.CancelOnDisconnect) drops its queued
decodes, backbone jobs and PNGs, and counts its images in `spa_images_dropped`.
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

from spa_service.pipeline.imaging import (
    DecodedImage,
    ImageHeader,
    decode_for_model,
    decode_memory,
    read_header,
)
from spa_service.pipeline.localize import (
    BackboneRun,
    Localization,
    LocalizeOptions,
    Localizer,
)

from ..errors import (
    ImageError,
    ModelUnavailable,
    ProcessingFailed,
    SpaError,
    TooManyImagesError,
)
from ..settings import Settings
from .admission import Admission, Ticket, check_image_memory, image_work_mp
from .batching import MicroBatcher
from .metrics import Metrics
from .render import render_localization
from .schemas import HeatmapFormat, LocalizeParams, LocalizeResponse

log = logging.getLogger(__name__)

TRIM_AFTER_MP = 50.0  # requests this large hand their freed memory back to the system
TRIM_AFTER_BYTES = 64 << 20  # and so do decodes this large, as soon as they are done


def release_freed_memory() -> None:
    """glibc keeps freed heap for reuse; after a large request, give it back (malloc_trim)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@dataclass(frozen=True)
class RequestOptions:
    """What one request asks of a model, once its query is read and checked against the model's card."""

    localize: LocalizeOptions
    heatmap: HeatmapFormat


@dataclass
class Processed:
    outcomes: list[LocalizeResponse | ImageError]
    batch_size: int  # the largest backbone batch these images were part of


class _Arriving:
    """One request's images counted in `Service._arriving` until they reach the queue (or fail)."""

    def __init__(self, service: Service, count: int) -> None:
        self._service = service
        self._count = count
        service._arriving += count

    def done(self) -> None:
        self._service._arriving -= self._count
        self._count = 0


class Service:
    """One model, served: start / stop, readiness, and `process` for the routes.

    The services of one process share the admission budget (memory is the process's), the
    inference worker (one backbone call at a time, each using every core onnxruntime is given)
    and the CPU pool (`cpu`, SPA_DECODE_THREADS threads: headers, decodes and PNGs of every model).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        admission: Admission,
        localizer: Localizer,
        *,
        worker: ThreadPoolExecutor,
        cpu: ThreadPoolExecutor,
        samples_dir: Path | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.admission = admission
        self.localizer = localizer
        self.name = localizer.card.name
        self.worker = worker
        self.cpu = cpu
        self.samples_dir = samples_dir
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.not_ready_reason = "warming up"
        self._warmup: asyncio.Task[None] | None = None
        self._arriving = 0  # images of requests in flight not yet in the batcher's queue

    async def start(self) -> None:
        """Start serving; readiness follows once the warm-up inference is done."""
        localizer = self.localizer
        self.batcher = MicroBatcher(
            lambda images, _options: localizer.run_backbone(images),
            max_batch_size=min(self.settings.max_batch_size, localizer.max_batch_size),
            max_delay_s=self.settings.max_queue_delay_ms / 1000.0,
            max_queue_size=self.settings.max_queue_size,
            on_batch=partial(self.metrics.observe_batch, self.name),
            on_failure=self._batcher_failed,
            worker=self.worker,
            finish=self._finish,
            finisher=self.cpu,
            more_coming=lambda: self._arriving > 0,
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
        if self.batcher.failure is not None:
            return
        self.ready = True
        self.metrics.ready.labels(self.name).set(1)
        log.info("model %s ready (warm-up %.0f ms)", self.localizer.card.name, (time.perf_counter() - started) * 1e3)

    def _batcher_failed(self, error: ModelUnavailable) -> None:
        self.ready = False
        self.not_ready_reason = str(error)
        self.metrics.ready.labels(self.name).set(0)
        log.error("model %s is not ready any more: %s", self.name, error)

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

    def options(self, params: LocalizeParams) -> RequestOptions:
        """The query's options for this model (422 before the body is read when they do not fit it)."""
        options = params.to_options(self.localizer.card.default_method)
        self.localizer.validate(options)
        return RequestOptions(localize=options, heatmap=params.heatmap)

    def _work_mp(self, size: tuple[int, int], options: RequestOptions) -> float:
        classes = len(options.localize.class_ids) or options.localize.topk
        png_side = self.settings.heatmap_max_side if options.heatmap == "png" else None
        return image_work_mp(size, classes, png_max_side=png_side)

    def _read_headers(self, payloads: Sequence[bytes]) -> list[ImageHeader | ImageError]:
        """Each payload's header, or why it is refused before decoding (in a CPU thread: Pillow's
        header parsing inflates PNG text chunks, and the loop must stay free)."""
        settings = self.settings
        headers: list[ImageHeader | ImageError] = []
        for data in payloads:
            try:
                header = read_header(data, max_pixels=settings.max_image_pixels, max_side=settings.max_image_side)
                needed = decode_memory(header, self.localizer.card.input_size)
                check_image_memory(header, needed, settings.max_image_memory_mb)
                headers.append(header)
            except ImageError as exc:
                headers.append(exc)
            except Exception as exc:  # noqa: BLE001 - a fault of ours on one image is that image's error
                headers.append(self._failed(exc, "reading the header of"))
        return headers

    async def process(
        self, payloads: Sequence[bytes], options: RequestOptions, started: float
    ) -> Processed:
        """Each payload's response, or the ImageError that stopped it. A request's images are
        admitted together (all or none), from their headers, before any is decoded."""
        if len(payloads) > self.settings.max_queue_size:
            raise TooManyImagesError(
                f"{len(payloads)} images in one request, more than the queue ever holds "
                f"(SPA_MAX_QUEUE_SIZE={self.settings.max_queue_size}); send at most that many per request"
            )
        loop = asyncio.get_running_loop()
        outcomes: list[LocalizeResponse | ImageError | None] = [None] * len(payloads)
        ticket: Ticket | None = None
        arriving = _Arriving(self, len(payloads))
        try:
            headers = await loop.run_in_executor(self.cpu, self._read_headers, payloads)
            admitted: dict[int, ImageHeader] = {}
            for i, header in enumerate(headers):
                if isinstance(header, ImageError):
                    outcomes[i] = header
                else:
                    admitted[i] = header
            ticket = self.admission.admit(sum(self._work_mp(h.size, options) for h in admitted.values()))
            batch_size = await self._localize(payloads, admitted, outcomes, options, started, arriving)
        except asyncio.CancelledError:
            self.metrics.images_dropped.labels(self.name).inc(sum(outcome is None for outcome in outcomes))
            raise
        finally:
            arriving.done()
            if ticket is not None:
                ticket.release()
                if ticket.work_mp >= TRIM_AFTER_MP:
                    loop.run_in_executor(self.cpu, release_freed_memory)  # not awaited: cancelled requests trim too
        return Processed(outcomes, batch_size)

    async def _localize(
        self,
        payloads: Sequence[bytes],
        admitted: dict[int, ImageHeader],
        outcomes: list[LocalizeResponse | ImageError | None],
        options: RequestOptions,
        started: float,
        arriving: _Arriving,
    ) -> int:
        """Decode, localize and render the admitted images into `outcomes`; the largest batch size."""
        decoded = await asyncio.gather(*(self._decode(payloads[i], header) for i, header in admitted.items()))
        jobs: list[tuple[int, DecodedImage, float]] = []
        for i, (image, decode_ms) in zip(admitted, decoded):
            if isinstance(image, ImageError):
                outcomes[i] = image
            else:
                jobs.append((i, image, decode_ms))
        del decoded
        arriving.done()
        futures = self.batcher.submit([(image, options) for _, image, _ in jobs])
        results = await asyncio.gather(*futures, return_exceptions=True)
        batch_size = 0
        for (i, _, decode_ms), result in zip(jobs, results):
            if isinstance(result, SpaError) and not isinstance(result, ImageError):
                raise result  # the model stopped (ModelUnavailable) or is shutting down: the whole request
            if isinstance(result, BaseException):
                outcomes[i] = self._failed(result, "localizing")
            elif isinstance(result.result, ImageError):
                outcomes[i] = result.result
            else:
                response: LocalizeResponse = result.result
                response.timings_ms = {
                    "decode": decode_ms,
                    "queue": result.queue_ms,
                    **response.timings_ms,
                    "total": (time.perf_counter() - started) * 1e3,
                }
                self.metrics.observe_stages(self.name, response.timings_ms)
                outcomes[i] = response
                batch_size = max(batch_size, result.batch_size)
        return batch_size

    def _failed(self, exc: BaseException, stage: str) -> ProcessingFailed:
        log.error("model %s failed %s an image", self.name, stage, exc_info=exc)
        return ProcessingFailed(f"the server failed while {stage} this image ({type(exc).__name__}); see its log")

    async def _decode(self, data: bytes, header: ImageHeader) -> tuple[DecodedImage | ImageError, float]:
        started = time.perf_counter()
        image = await asyncio.get_running_loop().run_in_executor(self.cpu, self._decode_now, data, header)
        return image, (time.perf_counter() - started) * 1e3

    def _decode_now(self, data: bytes, header: ImageHeader) -> DecodedImage | ImageError:
        settings = self.settings
        try:
            return decode_for_model(
                data,
                max_pixels=settings.max_image_pixels,
                input_size=self.localizer.card.input_size,
                max_side=settings.max_image_side,
                draft=settings.jpeg_draft,
            )
        except ImageError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a fault of ours on one image is that image's error
            return self._failed(exc, "decoding")
        finally:
            if decode_memory(header, self.localizer.card.input_size) >= TRIM_AFTER_BYTES:
                release_freed_memory()

    def _finish(self, run: BackboneRun, options: Sequence[RequestOptions]) -> list[LocalizeResponse | ImageError]:
        """The batcher's finish step, in the CPU pool: post-process a batch, then render each image's
        response there too (one hand-off from the event loop for both)."""
        localizations = self.localizer.postprocess(run, [o.localize for o in options])
        return [self._render(localization, o.heatmap) for localization, o in zip(localizations, options)]

    def _render(self, localization: Localization, heatmap: HeatmapFormat) -> LocalizeResponse | ImageError:
        started = time.perf_counter()
        try:
            response = render_localization(
                localization,
                model_name=self.name,
                heatmap=heatmap,
                heatmap_max_side=self.settings.heatmap_max_side,
                heatmap_cell_px=self.settings.heatmap_cell_px,
            )
        except Exception as exc:  # noqa: BLE001 - a fault of ours on one image is that image's error
            return self._failed(exc, "rendering")
        response.timings_ms["encode"] = (time.perf_counter() - started) * 1e3
        return response
