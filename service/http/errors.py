"""How errors become HTTP answers: the status of every error code, and the app's handlers.

Every error answer is `{"error": {"code": ..., "message": ...}}` (`schemas.error_content`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    ImageError,
    ImageTooLargeError,
    InvalidRequestError,
    MissingImageError,
    ModelUnavailable,
    NotAnImageError,
    Overloaded,
    ProcessingFailed,
    RequestTooCostly,
    ShuttingDown,
    SpaError,
    TooManyImagesError,
    UnknownModelError,
    UnsupportedFormatError,
    UnsupportedMediaTypeError,
)
from .schemas import error_content

# Looked up along the exception's MRO, so a new ImageError subclass gets a sensible status.
STATUS_BY_ERROR: dict[type[SpaError], int] = {
    MissingImageError: 422,
    UnsupportedMediaTypeError: 415,
    TooManyImagesError: 413,
    ImageError: 422,
    NotAnImageError: 415,
    UnsupportedFormatError: 415,
    ImageTooLargeError: 413,
    ProcessingFailed: 500,
    InvalidRequestError: 422,
    RequestTooCostly: 413,
    UnknownModelError: 404,
    Overloaded: 503,
    ShuttingDown: 503,
    ModelUnavailable: 503,
}

# Codes for the HTTPExceptions that Starlette raises itself (routing, multipart parsing).
CODE_BY_STATUS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def status_of(error: SpaError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_content(code, message), status_code=status, headers=headers)


def closing_error(status: int, code: str, message: str) -> JSONResponse:
    """An error after which the connection is closed: the rest of the body is never read."""
    return error_response(status, code, message, headers={"Connection": "close"})


def install_error_handlers(app: FastAPI, *, retry_after_s: int) -> None:
    async def spa_error(request: Request, exc: SpaError) -> JSONResponse:
        status = status_of(exc)
        headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
        return error_response(status, exc.code, str(exc), headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0])
            problems.append(f"{where}: {error['msg']}")
        return error_response(422, "invalid_parameter", "; ".join(problems))

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = CODE_BY_STATUS.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    app.add_exception_handler(SpaError, spa_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
