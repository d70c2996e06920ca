"""KiwiError subclasses -> HTTP status, in one place; error bodies never echo request content.

INCEpTION shows an error body to the user and logs it, and request bodies are clinical notes, so
validation errors keep the location and message of each problem but drop the offending input.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from recommender.errors import (
    BusyError,
    ConfigError,
    ConflictError,
    DocumentError,
    FormatError,
    KiwiError,
    LimitError,
    ModelError,
    NotFoundError,
    OverloadError,
    SchemaError,
    UnavailableError,
)

log = logging.getLogger(__name__)

STATUS: dict[type[KiwiError], int] = {
    FormatError: 400,
    DocumentError: 422,
    SchemaError: 422,
    NotFoundError: 404,
    BusyError: 429,
    ConflictError: 409,
    UnavailableError: 503,
    LimitError: 413,
    ModelError: 503,
    OverloadError: 503,
    ConfigError: 500,
}


class ErrorBody(BaseModel):
    """Every 4xx and 5xx body: a message, or the validation problems (location, message, type)."""

    detail: str | list[dict[str, Any]]
    error: str | None = None


# Declared on every route, so the OpenAPI schema says what a refusal looks like.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 404, 409, 413, 422, 429, 503)
}


def status_for(error: KiwiError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def kiwi_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, KiwiError)
        status = status_for(exc)
        log.warning("%s %s -> %d %s: %s", request.method, request.url.path, status, type(exc).__name__, exc)
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=status)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        # Unparseable JSON is a malformed request (400); well-formed JSON of the wrong shape is 422.
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        log.warning(
            "%s %s -> %d: %d validation error(s)", request.method, request.url.path, status, len(errors)
        )
        return JSONResponse({"detail": errors}, status_code=status)

    app.add_exception_handler(KiwiError, kiwi_error)
    app.add_exception_handler(RequestValidationError, validation_error)
