"""Bytes in, images out: decoding with limits, the reference preprocessing, heatmap PNGs.

Decoding follows docs/reference.md section 1: Pillow, EXIF orientation applied, any mode to RGB,
resized straight to the model's input size with PIL bilinear (aspect ratio not kept).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .arrays import Array, to_numpy
from .errors import (
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from .resize import resize_bands

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
    """A loaded RGB image (EXIF-transposed unless decoded with `exif_transpose=False`) and its format."""

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


def header_size(data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """(height, width) from the image header alone (before EXIF orientation), in microseconds.

    Raises what `decode_image` raises for the header: EmptyImageError, NotAnImageError,
    UnsupportedFormatError, ImageTooLargeError.
    """
    image = _open(data)
    _check_pixels(image.width, image.height, max_pixels)
    return image.height, image.width


def decode_image(data: bytes, *, max_pixels: int, exif_transpose: bool = True) -> DecodedImage:
    """Decode bytes into an RGB image, refusing more than `max_pixels` before decoding.

    `exif_transpose=False` keeps the stored pixel grid, as evaluation code reads data sets
    (`Image.open(path).convert('RGB')`); served images follow their EXIF orientation.

    Raises EmptyImageError, NotAnImageError, UnsupportedFormatError, ImageTooLargeError or
    TruncatedImageError, each with a message that says what was wrong.
    """
    image = _open(data)
    fmt = image.format or "unknown"
    _check_pixels(image.width, image.height, max_pixels)
    try:
        image.load()
        if exif_transpose:
            # In place: a copy would double the memory of a large photo for nothing.
            ImageOps.exif_transpose(image, in_place=True)
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


def heatmap_png_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) of the PNG for a heatmap of `size` = (H, W): the same, or proportionally smaller so
    that its long side is at most `max_side`."""
    height, width = size
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def encode_heatmap_png(map_: Array, size: tuple[int, int], *, max_side: int) -> tuple[bytes, int, int]:
    """Grayscale 8-bit PNG, value round(255 * heatmap), of a (h, w) map resized to `size` = (H, W).

    When the long side of `size` exceeds `max_side`, the map is resized straight to the smaller
    size of `heatmap_png_size` (the full-size heatmap sampled at the PNG's pixel centres). Built
    band by band in uint8: no full-size float map. Returns (png bytes, width, height).
    """
    png_size = heatmap_png_size(size, max_side)
    pixels = np.empty(png_size, dtype=np.uint8)
    for start, band in resize_bands(map_, png_size):
        pixels[start : start + band.shape[-2]] = heatmap_to_uint8(to_numpy(band))
    ok, png = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV fails only on invalid shapes, excluded above
        raise RuntimeError("PNG encoding failed")
    return png.tobytes(), pixels.shape[1], pixels.shape[0]
