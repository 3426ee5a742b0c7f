"""Bytes in, images out: decoding with limits and a cost known before it.

Decoding follows docs/reference.md section 1: Pillow, EXIF orientation applied, any mode to RGB,
resized straight to the model's input size with PIL bilinear (aspect ratio not kept).
`read_header` reads what an image will cost before any pixel is decoded (`decode_memory`), and
`decode_for_model` keeps to it: each step drops its source, an EXIF turn happens at the narrower
mode, 16-bit and 32-bit images become 8-bit band by band in integers, and only the model-sized
image outlives the call.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin

from ..errors import (
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from .containers import check_structure, jpeg_first_scan

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # Pillow opens nothing else (JPEG includes MPO)
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"

# PNG text chunks (tEXt, zTXt, iTXt) are inflated while the header is read. Each stays capped at
# Pillow's 1 MB (ICC profiles share that cap); all of one image's at 1 MB instead of Pillow's 64 MB.
PngImagePlugin.MAX_TEXT_MEMORY = 1 << 20

# Formats people send that Pillow cannot decode: named so the error says what was sent.
_KNOWN_UNSUPPORTED = (
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)
_ISO_BMFF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}

_HIGH_BIT_DEPTH = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
# Modes whose RGB repeats one channel: converted to L and resized as L (the same pixels, a quarter
# of the memory: Pillow resizes each channel alike).
_VIA_L = {"1", "L", "LA"} | _HIGH_BIT_DEPTH
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # Pillow's storage; else 4
BAND_PIXELS = 1 << 18  # pixels per band of a 16-/32-bit conversion
_BAND_BYTES = 24 * BAND_PIXELS  # a band's copies: Pillow's, numpy's, two in int32 and one in uint8
# Measured over the steps' pixel bytes (tests/test_imaging.py): allocator and libraries, up to 12 %
# of them plus about a megabyte in a fresh process, up to 3 MB in one that has run a while (the whole
# test suite before the measurement: a 16-bit PNG's decode peaked 1.3 MB above its fresh-process figure).
_OVERHEAD_BYTES = 4 << 20
# A JPEG at least this many times the model's input on both sides is decoded at a reduced scale
# (libjpeg's DCT scaling: 1/2, 1/4 or 1/8), never below this multiple of the input, and resized from
# there: the pixel count the decoder and the resize touch then no longer grows with the photo.
DRAFT_MARGIN = 2
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class DecodedImage:
    """A loaded RGB image, EXIF-transposed, and what it was decoded from.

    `image` is the whole image or, from `decode_for_model`, the image already resized to the
    model's input as `preprocess` would (so the full-size pixels need not wait in the queue);
    `original_size` (H, W) is then the size of the image it came from.
    """

    image: Image.Image
    format: str
    original_size: tuple[int, int] | None = None

    @property
    def width(self) -> int:
        return self.original_size[1] if self.original_size else self.image.width

    @property
    def height(self) -> int:
        return self.original_size[0] if self.original_size else self.image.height


@dataclass(frozen=True)
class ImageHeader:
    """What decoding an image will take, read from its header alone."""

    format: str
    mode: str  # Pillow's mode of the decoded pixels
    width: int  # of the stored pixel grid, before the EXIF orientation
    height: int
    orientation: int  # EXIF orientation, 1 to 8 (1: as stored)
    palette_alpha: bool  # a palette with a transparent entry: goes to RGB through RGBA
    decoder_bytes: int  # what the format's decoder holds beside the decoded pixels

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the stored grid (a turn by the orientation keeps the pixel count)."""
        return self.height, self.width


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:64].lstrip()
    for magic, name in _KNOWN_UNSUPPORTED:
        if head.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(data[8:12])
    return None


def _text_limit(exc: Exception) -> bool:
    return isinstance(exc, ValueError) and "MAX_TEXT_" in str(exc)


def _text_too_large() -> ImageTooLargeError:
    return ImageTooLargeError(
        f"the PNG's text chunks (tEXt, zTXt, iTXt metadata) inflate to more than "
        f"{PngImagePlugin.MAX_TEXT_MEMORY:,} bytes; it was refused before decoding"
    )


