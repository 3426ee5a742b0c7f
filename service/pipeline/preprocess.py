"""Decoded images to the model's input tensor, as the reference preprocesses them (docs/reference.md section 1)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

from .imaging import DecodedImage


@lru_cache(maxsize=16)
def normalization_table(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """(3, 256) float32: each channel's normalised value of every 8-bit level, computed with the
    same float32 operations as normalising the pixels one by one (so a lookup is bit-exact)."""
    levels = np.arange(256, dtype=np.float32)[None, :]
    table = levels - np.float32(255.0) * np.asarray(mean, dtype=np.float32)[:, None]
    table /= np.float32(255.0) * np.asarray(std, dtype=np.float32)[:, None]
    table.flags.writeable = False
    return table


def preprocess(
    images: Sequence[DecodedImage],
    *,
    input_size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> np.ndarray:
    """The model input: (N, 3, H, W) float32, each image resized to `input_size` = (H, W)
    with PIL bilinear (images already that size, as `decode_for_model` gives them, are used as
    they are), scaled to [0, 1] and normalised per channel."""
    height, width = input_size
    table = normalization_table(tuple(mean), tuple(std))
    batch = np.empty((len(images), 3, height, width), dtype=np.float32)
    for i, decoded in enumerate(images):
        image = decoded.image
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image)
        for channel in range(3):
            np.take(table[channel], pixels[..., channel], out=batch[i, channel])
    return batch
