"""Bytes in, images out: decoding with limits, the reference preprocessing, heatmap PNGs.

Decoding follows SPA_REFERENCE.md section 1: Pillow, EXIF orientation applied, any mode to RGB,
resized straight to the model's input size with PIL bilinear (aspect ratio not kept).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import (
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
)

# Formats people send that Pillow cannot decode: named so the error says what was sent.
_KNOWN_UNSUPPORTED = (
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)
_ISO_BMFF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(frozen=True)
class DecodedImage:
    """A loaded RGB image, EXIF-transposed, and what it was decoded from."""

    image: Image.Image
    format: str

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:64].lstrip()
    for magic, name in _KNOWN_UNSUPPORTED:
        if head.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(data[8:12])
    return None


def _open(data: bytes) -> Image.Image:
    if not data:
        raise EmptyImageError("the image is empty (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused before decoding, over the decompression-bomb limit: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        name = _sniff_unsupported(data)
        if name:
            raise UnsupportedFormatError(
                f"{name} images are not supported; send JPEG, PNG, WebP, BMP, GIF or TIFF"
            ) from None
        raise NotAnImageError(f"the {len(data)} bytes sent are not an image in a known format") from None


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise NotAnImageError(f"image header gives an empty size {width} x {height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width} x {height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "it was refused before decoding"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255 (a white image); scale instead.
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode bytes into an RGB image, refusing more than `max_pixels` before decoding.

    Raises EmptyImageError, NotAnImageError, UnsupportedFormatError, ImageTooLargeError or
    TruncatedImageError, each with a message that says what was wrong.
    """
    image = _open(data)
    fmt = image.format or "unknown"
    _check_pixels(image.width, image.height, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
        rgb.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused while decoding: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TruncatedImageError(f"the {fmt} image is truncated or corrupt and could not be decoded ({exc})") from None
    return DecodedImage(image=rgb, format=fmt)


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


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) float map in [0, 1] to uint8, value round(255 * map)."""
    return np.rint(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_heatmap_png(heatmap: np.ndarray, *, max_side: int) -> tuple[bytes, int, int]:
    """Grayscale 8-bit PNG of a heatmap; maps whose long side exceeds `max_side` are shrunk
    proportionally first. Returns (png bytes, width, height)."""
    height, width = heatmap.shape
    scale = max_side / max(height, width)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        heatmap = cv2.resize(heatmap.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
    pixels = heatmap_to_uint8(heatmap)
    ok, png = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV fails only on invalid shapes, excluded above
        raise RuntimeError("PNG encoding failed")
    return png.tobytes(), pixels.shape[1], pixels.shape[0]
