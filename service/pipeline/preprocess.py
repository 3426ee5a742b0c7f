"""Decoded images to the model's input tensor, as the reference preprocesses them (docs/reference.md section 1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .imaging import DecodedImage


def preprocess(
    images: Sequence[DecodedImage],
    *,
    input_size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> np.ndarray:
    """The model input: (N, 3, H, W) float32, each image resized to `input_size` = (H, W)
    with PIL bilinear, scaled to [0, 1] and normalised per channel."""
    height, width = input_size
    batch = np.empty((len(images), height, width, 3), dtype=np.float32)
    for i, decoded in enumerate(images):
        resized = decoded.image.resize((width, height), Image.BILINEAR)
        batch[i] = np.asarray(resized, dtype=np.float32)
    scale = np.float32(255.0) * np.asarray(std, dtype=np.float32)
    batch -= np.float32(255.0) * np.asarray(mean, dtype=np.float32)
    batch /= scale
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
