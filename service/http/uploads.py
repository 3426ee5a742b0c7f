"""Reading the image bytes out of a request: multipart parts or the raw body."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from ..errors import MissingImageError, TooManyImagesError, UnsupportedMediaTypeError

RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _file_parts(request: Request, name: str) -> list[bytes]:
    async with request.form() as form:
        parts = []
        for value in form.getlist(name):
            if not isinstance(value, UploadFile):
                raise MissingImageError(f"multipart part {name!r} is not a file (it has no filename)")
            parts.append(await value.read())
        return parts


async def read_one_image(request: Request) -> bytes:
    """The image of a single-image request: multipart part `image` or the raw body."""
    media = _media_type(request)
    if media == "multipart/form-data":
        parts = await _file_parts(request, "image")
        if not parts:
            raise MissingImageError("no `image` part in the multipart form")
        if len(parts) > 1:
            raise TooManyImagesError(f"{len(parts)} `image` parts; send one, or use /v1/localize/batch")
        return parts[0]
    if media.startswith(RAW_IMAGE_TYPES):
        return await request.body()
    if not media:
        raise MissingImageError(
            "no image: send it as multipart part `image`, or as the body with Content-Type image/*"
        )
    raise UnsupportedMediaTypeError(
        f"Content-Type {media} is not accepted: send multipart/form-data with part `image`, "
        "or the raw image with Content-Type image/jpeg, image/png, ..."
    )


async def read_batch_images(request: Request, limit: int) -> list[bytes]:
    """The `images` parts of a batch request, at most `limit` of them."""
    media = _media_type(request)
    if media != "multipart/form-data":
        raise UnsupportedMediaTypeError("send the images as multipart/form-data parts named `images`")
    parts = await _file_parts(request, "images")
    if not parts:
        raise MissingImageError("no `images` parts in the multipart form")
    if len(parts) > limit:
        raise TooManyImagesError(f"{len(parts)} images in one request; the limit is {limit}")
    return parts
