"""The runtime's error types: each names what was wrong, so callers can show it as is."""

from __future__ import annotations


class SpaError(Exception):
    """Base of every error the runtime raises on purpose."""

    code = "spa_error"


class ModelLoadError(SpaError):
    """A model directory, card or ONNX file is missing, malformed or inconsistent."""

    code = "model_load_error"


class ImageError(SpaError):
    """What stopped one image of a request: bytes that cannot be turned into an RGB image, or a
    failure on it. Each image of a batch gets its own."""

    code = "invalid_image"


class EmptyImageError(ImageError):
    code = "empty_image"


class NotAnImageError(ImageError):
    code = "not_an_image"


class UnsupportedFormatError(ImageError):
    code = "unsupported_format"


class TruncatedImageError(ImageError):
    code = "truncated_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


class ProcessingFailed(ImageError):
    """The server failed on this image (its own fault, logged, not the image's); the other images
    of a batch are answered as usual."""

    code = "processing_failed"


class InvalidRequestError(SpaError):
    """A parameter that is well-formed but does not fit the model (e.g. a class id out of range)."""

    code = "invalid_parameter"


class MissingImageError(SpaError):
    """A request without the image part (or body) it needs."""

    code = "missing_image"


class UnsupportedMediaTypeError(SpaError):
    code = "unsupported_media_type"


class TooManyImagesError(SpaError):
    code = "too_many_images"


class Overloaded(SpaError):
    """The queue is full: the client should retry later."""

    code = "overloaded"


class ShuttingDown(SpaError):
    """The server is draining and takes no new work."""

    code = "shutting_down"


class ModelUnavailable(SpaError):
    """The model's micro-batcher stopped on an internal failure: its requests fail, readiness is off."""

    code = "model_unavailable"


class RequestTooCostly(SpaError):
    """One request asks for more work than the server takes in one request, however idle it is."""

    code = "request_too_costly"


class UnknownModelError(SpaError):
    """A model name this server does not serve."""

    code = "unknown_model"
