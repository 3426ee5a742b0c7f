"""The routes: thin handlers that read the request, hand bytes to the `Service`, return its models.

Routes are added to the app itself (not through an included router), so that the request
metrics can match a path to its route even for requests refused before routing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, Query, Request, Security
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from ..errors import ImageError
from .errors import error_response
from .middleware import API_KEY_HEADER
from .registry import ModelRegistry
from .schemas import (
    BatchResponse,
    ErrorBody,
    ErrorResponse,
    LocalizeParams,
    LocalizeResponse,
    StatusResponse,
)
from .serving import Service
from .uploads import read_batch_images, read_one_image

STATIC_DIR = Path(__file__).resolve().parent / "static"
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

# What each error status means on the localize routes, for /docs.
ERROR_DOCS = {
    400: "`bad_request`: a malformed multipart body",
    401: "`unauthorized`: X-API-Key missing or wrong (only when the server has a key)",
    408: "`body_timeout`: the body stalled, or did not arrive in time",
    413: "`body_too_large`, `image_too_large` (judged from the image header, before decoding: pixels, long side, "
    "or the memory its decoding would take), `too_many_images`, "
    "`request_too_costly` (more work than one request may ask for: fewer classes, a smaller image or heatmap=none)",
    415: "`unsupported_media_type`, `not_an_image`, `unsupported_format`",
    422: "`missing_image`, `empty_image`, `truncated_image`, `invalid_parameter`",
    500: "`processing_failed`: the server failed on this image (its fault, logged); in a batch, that image's entry",
    503: "`overloaded` (busy) or `shutting_down`, retry after `Retry-After` seconds; `model_unavailable`: the "
    "model stopped on an internal failure (readiness is off until the instance is replaced)",
    404: "`unknown_model`: no model of that name (the message lists the ones there are)",
}


def registry_of(request: Request) -> ModelRegistry:
    return request.app.state.models


def service_of(request: Request, name: str | None = None) -> Service:
    """The model called `name`, or the default one."""
    return registry_of(request).get(name)


def _errors(*statuses: int) -> dict:
    return {status: {"model": ErrorResponse, "description": ERROR_DOCS[status]} for status in statuses}


def _image_body(field: str, *, many: bool) -> dict:
    """OpenAPI request body: the routes read it themselves (multipart or raw), so FastAPI cannot infer it."""
    binary = {"type": "string", "format": "binary"}
    part = {"type": "array", "items": binary, "minItems": 1} if many else binary
    form = {"type": "object", "required": [field], "properties": {field: part}}
    content: dict = {"multipart/form-data": {"schema": form}}
    if not many:
        content["image/*"] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


def json_response(body: BaseModel) -> Response:
    """The model as JSON, serialised by pydantic alone: a route's declared `response_model` still
    documents it, but FastAPI's validate-then-encode pass (10x the cost) is skipped."""
    return Response(body.model_dump_json(), media_type="application/json")


async def localize(request: Request, params: Annotated[LocalizeParams, Query()]) -> Response:
    return await _localize_one(request, params, None)


async def localize_with(name: str, request: Request, params: Annotated[LocalizeParams, Query()]) -> Response:
    return await _localize_one(request, params, name)


async def _localize_one(request: Request, params: LocalizeParams, name: str | None) -> Response:
    started = time.perf_counter()
    service = service_of(request, name)
    options = service.options(params)
    data = await read_one_image(request)
    processed = await service.process([data], options, started)
    [outcome] = processed.outcomes
    if isinstance(outcome, ImageError):
        raise outcome
    request.state.image_size = (outcome.width, outcome.height)
    request.state.batch_size = processed.batch_size
    return json_response(outcome)


async def localize_batch(request: Request, params: Annotated[LocalizeParams, Query()]) -> Response:
    return await _localize_many(request, params, None)


async def localize_batch_with(name: str, request: Request, params: Annotated[LocalizeParams, Query()]) -> Response:
    return await _localize_many(request, params, name)


