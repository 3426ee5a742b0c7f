"""Decoding with limits, mode conversion, EXIF, the reference preprocessing and heatmap PNGs."""

from __future__ import annotations

import ctypes
import io
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from spa_service.errors import (
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from spa_service.pipeline.heatmap_png import encode_heatmap_png, heatmap_to_uint8
from spa_service.pipeline.imaging import (
    DecodedImage,
    ImageHeader,
    decode_for_model,
    decode_image,
    decode_memory,
    read_header,
)
from spa_service.pipeline.preprocess import preprocess

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


def test_preprocess_normalises_each_pixel_as_float32_arithmetic_does() -> None:
    # Images already at the input size (decode_for_model's) are used as they are; the table lookup
    # must give the very floats of (pixel - 255 mean) / (255 std) computed in float32.
    rng = np.random.default_rng(4)
    pixels = [rng.integers(0, 256, (32, 40, 3), dtype=np.uint8) for _ in range(2)]
    images = [DecodedImage(image=Image.fromarray(p), format="PNG") for p in pixels]
    batch = preprocess(images, input_size=(32, 40), mean=MEAN, std=STD)
    mean, std = np.float32(255.0) * np.array(MEAN, np.float32), np.float32(255.0) * np.array(STD, np.float32)
    for i, p in enumerate(pixels):
        for y, x, c in [(0, 0, 0), (31, 39, 2), *zip(*(rng.integers(0, n, 50) for n in (32, 40, 3)))]:
            expected = (np.float32(p[y, x, c]) - mean[c]) / std[c]
            assert batch[i, c, y, x] == expected


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


# --- Decoding for the model: the same pixels, a cost known from the header, bounded parsing ---

INPUT = (224, 224)


def turned(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def sixteen_bit(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    values = np.random.default_rng(seed).integers(0, 65536, (height, width), dtype=np.uint16)
    return Image.fromarray(values)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("rgb jpeg", encode(photo(), "JPEG")),
        ("grey jpeg", encode(photo().convert("L"), "JPEG")),
        ("cmyk jpeg", encode(photo().convert("CMYK"), "JPEG")),
        ("progressive jpeg", encode(photo(), "JPEG", progressive=True)),
        ("rgba png", encode(photo().convert("RGBA"), "PNG")),
        ("palette png with transparency", encode(photo().convert("P"), "PNG", transparency=0)),
        ("1-bit tiff", encode(photo().convert("1"), "TIFF")),
        ("la png", encode(photo().convert("LA"), "PNG")),
        ("16-bit png", encode(sixteen_bit(), "PNG")),
        ("32-bit tiff", encode(Image.fromarray(np.asarray(sixteen_bit()).astype(np.int32) * 3 - 9000), "TIFF")),
        ("float tiff", encode(Image.fromarray(np.asarray(sixteen_bit()).astype(np.float32) / 200), "TIFF")),
        ("webp", encode(photo(), "WEBP")),
        ("gif", encode(photo(), "GIF")),
        *[(f"orientation {o}", turned(photo(60, 20), o)) for o in range(1, 9)],
    ],
)
def test_decode_for_model_is_decode_image_resized(name: str, data: bytes) -> None:
    full = decode_image(data, max_pixels=MAX)
    small = decode_for_model(data, max_pixels=MAX, input_size=INPUT)
    assert (small.width, small.height) == (full.width, full.height)
    assert small.image.mode == "RGB" and small.image.size == (INPUT[1], INPUT[0])
    expected = full.image.resize((INPUT[1], INPUT[0]), Image.BILINEAR)
    np.testing.assert_array_equal(np.asarray(small.image), np.asarray(expected))
    kw = {"input_size": INPUT, "mean": MEAN, "std": STD}
    np.testing.assert_array_equal(preprocess([small], **kw), preprocess([full], **kw))


def test_orientation_turns_the_image_as_pillow_does() -> None:
    for orientation in range(1, 9):
        data = turned(photo(60, 20), orientation)
        expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        np.testing.assert_array_equal(np.asarray(decode_image(data, max_pixels=MAX).image), np.asarray(expected))
        assert read_header(data, max_pixels=MAX).orientation == orientation


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_conversion_matches_the_float_formula(mode: str) -> None:
    rng = np.random.default_rng(7)
    if mode == "F":
        values = rng.normal(128, 200, (300, 700)).astype(np.float32)
        values[0, :4] = [np.inf, -np.inf, 255.5, 0.49]
        oracle = np.clip(np.rint(values.astype(np.float64)), 0, 255)
    else:
        high = 65536 if mode.startswith("I;16") else 2**31
        values = rng.integers(0 if mode.startswith("I;16") else -(2**31), high, (300, 700), dtype=np.int64)
        values[0, :6] = [0, 128, 129, 385, 386, 65535]
        oracle = np.clip(np.rint(values / 257.0), 0, 255)
    image = Image.fromarray(values.astype(np.float32 if mode == "F" else np.int32), mode="F" if mode == "F" else "I")
    if mode.startswith("I;16"):
        image = image.convert(mode)
    data = encode(image, "TIFF") if mode != "I;16" else encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == mode
    got = np.asarray(decode_image(data, max_pixels=MAX).image)
    np.testing.assert_array_equal(got[..., 0], oracle.astype(np.uint8))


def test_float_nan_becomes_black() -> None:
    values = np.full((4, 4), np.nan, dtype=np.float32)
    got = np.asarray(decode_image(encode(Image.fromarray(values), "TIFF"), max_pixels=MAX).image)
    assert (got == 0).all()


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def peak_growth(fn) -> int:
    """How far this process's resident set rose above its level before `fn` ran (VmHWM, reset first)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_bytes("VmRSS")
    fn()
    return rss_bytes("VmHWM") - before


def cost_cases() -> dict[str, bytes]:
    width, height = 2000, 1500
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (height // 10, width // 10, 3), dtype=np.uint8)).resize((width, height))
    grey = np.asarray(rgb.convert("L"))
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "baseline jpeg": encode(rgb, "JPEG", quality=90),
        "turned jpeg": encode(rgb, "JPEG", quality=90, exif=exif.tobytes()),
        "progressive 4:4:4 jpeg": encode(rgb, "JPEG", quality=90, progressive=True, subsampling=0),
        "cmyk jpeg": encode(rgb.convert("CMYK"), "JPEG", quality=90),
        "rgba png": encode(rgb.convert("RGBA"), "PNG", compress_level=1),
        "palette png with transparency": encode(rgb.convert("P"), "PNG", compress_level=1, transparency=0),
        "grey png": encode(rgb.convert("L"), "PNG", compress_level=1),
        "turned 16-bit png": encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG", exif=exif.tobytes()),
        "32-bit deflate tiff": encode(Image.fromarray(grey.astype(np.int32) * 99), "TIFF", compression="tiff_adobe_deflate"),
        "float deflate tiff": encode(Image.fromarray(grey.astype(np.float32)), "TIFF", compression="tiff_adobe_deflate"),
        "webp": encode(rgb, "WEBP", quality=80),
        "gif": encode(rgb.convert("P"), "GIF"),
    }


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_decode_memory_bounds_what_decoding_takes() -> None:
    """The estimate from the header against the process's measured peak: never under it, and not
    far over (the estimate is what admission refuses images by)."""
    for name, data in cost_cases().items():
        header = read_header(data, max_pixels=MAX)
        estimate = decode_memory(header, INPUT)
        measured = peak_growth(lambda data=data: decode_for_model(data, max_pixels=MAX, input_size=INPUT))
        assert measured <= estimate, f"{name}: measured {measured / 1e6:.1f} MB over the estimate {estimate / 1e6:.1f}"
        assert estimate <= 1.5 * measured + 4e6, f"{name}: estimate {estimate / 1e6:.1f} MB, measured {measured / 1e6:.1f}"


def test_decode_memory_counts_bytes_per_pixel_and_the_long_side() -> None:
    def header(mode: str, size: tuple[int, int], **kw) -> ImageHeader:
        fields = {"format": "PNG", "orientation": 1, "palette_alpha": False, "decoder_bytes": 0} | kw
        return ImageHeader(mode=mode, width=size[0], height=size[1], **fields)

    square = (6000, 6000)
    grey, rgb = decode_memory(header("L", square), INPUT), decode_memory(header("RGB", square), INPUT)
    sixteen, float32 = decode_memory(header("I;16", square), INPUT), decode_memory(header("F", square), INPUT)
    assert grey < sixteen < float32 and grey < rgb  # 1, 2 + 1 and 4 + 1 bytes a pixel, against 4
    assert decode_memory(header("RGB", square, orientation=6), INPUT) > 1.9 * rgb  # a turn copies the image
    # Pillow's resize weights: 16 bytes per pixel of the long side, whatever the pixel count.
    wide = decode_memory(header("L", (16_000_000, 2)), INPUT)
    assert wide > 16 * 16_000_000 and wide > 6 * decode_memory(header("L", (5657, 5657)), INPUT)  # both 32 MP


def test_side_limit_is_refused_before_decoding() -> None:
    data = bomb_png(40_000, 1)
    with pytest.raises(ImageTooLargeError, match="long side is over the limit of 32,768 pixels .SPA_MAX_IMAGE_SIDE"):
        read_header(data, max_pixels=MAX, max_side=32_768)
    assert read_header(data, max_pixels=MAX).size == (1, 40_000)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def with_chunks(chunks: list[bytes]) -> bytes:
    """A small PNG with `chunks` between its header and its pixels."""
    small = encode(Image.new("L", (8, 8)), "PNG")
    return small[:33] + b"".join(chunks) + small[33:]


def jpeg_with(segments: bytes) -> bytes:
    small = encode(Image.new("RGB", (8, 8)), "JPEG")
    return small[:2] + segments + small[2:]


def gif_with(extensions: bytes) -> bytes:
    small = encode(Image.new("P", (8, 8)), "GIF")
    flags = small[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return small[:start] + extensions + small[start:]


def tiff_with_strips(count: int) -> bytes:
    """An uncompressed 8 x 8 grey TIFF that lists `count` one-byte strips."""
    entries = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (277, 3, 1, 1),
               (278, 3, 1, 1)]
    ifd_size = 2 + 12 * (len(entries) + 2) + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * count
    pixels_at = counts_at + 4 * count
    entries += [(273, 4, count, offsets_at), (279, 4, count, counts_at)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, n, value in sorted(entries):
        ifd += struct.pack("<HHI", tag, kind, n) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    ifd += b"\0\0\0\0"
    return (b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack(f"<{count}I", *[pixels_at] * count)
            + struct.pack(f"<{count}I", *[1] * count) + b"\x80" * 64)


HOSTILE_HEADERS = {
    # What each costs Pillow without the limits, measured on one core: 16 s, 16 s, 7 s, 14 s, 0.35 s.
    "1.6 million empty PNG chunks": (lambda: with_chunks([png_chunk(b"abCd", b"")] * 1_600_000), "PNG chunks"),
    "5 million JPEG segments": (lambda: jpeg_with(b"\xff\xfe\x00\x02" * 5_000_000), "JPEG segments"),
    "4 million GIF comments": (lambda: gif_with(b"\x21\xfe\x01a\x00" * 4_000_000), "GIF extension blocks"),
    "a TIFF of a million strips": (lambda: tiff_with_strips(1_000_000), "values in one TIFF tag"),
    "60 zTXt chunks of 1 MB each": (
        lambda: with_chunks([png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"\0" * 1_000_000, 9))] * 60),
        "text chunks",
    ),
    "a 1 MB eXIf chunk": (lambda: with_chunks([png_chunk(b"eXIf", b"MM\0*" + b"\0" * 1_000_000)]), "EXIF"),
    "junk between JPEG segments": (lambda: jpeg_with(b"\x00" * 100_000), "stray bytes"),
}


@pytest.mark.parametrize("name", HOSTILE_HEADERS)
def test_headers_that_cost_more_than_their_bytes_are_refused_at_once(name: str) -> None:
    make, says = HOSTILE_HEADERS[name]
    data = make()
    started = time.process_time()
    with pytest.raises(ImageTooLargeError, match=says):
        read_header(data, max_pixels=MAX)
    assert time.process_time() - started < 0.5  # CPU time, so a loaded machine does not fail it


def test_text_chunks_under_the_limit_are_read() -> None:
    data = with_chunks([png_chunk(b"tEXt", b"Comment\0" + b"a" * 200_000)])
    assert decode_image(data, max_pixels=MAX).image.size == (8, 8)


def test_only_the_formats_the_service_names_are_opened() -> None:
    with pytest.raises(NotAnImageError, match="JPEG, PNG, WebP, BMP, GIF or TIFF"):
        decode_image(encode(photo(), "PPM"), max_pixels=MAX)
    rle = bytearray(encode(photo().convert("P"), "BMP"))
    rle[30:34] = struct.pack("<I", 1)  # BI_RLE8
    with pytest.raises(UnsupportedFormatError, match="run-length encoded BMP"):
        decode_image(bytes(rle), max_pixels=MAX)


def test_a_progressive_jpeg_with_zero_sampling_factors_is_an_image_error() -> None:
    data = bytearray(encode(photo(), "JPEG", progressive=True))
    sof = data.index(b"\xff\xc2")
    for component in range(data[sof + 9]):
        data[sof + 11 + 3 * component] = 0  # horizontal and vertical sampling factors 0 (found by fuzzing)
    with pytest.raises(ImageError):
        header = read_header(bytes(data), max_pixels=MAX)
        decode_memory(header, INPUT)
        decode_for_model(bytes(data), max_pixels=MAX, input_size=INPUT)


def smooth_photo(width: int, height: int) -> Image.Image:
    """Smooth content with some texture, as a photo upscaled from a small one."""
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_drafted_jpeg_keeps_its_full_size_and_nearly_its_pixels(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(smooth_photo(2400, 1800), "JPEG", quality=90, exif=exif.tobytes())
    exact = decode_for_model(data, max_pixels=MAX, input_size=INPUT)
    drafted = decode_for_model(data, max_pixels=MAX, input_size=INPUT, draft=True)
    assert (drafted.height, drafted.width) == (exact.height, exact.width) == ((2400, 1800) if orientation == 6 else (1800, 2400))
    assert drafted.image.size == exact.image.size == (INPUT[1], INPUT[0])
    difference = np.abs(np.asarray(drafted.image, dtype=np.int16) - np.asarray(exact.image, dtype=np.int16))
    assert difference.any()  # decoded at a reduced scale: not the exact path's pixels
    assert difference.mean() < 2.0


@pytest.mark.parametrize(
    "data",
    [
        encode(smooth_photo(2 * INPUT[1] * 2 - 1, 2 * INPUT[0] * 2 - 1), "PNG"),  # not a JPEG
        encode(smooth_photo(4 * INPUT[1] - 1, 2 * INPUT[0] - 1), "JPEG"),  # under twice the input on one side
    ],
    ids=["png", "small jpeg"],
)
def test_draft_leaves_other_images_to_the_exact_path(data: bytes) -> None:
    exact = decode_for_model(data, max_pixels=MAX, input_size=INPUT)
    drafted = decode_for_model(data, max_pixels=MAX, input_size=INPUT, draft=True)
    np.testing.assert_array_equal(np.asarray(drafted.image), np.asarray(exact.image))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_a_drafted_decode_stays_under_the_estimate() -> None:
    for name, data in cost_cases().items():
        if "jpeg" not in name:
            continue
        estimate = decode_memory(read_header(data, max_pixels=MAX), INPUT)
        measured = peak_growth(lambda data=data: decode_for_model(data, max_pixels=MAX, input_size=INPUT, draft=True))
        assert measured <= estimate, f"{name}: measured {measured / 1e6:.1f} MB over the estimate {estimate / 1e6:.1f}"
