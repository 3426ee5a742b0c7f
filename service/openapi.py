"""The OpenAPI schema states the limits the server enforces, so that a client generated from it
is never surprised: topk and class_id bounds from the loaded model, the batch size and body limits
from the settings, the required image parts."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .localize import Localizer
from .settings import Settings

LOCALIZE_PATHS = ("/v1/localize", "/v1/localize/batch")


def stated_limits(app: FastAPI, settings: Settings, localizer: Callable[[], Localizer | None]) -> None:
    """Make `app.openapi()` state the limits; cached once the model is loaded."""

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        loaded = localizer()
        for path in LOCALIZE_PATHS:
            operation = schema["paths"][path]["post"]
            if loaded is not None:
                _bound_classes(operation, loaded.card.num_classes)
            if path.endswith("/batch"):
                form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
                form["properties"]["images"]["maxItems"] = settings.max_batch_images
            operation["description"] = (
                f"Bodies up to {settings.max_body_bytes:,} bytes; images up to {settings.max_image_pixels:,} "
                "pixels (judged from the header). Binary parts must be images in a format the server decodes "
                "(JPEG, PNG, WebP, BMP, GIF, TIFF): anything else is answered 415 or 422."
            )
        if loaded is not None:
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _bound_classes(operation: dict, num_classes: int) -> None:
    for parameter in operation["parameters"]:
        if parameter["name"] == "topk":
            parameter["schema"]["maximum"] = num_classes
        elif parameter["name"] == "class_id":
            parameter["schema"]["items"]["maximum"] = num_classes - 1