def _check_size(width: int, height: int, max_pixels: int, max_side: int | None) -> None:
    if width <= 0 or height <= 0:
        raise NotAnImageError(f"image header gives an empty size {width} x {height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width} x {height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(SPA_MAX_IMAGE_PIXELS); it was refused before decoding"
        )
    if max_side is not None and max(width, height) > max_side:
        raise ImageTooLargeError(
            f"image is {width} x {height}: its long side is over the limit of {max_side:,} pixels "
            "(SPA_MAX_IMAGE_SIDE); it was refused before decoding"
        )


def _open(data: bytes, *, max_pixels: int, max_side: int | None) -> Image.Image:
    """The image with its header read and checked, no pixel decoded."""
    if not data:
        raise EmptyImageError("the image is empty (0 bytes)")
    check_structure(data)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused before decoding, over the decompression-bomb limit: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever Pillow makes of bytes that are no image it reads
        if _text_limit(exc):
            raise _text_too_large() from None
        name = _sniff_unsupported(data)
        if name:
            raise UnsupportedFormatError(f"{name} images are not supported; send {FORMAT_NAMES}") from None
        raise NotAnImageError(
            f"the {len(data)} bytes sent are not an image in a format this server reads ({FORMAT_NAMES})"
        ) from None
    _check_size(image.width, image.height, max_pixels, max_side)
    return image


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation known from the header. Image.getexif itself, not a format's
    override: PNG's decodes the whole image to look for an eXIf chunk after the pixels (which the
    PNG specification places before them; one there is not honoured). Broken EXIF counts as 1."""
    try:
        orientation = Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block does not spoil the pixels
        return 1
    return orientation if orientation in _TURNS else 1


def _decoder_bytes(image: Image.Image, data: bytes) -> int:
    """Memory a format's decoder holds beside the decoded pixels (measured: tests/test_imaging.py)."""
    pixels = image.width * image.height
    if image.format in ("JPEG", "MPO"):
        layers = getattr(image, "layer", [])
        scan = jpeg_first_scan(data)
        if layers and (image.info.get("progressive") or (scan is not None and scan < len(layers))):
            # libjpeg keeps every DCT coefficient of a multi-scan JPEG: 2 bytes each, per component
            # at its sampling.
            sampling = [(max(1, layer[1]), max(1, layer[2])) for layer in layers]  # 0 is invalid: libjpeg refuses it
            h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
            return math.ceil(2 * pixels * sum(h * v for h, v in sampling) / (h_max * v_max))
        return 0
    if image.format == "WEBP":
        # Pillow's WebP decoder: a copy of the file, libwebp's two canvases and the frame, 4 bytes a pixel each.
        return len(data) + 12 * pixels
    if image.format == "TIFF" and image.tag_v2.get(259, 1) != 1:
        # libtiff's buffer for one strip or tile (at least 4 bytes a pixel: its RGBA path), a copy of
        # the file. Uncompressed strips are read straight into the image, 64 KB at a time.
        return len(data) + _tiff_block_bytes(image)
    return 0


def _tiff_block_bytes(image: Image.Image) -> int:
    """Bytes of a TIFF's largest strip or tile as libtiff buffers it; tags that make no sense
    count as one strip of the whole image at 8 bytes a pixel (Pillow refuses them when decoding)."""
    tags = image.tag_v2
    try:
        if 322 in tags and 323 in tags:
            block = int(tags[322]) * int(tags[323])
        else:
            block = min(int(tags.get(278, image.height)), image.height) * image.width
        samples = int(tags.get(277, 1))
        bits = tags.get(258, (8,))
        bits = tuple(int(b) for b in bits) if isinstance(bits, tuple) else (int(bits),)
        raw = math.ceil((sum(bits) if len(bits) == samples else bits[0] * samples) / 8)
    except (TypeError, ValueError, IndexError, OverflowError):
        return 8 * image.width * image.height
    return max(0, block) * max(4, raw)


