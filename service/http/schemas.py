"""The HTTP API's request and response models: plain data, no event loop, no web framework."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from spa_service.pipeline.boxes import Box, BoxMode
from spa_service.pipeline.localize import LocalizeOptions

from ..card import Method

HeatmapFormat = Literal["png", "none"]

PNG_DATA_URI_PREFIX = "data:image/png;base64,"


class LocalizeParams(BaseModel):
    """Query parameters of `POST /v1/localize` and `POST /v1/localize/batch`."""

    # A misspelt parameter (`top_k=3`) is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid")

    topk: int = Field(1, ge=1, description="How many top-scoring classes to localize (at most the model's classes)")
    method: Method | None = Field(
        None, description="`scg`: SCG-refined maps (SPA); `cam`: plain class activation maps; default: the model "
        "card's `default_method`"
    )
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Box threshold on the [0, 1] map; default: the model card's for `method`"
    )
    box_mode: BoxMode = Field(
        "union", description="`union`: one box around everything above threshold; `largest`: around the largest "
        "connected region; `all`: one box per region"
    )
    heatmap: HeatmapFormat = Field(
        "png", description="`png`: return each map as a grayscale PNG data URI; `none`: leave heatmaps out"
    )
    class_id: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="Localize these classes instead of the top-k (repeat the parameter)"
    )

    def to_options(self, default_method: Method) -> LocalizeOptions:
        """The pipeline's options; `default_method` (the model card's) when the request names no method."""
        return LocalizeOptions(
            topk=self.topk,
            method=self.method or default_method,
            threshold=self.threshold,
            box_mode=self.box_mode,
            class_ids=tuple(self.class_id),
        )


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code")
    message: str = Field(description="What was wrong, for people")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": {"code": "not_an_image", "message": "the bytes are not an image"}}]}
    )

    error: ErrorBody


class PredictionOut(BaseModel):
    class_id: int
    label: str
    score: float = Field(description="Softmax probability of the class")
    boxes: list[Box] = Field(description="[x0, y0, x1, y1] in original-image pixels, inclusive")
    heatmap: str | None = Field(description="Grayscale 8-bit PNG data URI, value = round(255 * map); null if not asked")
    heatmap_size: tuple[int, int] | None = Field(
        description="[width, height] of the heatmap PNG: the image's proportions, the image size or smaller (its "
        "long side at most the server's limit and 32 pixels per map cell by default); stretch it over the image"
    )


_LOCALIZE_EXAMPLE = {
    "model": "vgg16-spa-cub",
    "width": 500,
    "height": 375,
    "predictions": [
        {
            "class_id": 12,
            "label": "013.Bobolink",
            "score": 0.91,
            "boxes": [[84, 40, 431, 342]],
            "heatmap": PNG_DATA_URI_PREFIX + "iVBORw0KGgo...",
            "heatmap_size": [500, 375],
        }
    ],
    "timings_ms": {
        "decode": 2.1,
        "queue": 0.4,
        "preprocess": 1.3,
        "backbone": 95.0,
        "scg": 3.2,
        "boxes": 0.6,
        "encode": 2.4,
        "total": 106.2,
    },
}


class LocalizeResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_LOCALIZE_EXAMPLE]})

    model: str = Field(description="Name of the model that answered")
    width: int = Field(description="Image width in pixels (after EXIF orientation)")
    height: int = Field(description="Image height in pixels (after EXIF orientation)")
    predictions: list[PredictionOut]
    timings_ms: dict[str, float] = Field(
        description="Milliseconds per stage: decode, queue, preprocess, backbone, scg, resize, boxes, encode, "
        "total (from the start of the request, body upload included). preprocess, backbone and scg are "
        "for the whole backbone batch the image was part of"
    )


class BatchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        _LOCALIZE_EXAMPLE,
                        {"error": {"code": "truncated_image", "message": "image file is truncated"}},
                    ]
                }
            ]
        }
    )

    results: list[LocalizeResponse | ErrorResponse] = Field(description="One entry per `images` part, in order")


class StatusResponse(BaseModel):
    status: str


def error_content(code: str, message: str) -> dict:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message}}
