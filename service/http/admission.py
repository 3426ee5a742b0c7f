"""Admission by cost, before the work: what a request will cost is known from the image headers,
so an overloaded server refuses in milliseconds and one huge request cannot sink the rest.

A request's work is counted in megapixel-maps: each image costs its pixels once (decode,
preprocess) plus, per class asked for, one full-size pass for its boxes and, with heatmap PNGs,
one pass at the PNG's size. Memory is bounded image by image: each image's decode, the one step
whose memory follows its bytes per pixel (decoded mode, format, EXIF turn) and its long side, is
estimated from the header (`imaging.decode_memory`) and refused over a limit, while the process
decodes a fixed number of images at once (SPA_DECODE_THREADS). The rest of a request's memory does
not grow with its image: boxes and PNGs are made tile by tile from maps at the class map's
resolution, and only the model-sized image waits for the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from spa_service.pipeline.heatmap_png import heatmap_png_size
from spa_service.pipeline.imaging import ImageHeader

from ..errors import ImageTooLargeError, Overloaded, RequestTooCostly


def image_work_mp(size: tuple[int, int], classes: int, *, png_max_side: int | None) -> float:
    """Megapixel-maps of one image of `size` = (H, W) with `classes` maps; `png_max_side` None: no PNGs."""
    height, width = size
    pixels = height * width
    per_class = pixels
    if png_max_side is not None:
        png_h, png_w = heatmap_png_size(size, png_max_side)
        per_class += png_h * png_w
    return (pixels + classes * per_class) / 1e6


def check_image_memory(header: ImageHeader, needed_bytes: int, limit_mb: float) -> None:
    """ImageTooLargeError (413) when decoding the image needs more than `limit_mb` megabytes."""
    if needed_bytes > limit_mb * 1e6:
        raise ImageTooLargeError(
            f"decoding this {header.width} x {header.height} {header.format} image (mode {header.mode}) would take "
            f"about {needed_bytes / 1e6:,.0f} MB, over the limit of {limit_mb:,.0f} MB (SPA_MAX_IMAGE_MEMORY_MB); "
            "it was refused before decoding: send it smaller (progressive JPEG and WebP cost the most per pixel)"
        )


@dataclass
class Ticket:
    """Work admitted for one request; `release` it when the request is done (idempotent)."""

    gate: Admission
    work_mp: float
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate.in_flight_mp -= self.work_mp


class Admission:
    """Counts the work admitted and not yet done. Single event loop: no locking needed."""

    def __init__(self, *, max_request_mp: float, max_in_flight_mp: float) -> None:
        self.max_request_mp = max_request_mp
        self.max_in_flight_mp = max_in_flight_mp
        self.in_flight_mp = 0.0

    def admit(self, work_mp: float) -> Ticket:
        """A ticket for `work_mp`, or RequestTooCostly (413) / Overloaded (503)."""
        if work_mp > self.max_request_mp:
            raise RequestTooCostly(
                f"this request is {work_mp:,.0f} megapixel-maps of work, over the per-request limit of "
                f"{self.max_request_mp:,.0f} (SPA_MAX_REQUEST_WORK_MP): ask for fewer classes (topk, class_id), "
                "send a smaller image, or use heatmap=none"
            )
        # An idle server takes any request under the per-request limit, so nothing is refused forever.
        if self.in_flight_mp > 0 and self.in_flight_mp + work_mp > self.max_in_flight_mp:
            raise Overloaded(
                f"the server is busy ({self.in_flight_mp:,.0f} of {self.max_in_flight_mp:,.0f} megapixel-maps "
                "of work in progress); retry shortly"
            )
        self.in_flight_mp += work_mp
        return Ticket(self, work_mp)
