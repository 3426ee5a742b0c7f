"""One output row per image: what was found in it, or why it could not be localized.

Both engines build rows here and only here, so their outputs cannot drift apart. A row is plain
JSON types; `ROW_SCHEMA` is its Arrow type for Parquet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from spa_service.errors import SpaError
from spa_service.pipeline.localize import Localization

Row = dict[str, Any]

ROW_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("class_ids", pa.list_(pa.int32())),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float64())),
        # Per class, its boxes [x0, y0, x1, y1], inclusive original-image pixels.
        pa.field("boxes", pa.list_(pa.list_(pa.list_(pa.int32(), 4)))),
        # Per class, the heatmap PNG's path relative to the output folder; empty unless asked.
        pa.field("heatmaps", pa.list_(pa.string())),
        # Per class, the map at the class map's resolution (before the resize to the image), row-major;
        # map_size is its (h, w). Empty unless asked.
        pa.field("maps", pa.list_(pa.list_(pa.float32()))),
        pa.field("map_size", pa.list_(pa.int32(), 2)),
        pa.field("error_code", pa.string()),
        pa.field("error_message", pa.string()),
    ]
)


def result_row(
    path: str, result: Localization, heatmaps: Sequence[str] = (), maps: np.ndarray | None = None
) -> Row:
    """`maps`: (K, h, w) float32, the predictions' maps, when they are to be kept."""
    return {
        "path": path,
        "width": result.width,
        "height": result.height,
        "class_ids": [p.class_id for p in result.predictions],
        "labels": [p.label for p in result.predictions],
        "scores": [p.score for p in result.predictions],
        "boxes": [[[int(v) for v in box] for box in p.boxes] for p in result.predictions],
        "heatmaps": list(heatmaps),
        "maps": [] if maps is None else [m.ravel().tolist() for m in maps],
        "map_size": None if maps is None else list(maps.shape[1:]),
        "error_code": None,
        "error_message": None,
    }


def error_row(path: str, error: SpaError) -> Row:
    """The row of an image that could not be localized, with the API's error code."""
    return {
        "path": path,
        "width": None,
        "height": None,
        "class_ids": [],
        "labels": [],
        "scores": [],
        "boxes": [],
        "heatmaps": [],
        "maps": [],
        "map_size": None,
        "error_code": error.code,
        "error_message": str(error),
    }


def to_table(rows: Sequence[Row]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)
