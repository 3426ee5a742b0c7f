"""Image containers walked before Pillow reads them, so that what Pillow does per chunk, segment,
block or tag in Python is bounded whatever the bytes claim.

Pillow steps through PNG chunks, JPEG segments and stray bytes, GIF blocks and TIFF strips in
Python, microseconds each while holding the GIL: 20 MB of 12-byte PNG chunks, 4-byte JPEG
segments or 5-byte GIF comments keep a core busy for 7 to 16 s, and a TIFF that lists a million
strips for 14 s. These walks take at most as many steps as they allow, raise `ImageTooLargeError`
(or `UnsupportedFormatError`) past a limit, and leave bytes they cannot follow to Pillow, which
refuses them.
"""

from __future__ import annotations

import struct

from ..errors import ImageTooLargeError, UnsupportedFormatError

MAX_SEGMENTS = 4096  # JPEG segments before the first scan, GIF sub-blocks before the image, TIFF tags, WebP chunks
MAX_STRAY_BYTES = 4096  # JPEG fill and junk bytes between segments, which Pillow steps over one by one
PNG_CHUNKS = 4096  # PNG chunks in all, plus one per PNG_BYTES_PER_CHUNK of file
PNG_BYTES_PER_CHUNK = 8192
MAX_TAG_VALUES = 1 << 16  # numbers in one TIFF tag, each of which Pillow makes a Python int (strip offsets...)
MAX_EXIF_BYTES = 0xFFFF  # an EXIF block: what a JPEG's APP1 segment can hold
MAX_XMP_BYTES = 1 << 20

_TIFF_BYTE_TYPES = (1, 2, 7)  # BYTE, ASCII, UNDEFINED: Pillow keeps them as bytes or str


def _too_many(what: str, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"the image has more than {limit:,} {what}; it was refused before decoding (metadata this large is not a photo)"
    )


def check_structure(data: bytes) -> None:
    """Raise ImageTooLargeError when the container holds more pieces than Pillow may walk, or
    UnsupportedFormatError for a variant Pillow decodes in Python (run-length encoded BMP)."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            _png(data)
        elif data.startswith(b"\xff\xd8"):
            jpeg_first_scan(data)
        elif data[:6] in (b"GIF87a", b"GIF89a"):
            _gif(data)
        elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            _tiff(data)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            _webp(data)
        elif data[:2] == b"BM":
            _bmp(data)
    except (struct.error, IndexError):  # cut short: Pillow says what is wrong with it
        return


def _png(data: bytes) -> None:
    limit = PNG_CHUNKS + len(data) // PNG_BYTES_PER_CHUNK
    position, chunks = 8, 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > limit:
            raise _too_many(f"PNG chunks ({PNG_CHUNKS:,} plus one per {PNG_BYTES_PER_CHUNK:,} bytes of file)", limit)
        if kind == b"eXIf" and length > MAX_EXIF_BYTES:
            raise _too_many("bytes of EXIF", MAX_EXIF_BYTES)
        if kind == b"IEND":
            return
        position += 12 + length


def jpeg_first_scan(data: bytes) -> int | None:
    """The number of colour components in a JPEG's first scan (None if there is none), having
    checked the segments and stray bytes before it. Pillow parses up to that scan; libjpeg (C)
    reads the rest."""
    position, segments, stray = 2, 0, 0
    end = len(data)
    while position < end:
        if data[position] != 0xFF:
            following = data.find(b"\xff", position)
            following = end if following < 0 else following
            stray += following - position
            position = following
        else:
            window = data[position + 1 : position + 2 + MAX_STRAY_BYTES]
            fill = len(window) - len(window.lstrip(b"\xff"))
            stray += fill
            position += fill
            if position + 1 >= end:
                return None
            marker = data[position + 1]
            if marker == 0xDA:  # start of scan
                return data[position + 4] if position + 4 < end else None
            segments += 1
            if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD9:  # no length field
                position += 2
            else:
                position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if stray > MAX_STRAY_BYTES:
            raise _too_many("stray bytes between JPEG segments", MAX_STRAY_BYTES)
        if segments > MAX_SEGMENTS:
            raise _too_many("JPEG segments before the image data", MAX_SEGMENTS)
    return None


def _gif(data: bytes) -> None:
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    blocks = 0
    while position < len(data) and data[position] == 0x21:  # extensions, up to the first image
        position += 2
        while True:
            size = data[position]
            position += 1 + size
            blocks += 1
            if blocks > MAX_SEGMENTS:
                raise _too_many("GIF extension blocks before the image", MAX_SEGMENTS)
            if size == 0:
                break


def _tiff(data: bytes) -> None:
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF
        (offset,) = struct.unpack_from(order + "Q", data, 8)
        (tags,) = struct.unpack_from(order + "Q", data, offset)
        first, entry, count_format = offset + 8, 20, "Q"
    else:
        (offset,) = struct.unpack_from(order + "I", data, 4)
        (tags,) = struct.unpack_from(order + "H", data, offset)
        first, entry, count_format = offset + 2, 12, "I"
    if tags > MAX_SEGMENTS:
        raise _too_many("TIFF tags in the first directory", MAX_SEGMENTS)
    for i in range(tags):
        kind, count = struct.unpack_from(order + "H" + count_format, data, first + i * entry + 2)
        if kind not in _TIFF_BYTE_TYPES and count > MAX_TAG_VALUES:
            raise _too_many("values in one TIFF tag (strips, tiles...)", MAX_TAG_VALUES)


def _webp(data: bytes) -> None:
    position, chunks = 12, 0
    while position + 8 <= len(data):
        kind = data[position : position + 4]
        (size,) = struct.unpack_from("<I", data, position + 4)
        chunks += 1
        if chunks > MAX_SEGMENTS:
            raise _too_many("WebP chunks", MAX_SEGMENTS)
        if kind == b"EXIF" and size > MAX_EXIF_BYTES:
            raise _too_many("bytes of EXIF", MAX_EXIF_BYTES)
        if kind == b"XMP " and size > MAX_XMP_BYTES:
            raise _too_many("bytes of XMP", MAX_XMP_BYTES)
        position += 8 + size + (size & 1)


def _bmp(data: bytes) -> None:
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size >= 40 and struct.unpack_from("<I", data, 30)[0] in (1, 2):
        raise UnsupportedFormatError(
            "run-length encoded BMP images are not supported (Pillow decodes them in Python, a pixel run at a "
            "time); send the image as PNG or uncompressed BMP"
        )