async def _localize_many(request: Request, params: LocalizeParams, name: str | None) -> Response:
    started = time.perf_counter()
    service = service_of(request, name)
    options = service.options(params)
    payloads = await read_batch_images(request, service.settings.max_batch_images)
    processed = await service.process(payloads, options, started)
    request.state.images = len(payloads)
    request.state.batch_size = processed.batch_size
    return json_response(BatchResponse(
        results=[
            ErrorResponse(error=ErrorBody(code=o.code, message=str(o))) if isinstance(o, ImageError) else o
            for o in processed.outcomes
        ]
    ))


def _model_info(service: Service) -> dict:
    """The card, and what runs it: the provider in use, and whether CUDA was wanted but fell back to the CPU."""
    engine = service.localizer.engine
    return {
        **service.localizer.card.public(),
        "providers": engine.providers,
        "provider": engine.provider,
        "cuda_fallback": engine.cuda_fallback,
    }


async def models(request: Request) -> dict:
    registry = registry_of(request)
    return {"default": registry.default.name, "models": [_model_info(s) for s in registry.services.values()]}


async def model(name: str, request: Request) -> dict:
    return _model_info(service_of(request, name))


def _sample_files(service: Service) -> list[Path]:
    folder = service.samples_dir
    files = sorted(folder.iterdir()) if folder is not None else []
    return [path for path in files if path.is_file() and path.suffix.lower() in SAMPLE_SUFFIXES]


def _samples(service: Service) -> dict:
    """The demo page's sample strip: the images in the model directory's samples/ folder.
    URLs are relative to the page, so the page works behind a path-prefix proxy."""
    return {
        "samples": [
            {"name": path.name, "url": f"samples/{quote(service.name)}/{quote(path.name)}"}
            for path in _sample_files(service)
        ]
    }


async def samples(request: Request) -> dict:
    return _samples(service_of(request))


async def model_samples(name: str, request: Request) -> dict:
    return _samples(service_of(request, name))


async def sample_file(name: str, file: str, request: Request) -> FileResponse:
    """One sample image; only the files the listing names are served."""
    found = {path.name: path for path in _sample_files(service_of(request, name))}
    if file not in found:
        raise HTTPException(404, f"model {name!r} has no sample {file!r}")
    return FileResponse(found[file])


async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


async def healthz() -> StatusResponse:
    return StatusResponse(status="ok")


async def readyz(request: Request) -> Response:
    registry = registry_of(request)
    if not registry.ready:
        return error_response(503, "not_ready", registry.not_ready_reason())
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


def add_routes(app: FastAPI, *, with_api_key: bool) -> None:
    # Declares X-API-Key in the OpenAPI schema (the Authorize button in /docs); RequireApiKey
    # enforces it, before the body is read, which a dependency could not do.
    security = [Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))] if with_api_key else []
    errors = _errors(400, 401, 408, 413, 415, 422, 500, 503)
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
        "/v1/models/{name}/localize", localize_with, methods=["POST"], response_model=LocalizeResponse,
        dependencies=security, summary="Classes, heatmaps and boxes for one image, by the model `name`",
        tags=["localize"], openapi_extra=_image_body("image", many=False), responses={**errors, **_errors(404)},
    )
    app.add_api_route(
        "/v1/models/{name}/localize/batch", localize_batch_with, methods=["POST"], response_model=BatchResponse,
        dependencies=security, summary="Several images in one request, by the model `name`",
        tags=["localize"], openapi_extra=_image_body("images", many=True), responses={**errors, **_errors(404)},
    )
    app.add_api_route(
        "/v1/models", models, methods=["GET"], dependencies=security, tags=["localize"],
        summary="The models served (the default first): each one's card and the onnxruntime providers running it",
    )
    app.add_api_route(
        "/v1/models/{name}", model, methods=["GET"], dependencies=security, tags=["localize"],
        summary="One model's card and providers", responses=_errors(404),
    )
    app.add_api_route(
        "/v1/samples", samples, methods=["GET"], dependencies=security, tags=["demo"],
        summary="The default model's sample images for the demo page (its directory's samples/ folder)",
    )
    app.add_api_route(
        "/v1/models/{name}/samples", model_samples, methods=["GET"], dependencies=security, tags=["demo"],
        summary="One model's sample images for the demo page", responses=_errors(404),
    )
    app.add_api_route("/samples/{name}/{file}", sample_file, methods=["GET"], include_in_schema=False)
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
