"""Decoding with limits, mode conversion, EXIF, the reference preprocessing and heatmap PNGs."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from spa_service.errors import (
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from spa_service.imaging import decode_image, encode_heatmap_png, heatmap_to_uint8, preprocess

MAX = 40_000_000
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), mode="RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_decodes_common_formats_to_rgb(fmt: str) -> None:
    decoded = decode_image(encode(photo(), fmt), max_pixels=MAX)
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (64, 48)
    assert decoded.format == fmt


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "YCbCr"])
def test_converts_any_mode_like_pillow(mode: str) -> None:
    source = photo().convert(mode)
    fmt = {"CMYK": "JPEG", "YCbCr": "JPEG", "1": "TIFF"}.get(mode, "PNG")
    data = encode(source, fmt)
    decoded = decode_image(data, max_pixels=MAX)
    expected = Image.open(io.BytesIO(data)).convert("RGB")
    assert decoded.image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded.image), np.asarray(expected))


def test_palette_with_transparency_goes_through_rgba() -> None:
    image = photo().convert("P")
    data = encode(image, "PNG", transparency=0)
    decoded = decode_image(data, max_pixels=MAX)
    assert decoded.image.mode == "RGB"
    # The transparent index keeps its palette colour (alpha dropped), every pixel as RGBA -> RGB gives.
    expected = Image.open(io.BytesIO(data)).convert("RGBA").convert("RGB")
    np.testing.assert_array_equal(np.asarray(decoded.image), np.asarray(expected))


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    decoded = decode_image(data, max_pixels=MAX)
    np.testing.assert_array_equal(np.asarray(decoded.image)[0, :, 0], [0, 100, 255])


def test_exif_orientation_is_applied() -> None:
    image = photo(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()), max_pixels=MAX)
    assert (decoded.width, decoded.height) == (20, 60)


def test_empty_bytes() -> None:
    with pytest.raises(EmptyImageError, match="empty"):
        decode_image(b"", max_pixels=MAX)


def test_text_is_not_an_image() -> None:
    with pytest.raises(NotAnImageError, match="not an image"):
        decode_image(b"hello, this is a text file\n" * 10, max_pixels=MAX)


@pytest.mark.parametrize(
    ("data", "name"),
    [(b"%PDF-1.7\n...", "PDF"), (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
     (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC")],
)
def test_known_unsupported_formats_are_named(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=name):
        decode_image(data, max_pixels=MAX)


def test_truncated_jpeg() -> None:
    data = encode(photo(256, 256), "JPEG", quality=95)
    with pytest.raises(TruncatedImageError, match="truncated"):
        decode_image(data[: len(data) // 2], max_pixels=MAX)


def test_truncated_png() -> None:
    data = encode(photo(256, 256), "PNG")
    with pytest.raises(TruncatedImageError):
        decode_image(data[: len(data) // 2], max_pixels=MAX)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming a huge size, with almost no data: must be refused from the header."""
    small = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = small.index(b"IHDR")
    body = struct.pack(">II", width, height) + small[ihdr + 12 : ihdr + 17]
    chunk = b"IHDR" + body
    crc = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return small[: ihdr - 4] + struct.pack(">I", len(body)) + chunk + crc + small[ihdr + 21 :]


def test_bomb_dimensions_refused_before_decoding() -> None:
    data = bomb_png(50_000, 50_000)
    with pytest.raises(ImageTooLargeError, match="before decoding"):
        decode_image(data, max_pixels=MAX)


def test_pixel_limit_is_configurable() -> None:
    data = encode(photo(100, 100), "PNG")
    decoded = decode_image(data, max_pixels=10_000)
    assert (decoded.width, decoded.height) == (100, 100)
    with pytest.raises(ImageTooLargeError, match="100 x 100 = 10,000 pixels, over the limit of 9,999"):
        decode_image(data, max_pixels=9_999)


def test_preprocess_is_pil_bilinear_then_normalise() -> None:
    images = [decode_image(encode(photo(80, 50, seed=s), "PNG"), max_pixels=MAX) for s in range(3)]
    batch = preprocess(images, input_size=(32, 40), mean=MEAN, std=STD)
    assert batch.shape == (3, 3, 32, 40) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for i, decoded in enumerate(images):
        resized = np.asarray(decoded.image.resize((40, 32), Image.BILINEAR), dtype=np.float64) / 255.0
        expected = ((resized - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
        np.testing.assert_allclose(batch[i], expected, atol=1e-5)


def test_heatmap_png_round_trips_values() -> None:
    heatmap = np.random.default_rng(0).random((30, 50), dtype=np.float32)
    png, width, height = encode_heatmap_png(heatmap, (30, 50), max_side=2048)  # same size: the values as they are
    assert (width, height) == (50, 30)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint8 and decoded.ndim == 2
    np.testing.assert_array_equal(decoded, heatmap_to_uint8(heatmap))
    np.testing.assert_array_equal(heatmap_to_uint8(np.array([0.0, 0.5, 1.0])), [0, 128, 255])


def test_heatmap_png_is_the_map_resized_to_the_image() -> None:
    small = np.random.default_rng(1).random((7, 9), dtype=np.float32)
    png, width, height = encode_heatmap_png(small, (150, 200), max_side=2048)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    expected = np.rint(np.clip(cv2.resize(small, (200, 150), interpolation=cv2.INTER_LINEAR), 0, 1) * 255)
    assert (width, height) == (200, 150)
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1  # cv2 vs matrices: 1e-7 apart


def test_heatmap_png_long_side_is_capped_proportionally() -> None:
    png, width, height = encode_heatmap_png(np.ones((10, 30), np.float32), (1000, 3000), max_side=600)
    assert (width, height) == (600, 200)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (200, 600) and decoded.min() == 255