def read_header(data: bytes, *, max_pixels: int, max_side: int | None = None) -> ImageHeader:
    """What decoding `data` will take, from its header: no pixel is decoded.

    Raises what `decode_image` raises for a header: EmptyImageError, NotAnImageError,
    UnsupportedFormatError, ImageTooLargeError (over `max_pixels`, over `max_side` on the long
    side, or more metadata than is parsed).
    """
    image = _open(data, max_pixels=max_pixels, max_side=max_side)
    return ImageHeader(
        format=image.format or "unknown",
        mode=image.mode,
        width=image.width,
        height=image.height,
        orientation=_orientation(image),
        palette_alpha=image.mode in ("P", "PA") and "transparency" in image.info,
        decoder_bytes=_decoder_bytes(image, data),
    )


def _resize_bytes(width: int, height: int, input_size: tuple[int, int], pixel_bytes: int) -> int:
    """Pillow's bilinear resize of a (width x height) image to `input_size`: its weights, per axis
    one row of 2 * ceil(in / out) + 1 doubles per output (16 bytes per pixel of a long side), and
    the first pass's output."""
    out_height, out_width = input_size

    def weights(source: int, out: int) -> int:
        return 8 * out * (2 * math.ceil(max(1.0, source / out)) + 1)

    return weights(width, out_width) + weights(height, out_height) + out_width * height * pixel_bytes


