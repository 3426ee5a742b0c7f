"""A batch of paths -> a table of rows: read, decode, localize, and optionally write heatmap PNGs.

The same worker runs in-process (`--engine local`) and inside each Ray actor (`--engine ray`).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import fsspec
import numpy as np
import pyarrow as pa
from spa_service.arrays import to_numpy
from spa_service.errors import SpaError
from spa_service.pipeline.heatmap_png import encode_heatmap_png
from spa_service.pipeline.imaging import DecodedImage, decode_image
from spa_service.pipeline.localize import Localization, LocalizeOptions, Localizer

from .inputs import read_bytes
from .rows import Row, error_row, result_row, to_table

log = logging.getLogger(__name__)

HeatmapOutput = Literal["none", "png", "map"]
HEATMAP_FOLDER = "_heatmaps"

Loaded = DecodedImage | SpaError





def heatmap_name(path: str, class_id: int) -> str:
    """Where an image's heatmap for a class goes, relative to the output folder: named by a hash of
    the image's path, since paths from a manifest or from several folders may share a file name."""
    digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:20]
    return f"{HEATMAP_FOLDER}/{digest}-c{class_id}.png"


@dataclass
class BatchWorker:
    localizer: Localizer
    options: LocalizeOptions
    max_pixels: int
    out: str  # the output folder (local path or fsspec URL); heatmaps are written under it
    heatmaps: HeatmapOutput = "none"

    def load(self, path: str) -> Loaded:
        """The decoded image, or the error that stops it from being localized."""
        try:
            return decode_image(read_bytes(path), max_pixels=self.max_pixels)
        except SpaError as exc:
            return exc

    def localize(self, paths: Sequence[str], loaded: Sequence[Loaded]) -> pa.Table:
        """Rows for `paths` in order, `loaded` being what `load` gave for each."""
        good = [i for i, item in enumerate(loaded) if isinstance(item, DecodedImage)]
        images = [loaded[i] for i in good]
        results = self.localizer.localize(images, [self.options] * len(images)) if images else []
        by_index = dict(zip(good, results))
        rows: list[Row] = []
        for i, path in enumerate(paths):
            item = loaded[i]
            if isinstance(item, SpaError):
                log.debug("%s: %s %s", path, item.code, item)
                rows.append(error_row(path, item))
            else:
                result = by_index[i]
                maps = np.stack([to_numpy(p.map) for p in result.predictions]) if self.heatmaps == "map" else None
                rows.append(result_row(path, result, self._write_heatmaps(path, result), maps))
        return to_table(rows)

    def __call__(self, paths: Sequence[str]) -> pa.Table:
        return self.localize(paths, [self.load(p) for p in paths])

    def _write_heatmaps(self, path: str, result: Localization) -> list[str]:
        if self.heatmaps != "png":
            return []
        names = []
        for prediction in result.predictions:
            # At the original size: a max_side of the image's own long side never shrinks it.
            png, _, _ = encode_heatmap_png(prediction.map, prediction.size, max_side=max(prediction.size))
            name = heatmap_name(path, prediction.class_id)
            with fsspec.open(posixpath.join(self.out, name), "wb", auto_mkdir=True) as f:
                f.write(png)
            names.append(name)
        return names
