"""The HTTP layer: `create_app()` wires settings, the localizer, the batcher and metrics to routes.

Routes stay thin: they read the request, hand bytes to `Service`, and return its models.
Requests go through, outermost first: ObserveRequests (metrics, access log, last-resort
500) -> CORS -> RequireApiKey -> BodyLimit -> FastAPI's error handlers -> route.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import Batched, MicroBatcher, Overloaded, ShuttingDown
from .errors import (
    ImageError,
    ImageTooLargeError,
    InvalidRequestError,
    NotAnImageError,
    SpaError,
    UnsupportedFormatError,
)
from .imaging import DecodedImage, decode_image
from .localize import Localizer, LocalizeOptions
from .metrics import Metrics, ObserveRequests
from .schemas import (
    BatchResponse,
    ErrorBody,
    ErrorResponse,
    LocalizeParams,
    LocalizeResponse,
    StatusResponse,
    error_content,
    render_localization,
)
from .settings import Settings

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
STATIC_DIR = Path(__file__).resolve().parent / "static"
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


# --- Errors the HTTP layer adds, and the status of every error -------------------------------


class MissingImageError(SpaError):
    code = "missing_image"


class UnsupportedMediaTypeError(SpaError):
    code = "unsupported_media_type"


class TooManyImagesError(SpaError):
    code = "too_many_images"


# Looked up along the exception's MRO, so a new ImageError subclass gets a sensible status.
STATUS_BY_ERROR: dict[type[SpaError], int] = {
    MissingImageError: 422,
    UnsupportedMediaTypeError: 415,
    TooManyImagesError: 413,
    ImageError: 422,
    NotAnImageError: 415,
    UnsupportedFormatError: 415,
    ImageTooLargeError: 413,
    InvalidRequestError: 422,
    Overloaded: 503,
    ShuttingDown: 503,
}

# Codes for the HTTPExceptions that Starlette raises itself (routing, multipart parsing).
CODE_BY_STATUS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def status_of(error: SpaError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_content(code, message), status_code=status, headers=headers)


# --- Pure ASGI middleware: they answer without buffering the body ------------------------------


class BodyLimit:
    """Limits the request body in size and in time, without buffering it.

    413 for a declared Content-Length over the limit, before reading anything; otherwise body
    bytes are counted as they arrive and 413 is answered the moment the limit is passed. A body
    that stalls for `timeout_s` between chunks gets 408, so a slow or stuck client cannot hold
    a request open forever. After either answer the app sees a disconnect, and whatever it
    sends afterwards is dropped.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self) -> JSONResponse:
        return _closing_error(413, "body_too_large", f"request body is over the limit of {self.max_bytes:,} bytes")

    def _too_slow(self) -> JSONResponse:
        return _closing_error(408, "body_timeout", f"no request body data for {self.timeout_s:g} s")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return

        received = 0
        started = answered = complete = False

        async def refuse(response: JSONResponse) -> Message:
            nonlocal answered
            answered = True
            if not started:
                await response(scope, receive, send)
            return {"type": "http.disconnect"}

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if answered:
                return {"type": "http.disconnect"}
            if complete:  # later calls only wait for a disconnect: no time limit on those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                return await refuse(self._too_slow())
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    return await refuse(self._too_large())
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if not answered:
                started = True
                await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not answered:  # the app's failure is ours to report only if we did not cause it
                raise


