"""The OpenAPI schema states the limits the server enforces, so that a client generated from it
is never surprised: topk and class_id bounds from the loaded model, the batch size and body limits
from the settings, the required image parts. Models differ in their bounds, so once they are loaded
each one's localize operations are listed under its own path (`/v1/models/imagenet-lite0/localize`)
instead of one `{name}` template that would have to state one bound for all."""

from __future__ import annotations

import copy
import re

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..settings import Settings
from .registry import ModelRegistry

DEFAULT_MODEL_PATHS = ("/v1/localize", "/v1/localize/batch")
NAMED_MODEL_PATHS = ("/v1/models/{name}/localize", "/v1/models/{name}/localize/batch")


def stated_limits(app: FastAPI, settings: Settings, registry: ModelRegistry) -> None:
    """Make `app.openapi()` state the limits; cached once the models are loaded."""

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        loaded = bool(registry.services)
        for path in DEFAULT_MODEL_PATHS + NAMED_MODEL_PATHS:
            operation = schema["paths"][path]["post"]
            if path.endswith("/batch"):
                form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
                form["properties"]["images"]["maxItems"] = settings.max_batch_images
            operation["description"] = (
                f"Bodies up to {settings.max_body_bytes:,} bytes; images up to {settings.max_image_pixels:,} "
                f"pixels, {settings.max_image_side:,} pixels on the long side and {settings.max_image_memory_mb:g} MB "
                "to decode (judged from the header). Binary parts must be images in a format the server decodes "
                "(JPEG, PNG, WebP, BMP, GIF, TIFF): anything else is answered 415 or 422."
            )
            if loaded and path in DEFAULT_MODEL_PATHS:
                _bound_classes(operation, registry.default.localizer.card.num_classes)
            elif loaded:
                template = schema["paths"].pop(path)
                for name, service in registry.services.items():
                    schema["paths"][path.replace("{name}", name)] = {
                        "post": _model_operation(template["post"], name, service.localizer.card.num_classes)}
        if loaded:
            for path in ("/v1/models/{name}", "/v1/models/{name}/samples"):
                _name_enum(schema["paths"][path]["get"], list(registry.services))
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _bound_classes(operation: dict, num_classes: int) -> None:
    for parameter in operation["parameters"]:
        if parameter["name"] == "topk":
            parameter["schema"]["maximum"] = num_classes
        elif parameter["name"] == "class_id":
            parameter["schema"]["items"]["maximum"] = num_classes - 1
            parameter["schema"]["uniqueItems"] = True  # repeats are refused
            parameter["schema"]["maxItems"] = num_classes


def _model_operation(template: dict, name: str, num_classes: int) -> dict:
    """The `{name}` operation for one model: no name parameter, that model's class bounds."""
    operation = copy.deepcopy(template)
    operation["operationId"] = f"{template['operationId']}_{re.sub(r'[^0-9A-Za-z_]', '_', name)}"
    operation["summary"] = f"{template.get('summary', '')} ({name})".strip()
    operation["parameters"] = [p for p in operation["parameters"] if p["name"] != "name"]
    _bound_classes(operation, num_classes)
    return operation


def _name_enum(operation: dict, names: list[str]) -> None:
    for parameter in operation["parameters"]:
        if parameter["name"] == "name":
            parameter["schema"]["enum"] = names