def decode_memory(header: ImageHeader, input_size: tuple[int, int]) -> int:
    """Bytes `decode_for_model` holds at its peak for this image, besides the request's own bytes.

    The largest of its steps (and the overhead measured over them): decoding (the pixels and the decoder's buffers), each mode
    conversion with its source, an EXIF turn (two copies at the narrower mode) and the resize to
    `input_size` = (H, W), whose weights grow with the sides.
    """
    pixels = header.width * header.height
    source = _PIXEL_BYTES.get(header.mode, 4)
    target = 1 if header.mode in _VIA_L else 4
    steps = [source * pixels + header.decoder_bytes]
    if header.mode in _HIGH_BIT_DEPTH:
        steps.append((source + target) * pixels + _BAND_BYTES)
    elif header.palette_alpha:
        # P -> RGBA holds a second full-size image inside Pillow's convert (measured: over 8 bytes a pixel
        # at its peak), then RGBA -> RGB holds both.
        steps += [(source + 8) * pixels, 8 * pixels]
    elif header.mode not in ("L", "RGB"):
        steps.append((source + target) * pixels)
    if header.orientation != 1:
        steps.append(2 * min(source, target) * pixels)
    shown = (header.height, header.width) if header.orientation >= 5 else (header.width, header.height)
    steps.append(target * pixels + _resize_bytes(*shown, input_size, target))
    return max(steps) * 9 // 8 + _OVERHEAD_BYTES


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float image -> L, band by band: round(v / 257) clipped to [0, 255]
    for integers (Pillow's own conversion clips 16-bit values at 255, a white image), round(v)
    clipped for float (NaN -> 0)."""
    width, height = image.size
    out = Image.new("L", image.size)
    rows = max(1, BAND_PIXELS // width)
    for top in range(0, height, rows):
        box = (0, top, width, min(top + rows, height))
        band = np.asarray(image.crop(box))
        if image.mode == "F":
            with np.errstate(invalid="ignore"):  # NaN is expected input here, and becomes 0
                eight_bit = np.nan_to_num(np.clip(np.rint(band), 0, 255), nan=0.0).astype(np.uint8)
        else:
            # (v + 128) // 257 == round(v / 257) for 0 <= v <= 65535: v / 257 is never halfway.
            values = np.clip(band, 0, 65535).astype(np.int32, copy=False)
            values += 128
            values //= 257
            eight_bit = values.astype(np.uint8)
        out.paste(Image.fromarray(eight_bit), box[:2])
    return out


@contextmanager
def _decoding(fmt: str) -> Iterator[None]:
    """Pillow's failures on the pixels, as the image errors they are."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused while decoding: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever Pillow makes of pixel data it cannot read
        if _text_limit(exc):
            raise _text_too_large() from None
        if isinstance(exc, ValueError) and "conversion" in str(exc):
            raise UnsupportedFormatError(f"{fmt} images of this colour mode are not supported ({exc})") from None
        raise TruncatedImageError(f"the {fmt} image is truncated or corrupt and could not be decoded ({exc})") from None


def _draft(image: Image.Image, orientation: int, input_size: tuple[int, int]) -> None:
    """Let a JPEG decode at the smallest DCT scale that keeps both sides at least DRAFT_MARGIN
    times the model's `input_size` = (H, W) (turned as the EXIF orientation turns the image)."""
    height, width = input_size
    if orientation >= 5:
        height, width = width, height
    image.draft(image.mode, (DRAFT_MARGIN * width, DRAFT_MARGIN * height))


def _decoded(
    data: bytes, *, max_pixels: int, max_side: int | None, exif_transpose: bool,
    draft_for: tuple[int, int] | None = None,
) -> tuple[Image.Image, str, tuple[int, int]]:
    """The pixels in L (the modes of `_VIA_L`) or RGB, turned by the EXIF orientation at the
    narrower of their own mode and that one, the format, and the (H, W) of the full-scale image.
    With `draft_for` (the model's input size), a large JPEG is decoded at a reduced scale (`_draft`).
    One step after another rebinds `image`, so each source is freed as soon as its successor
    exists (the peaks of `decode_memory`)."""
    image = _open(data, max_pixels=max_pixels, max_side=max_side)
    fmt = image.format or "unknown"
    orientation = _orientation(image) if exif_transpose else 1
    turn = _TURNS.get(orientation)
    full_size = (image.width, image.height) if orientation >= 5 else (image.height, image.width)
    with _decoding(fmt):
        if draft_for is not None and fmt in ("JPEG", "MPO"):
            _draft(image, orientation, draft_for)
        image.load()
        if turn is not None and _PIXEL_BYTES.get(image.mode, 4) <= (1 if image.mode in _VIA_L else 4):
            image, turn = image.transpose(turn), None
        if image.mode in _HIGH_BIT_DEPTH:
            image = _high_bit_depth_to_l(image)
        elif image.mode in _VIA_L and image.mode != "L":
            image = image.convert("L")
        elif image.mode not in ("L", "RGB"):
            if image.mode in ("P", "PA") and "transparency" in image.info:
                image = image.convert("RGBA")
            image = image.convert("RGB")
        if turn is not None:
            image = image.transpose(turn)
    return image, fmt, full_size


def decode_image(data: bytes, *, max_pixels: int, exif_transpose: bool = True) -> DecodedImage:
    """Decode bytes into an RGB image, refusing more than `max_pixels` before decoding.

    `exif_transpose=False` keeps the stored pixel grid, as evaluation code reads data sets
    (`Image.open(path).convert('RGB')`); served images follow their EXIF orientation.

    Raises EmptyImageError, NotAnImageError, UnsupportedFormatError, ImageTooLargeError or
    TruncatedImageError, each with a message that says what was wrong.
    """
    image, fmt, _ = _decoded(data, max_pixels=max_pixels, max_side=None, exif_transpose=exif_transpose)
    with _decoding(fmt):
        image = image if image.mode == "RGB" else image.convert("RGB")
    return DecodedImage(image=image, format=fmt)


def decode_for_model(
    data: bytes, *, max_pixels: int, input_size: tuple[int, int], max_side: int | None = None, draft: bool = False
) -> DecodedImage:
    """`decode_image`, then resized to the model's `input_size` = (H, W) as `preprocess` does,
    holding at most `decode_memory` of its header on the way; `original_size` is the decoded
    image's (H, W). `preprocess` gives the same model input for it as for `decode_image`'s.

    `draft=True`: a JPEG several times the input is decoded at a reduced DCT scale and resized from
    there (`DRAFT_MARGIN`); different pixels, a fraction of the cost (agreement: docs/performance.md).
    `original_size` stays the full-scale image's, so boxes and heatmaps keep its coordinates."""
    image, fmt, original_size = _decoded(
        data, max_pixels=max_pixels, max_side=max_side, exif_transpose=True, draft_for=input_size if draft else None
    )
    with _decoding(fmt):
        image = image.resize((input_size[1], input_size[0]), Image.BILINEAR)
        image = image if image.mode == "RGB" else image.convert("RGB")
    return DecodedImage(image=image, format=fmt, original_size=original_size)