def _closing_error(status: int, code: str, message: str) -> JSONResponse:
    # The rest of the body is never read, so the connection cannot carry another request.
    return error_response(status, code, message, headers={"Connection": "close"})


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class RequireApiKey:
    """401 for /v1/* requests without the configured X-API-Key, before the body is read."""

    def __init__(self, app: ASGIApp, *, key: str, prefix: str = "/v1/") -> None:
        self.app = app
        self.key = key.encode()
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            supplied = Headers(scope=scope).get(API_KEY_HEADER)
            if supplied is None:
                await error_response(401, "unauthorized", f"missing {API_KEY_HEADER} header")(scope, receive, send)
                return
            if not hmac.compare_digest(supplied.encode(), self.key):
                await error_response(401, "unauthorized", f"invalid {API_KEY_HEADER}")(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- The service the routes talk to -----------------------------------------------------------


@dataclass
class _Decoded:
    image: DecodedImage | ImageError
    ms: float


@dataclass
class Processed:
    outcomes: list[LocalizeResponse | ImageError]
    batch_size: int  # the largest backbone batch these images were part of


class Service:
    """The localizer behind the micro-batcher, plus the CPU work around it (decode, PNG
    encoding), which runs in a small thread pool so the event loop only routes."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.localizer: Localizer | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.not_ready_reason = "warming up"
        self._cpu: anyio.CapacityLimiter | None = None
        self._warmup: asyncio.Task[None] | None = None

    async def start(self, localizer: Localizer) -> None:
        """Start serving; readiness follows once the warm-up inference is done."""
        self.localizer = localizer
        self._cpu = anyio.CapacityLimiter(self.settings.decode_threads)
        self.batcher = MicroBatcher(
            localizer.localize,
            max_batch_size=min(self.settings.max_batch_size, localizer.max_batch_size),
            max_delay_s=self.settings.max_queue_delay_ms / 1000.0,
            max_queue_size=self.settings.max_queue_size,
            on_batch=self.metrics.observe_batch,
        )
        self.metrics.track_queue(lambda: self.batcher.queue_depth)
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
        self.metrics.ready.set(1)
        log.info("model %s ready (warm-up %.0f ms)", self.localizer.card.name, (time.perf_counter() - started) * 1e3)

    def begin_shutdown(self) -> None:
        """Readiness goes false first, so load balancers stop sending before anything stops."""
        self.ready = False
        self.not_ready_reason = "shutting down"
        self.metrics.ready.set(0)

    async def stop(self) -> None:
        self.begin_shutdown()
        if self._warmup is not None:
            await self._warmup
        if self.batcher is not None:
            await self.batcher.close()
            log.info("batcher drained")

    def options(self, params: LocalizeParams) -> LocalizeOptions:
        options = params.to_options()
        self.localizer.validate(options)
        return options

    async def process(
        self, payloads: Sequence[bytes], params: LocalizeParams, options: LocalizeOptions, started: float
    ) -> Processed:
        """Each payload's response, or the ImageError that stopped it. The decoded images of one
        request enter the queue together (all or none)."""
        decoded = await asyncio.gather(*(self._decode(data) for data in payloads))
        good = [i for i, item in enumerate(decoded) if isinstance(item.image, DecodedImage)]
        batched = await asyncio.gather(*self.batcher.submit([(decoded[i].image, options) for i in good]))
        rendered = await asyncio.gather(
            *(self._render(done, params, decoded[i].ms, started) for i, done in zip(good, batched))
        )
        outcomes: list[LocalizeResponse | ImageError] = [item.image for item in decoded]
        for i, response in zip(good, rendered):
            outcomes[i] = response
        return Processed(outcomes, max((done.localization.batch_size for done in batched), default=0))

    async def _decode(self, data: bytes) -> _Decoded:
        """decode_image reads the size from the header and refuses a huge image before decoding it."""
        started = time.perf_counter()
        decode = partial(decode_image, data, max_pixels=self.settings.max_image_pixels)
        try:
            image: DecodedImage | ImageError = await anyio.to_thread.run_sync(decode, limiter=self._cpu)
        except ImageError as exc:
            image = exc
        return _Decoded(image, (time.perf_counter() - started) * 1e3)

    async def _render(
        self, done: Batched, params: LocalizeParams, decode_ms: float, started: float
    ) -> LocalizeResponse:
        encode_started = time.perf_counter()
        render = partial(
            render_localization,
            done.localization,
            model_name=self.localizer.card.name,
            heatmap=params.heatmap,
            heatmap_max_side=self.settings.heatmap_max_side,
            timings_ms={"decode": decode_ms, "queue": done.queue_ms},
        )
        response = await anyio.to_thread.run_sync(render, limiter=self._cpu)
        now = time.perf_counter()
        response.timings_ms["encode"] = (now - encode_started) * 1e3
        response.timings_ms["total"] = (now - started) * 1e3
        self.metrics.observe_stages(response.timings_ms)
        return response


def service_of(request: Request) -> Service:
    return request.app.state.service


# --- Reading images from the request ------------------------------------------------------------


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _file_parts(request: Request, name: str) -> list[bytes]:
    async with request.form() as form:
        parts = []
        for value in form.getlist(name):
            if not isinstance(value, UploadFile):
                raise MissingImageError(f"multipart part {name!r} is not a file (it has no filename)")
            parts.append(await value.read())
        return parts


async def read_one_image(request: Request) -> bytes:
    """The image of a single-image request: multipart part `image` or the raw body."""
    media = _media_type(request)
    if media == "multipart/form-data":
        parts = await _file_parts(request, "image")
        if not parts:
            raise MissingImageError("no `image` part in the multipart form")
        if len(parts) > 1:
            raise TooManyImagesError(f"{len(parts)} `image` parts; send one, or use /v1/localize/batch")
        return parts[0]
    if media.startswith(RAW_IMAGE_TYPES):
        return await request.body()
    if not media:
        raise MissingImageError(
            "no image: send it as multipart part `image`, or as the body with Content-Type image/*"
        )
    raise UnsupportedMediaTypeError(
        f"Content-Type {media} is not accepted: send multipart/form-data with part `image`, "
        "or the raw image with Content-Type image/jpeg, image/png, ..."
    )


async def read_batch_images(request: Request, limit: int) -> list[bytes]:
    media = _media_type(request)
    if media != "multipart/form-data":
        raise UnsupportedMediaTypeError("send the images as multipart/form-data parts named `images`")
    parts = await _file_parts(request, "images")
    if not parts:
        raise MissingImageError("no `images` parts in the multipart form")
    if len(parts) > limit:
        raise TooManyImagesError(f"{len(parts)} images in one request; the limit is {limit}")
    return parts


# --- Routes -----------------------------------------------------------------------------------


def _image_body(field: str, *, many: bool) -> dict:
    """OpenAPI request body: the routes read it themselves (multipart or raw), so FastAPI cannot infer it."""
    binary = {"type": "string", "format": "binary"}
    part = {"type": "array", "items": binary} if many else binary
    form = {"type": "object", "required": [field], "properties": {field: part}}
    content: dict = {"multipart/form-data": {"schema": form}}
    if not many:
        content["image/*"] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


# What each error status means on the localize routes, for /docs.
ERROR_DOCS = {
    400: "`bad_request`: a malformed multipart body",
    401: "`unauthorized`: X-API-Key missing or wrong (only when the server has a key)",
    408: "`body_timeout`: the body stalled",
    413: "`body_too_large`, `image_too_large` (judged from the image header, before decoding), `too_many_images`",
    415: "`unsupported_media_type`, `not_an_image`, `unsupported_format`",
    422: "`missing_image`, `empty_image`, `truncated_image`, `invalid_parameter`",
    503: "`overloaded` (queue full) or `shutting_down`; retry after `Retry-After` seconds",
}


def _errors(*statuses: int) -> dict:
    return {status: {"model": ErrorResponse, "description": ERROR_DOCS[status]} for status in statuses}


async def localize(request: Request, params: Annotated[LocalizeParams, Query()]) -> LocalizeResponse:
    started = time.perf_counter()
    service = service_of(request)
    options = service.options(params)
    data = await read_one_image(request)
    processed = await service.process([data], params, options, started)
    [outcome] = processed.outcomes
    if isinstance(outcome, ImageError):
        raise outcome
    request.state.image_size = (outcome.width, outcome.height)
    request.state.batch_size = processed.batch_size
    return outcome


async def localize_batch(request: Request, params: Annotated[LocalizeParams, Query()]) -> BatchResponse:
    started = time.perf_counter()
    service = service_of(request)
    options = service.options(params)
    payloads = await read_batch_images(request, service.settings.max_batch_images)
    processed = await service.process(payloads, params, options, started)
    request.state.images = len(payloads)
    request.state.batch_size = processed.batch_size
    return BatchResponse(
        results=[
            ErrorResponse(error=ErrorBody(code=o.code, message=str(o))) if isinstance(o, ImageError) else o
            for o in processed.outcomes
        ]
    )


async def models(request: Request) -> dict:
    return service_of(request).localizer.card.public()


async def samples(request: Request) -> dict:
    """The demo page's sample strip: the images in the model directory's samples/ folder."""
    folder = service_of(request).settings.model_dir / "samples"
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    names = [path.name for path in files if path.suffix.lower() in SAMPLE_SUFFIXES]
    return {"samples": [{"name": name, "url": f"/samples/{quote(name)}"} for name in names]}


async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


async def healthz() -> StatusResponse:
    return StatusResponse(status="ok")


async def readyz(request: Request) -> Response:
    service = service_of(request)
    if not service.ready:
        return error_response(503, "not_ready", service.not_ready_reason)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    body, content_type = service_of(request).metrics.exposition()
    return Response(body, media_type=content_type)


def _add_routes(app: FastAPI, *, with_api_key: bool) -> None:
    """Routes are added to the app itself (not through an included router), so that the request
    metrics can match a path to its route even for requests refused before routing."""
    # Declares X-API-Key in the OpenAPI schema (the Authorize button in /docs); RequireApiKey
    # enforces it, before the body is read, which a dependency could not do.
    security = [Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))] if with_api_key else []
    errors = _errors(400, 401, 408, 413, 415, 422, 503)
    app.add_api_route(
        "/v1/localize", localize, methods=["POST"], response_model=LocalizeResponse, dependencies=security,
        summary="Classes, heatmaps and boxes for one image", tags=["localize"],
        openapi_extra=_image_body("image", many=False), responses=errors,
    )
    app.add_api_route(
        "/v1/localize/batch", localize_batch, methods=["POST"], response_model=BatchResponse,
        dependencies=security, summary="Several images in one request; a bad image gets its own error entry",
        tags=["localize"], openapi_extra=_image_body("images", many=True), responses=errors,
    )
    app.add_api_route(
        "/v1/models", models, methods=["GET"], dependencies=security, tags=["localize"],
        summary="The model card (without file names and hashes)",
    )
    app.add_api_route(
        "/v1/samples", samples, methods=["GET"], dependencies=security, tags=["demo"],
        summary="Sample images for the demo page (the model directory's samples/ folder)",
    )
    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        "/healthz", healthz, methods=["GET"], response_model=StatusResponse, tags=["operations"],
        summary="The process is alive",
    )
    app.add_api_route(
        "/readyz", readyz, methods=["GET"], response_model=StatusResponse, tags=["operations"],
        summary="The model is loaded and warmed up (503 before, and from the start of shutdown)",
        responses={503: {"model": ErrorResponse, "description": "`not_ready`: warming up or shutting down"}},
    )
    app.add_api_route(
        "/metrics", metrics, methods=["GET"], response_class=Response, tags=["operations"],
        summary="Prometheus metrics",
    )


# --- Error handlers -----------------------------------------------------------------------------


async def _spa_error(request: Request, exc: SpaError) -> JSONResponse:
    status = status_of(exc)
    headers = None
    if status == 503:
        headers = {"Retry-After": str(service_of(request).settings.retry_after_s)}
    return error_response(status, exc.code, str(exc), headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0])
        problems.append(f"{where}: {error['msg']}")
    return error_response(422, "invalid_parameter", "; ".join(problems))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = CODE_BY_STATUS.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


# --- The factory ---------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, localizer: Localizer | None = None) -> FastAPI:
    """The ASGI app. Without `localizer`, the lifespan loads one from `settings.model_dir`."""
    settings = settings or Settings()
    metrics = Metrics(max_batch_size=settings.max_batch_size)
    service = Service(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = localizer or await asyncio.to_thread(Localizer.from_settings, settings)
        await service.start(loaded)
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="SPA Localizer",
        version=version("spa-localizer"),
        summary="Weakly supervised object localization (SPA, CVPR 2021): top classes, a heatmap per class, boxes.",
        lifespan=lifespan,
    )
    app.state.service = service
    _add_routes(app, with_api_key=settings.api_key is not None)
    # The demo page (GET /) and its files; overlay.js is also what third-party pages import.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if (settings.model_dir / "samples").is_dir():
        app.mount("/samples", StaticFiles(directory=settings.model_dir / "samples"), name="samples")

    app.add_exception_handler(SpaError, _spa_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)

    # add_middleware puts each new one outside the previous ones.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if settings.api_key is not None:
        app.add_middleware(RequireApiKey, key=settings.api_key.get_secret_value())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", API_KEY_HEADER],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    app.add_middleware(ObserveRequests, metrics=metrics, routes=app.router.routes)
    return app
