"""Files that cost far more to decode than their bytes: the uploads of the hostile-input tests and of
bench/bench_hostile.py, built in memory."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def blocks(dtype: type, size: int = 6000, block: int = 500) -> np.ndarray:
    """A size x size image of flat random blocks: tens of MB of pixels, a few hundred KB compressed."""
    values = np.random.default_rng(0).integers(0, 65536, (size // block, size // block)).astype(dtype)
    return np.repeat(np.repeat(values, block, axis=0), block, axis=1)


def text_bomb_png(seed: int) -> bytes:
    """A 16 x 16 PNG of 60 KB: 60 zTXt chunks of 1 KB, each inflating to 1 MB, before its pixels."""
    chunk = b"zTXt" + b"k\0\0" + zlib.compress(b"\0" * 1_000_000, 9)
    chunks = (struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)) * 60
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    small = encode(Image.fromarray(pixels), "PNG")
    return small[:33] + chunks + small[33:]
