"""A `Localization` becomes the HTTP response: boxes as lists, heatmaps as PNG data URIs.

CPU-bound (PNG encoding) and free of the web framework: the service calls it off the event loop.
"""

from __future__ import annotations

import base64

from spa_service.pipeline.heatmap_png import encode_heatmap_png, heatmap_png_max_side
from spa_service.pipeline.localize import Localization

from .schemas import PNG_DATA_URI_PREFIX, HeatmapFormat, LocalizeResponse, PredictionOut


def render_localization(
    result: Localization,
    *,
    model_name: str,
    heatmap: HeatmapFormat,
    heatmap_max_side: int,
    heatmap_cell_px: int,
) -> LocalizeResponse:
    """The response for one image, with the pipeline's stage timings (the service adds its own)."""
    predictions = []
    for prediction in result.predictions:
        uri, size = None, None
        if heatmap == "png":
            max_side = heatmap_png_max_side(prediction.map.shape, heatmap_max_side, heatmap_cell_px)
            png, width, height = encode_heatmap_png(prediction.map, prediction.size, max_side=max_side)
            uri, size = PNG_DATA_URI_PREFIX + base64.b64encode(png).decode("ascii"), (width, height)
        predictions.append(
            PredictionOut(
                class_id=prediction.class_id,
                label=prediction.label,
                score=prediction.score,
                boxes=[tuple(int(v) for v in box) for box in prediction.boxes],
                heatmap=uri,
                heatmap_size=size,
            )
        )
    return LocalizeResponse(
        model=model_name,
        width=result.width,
        height=result.height,
        predictions=predictions,
        timings_ms=dict(result.timings_ms),
    )
