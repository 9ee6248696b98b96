"""Errors in OpenAI's shape for a FastAPI app: ApiError answers as it says, and Starlette's own
HTTP errors (an unknown path, a wrong method) in the same shape, so clients see one error format."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive

from protocol.errors import ApiError


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    """An ApiError as its answer (with `headers` besides its own)."""
    return JSONResponse(
        error.body(), status_code=error.status, headers={**error.headers(), **(headers or {})}
    )


async def _api_error(request: Request, exc: Any) -> JSONResponse:
    return error_response(exc)


async def _http_error(request: Request, exc: Any) -> JSONResponse:
    return error_response(
        ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    )


async def disconnected(receive: Receive) -> None:
    """Return when the client has gone away (once a request's body is read, `receive` waits for
    nothing else)."""
    while (await receive())["type"] != "http.disconnect":
        pass
