"""HTTP pieces both daemons share: errors in OpenAI's shape for a FastAPI app (ApiError answers as
it says, and Starlette's own HTTP errors, an unknown path or a wrong method, in the same shape, so
clients see one error format), and the check of a node endpoint URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from protocol.errors import ApiError


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)


async def _api_error(request: Request, exc: Any) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _http_error(request: Request, exc: Any) -> JSONResponse:
    error = ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=error.headers())


def check_endpoint(value: str) -> str:
    """An http(s) URL with a host (and a valid port), without a trailing slash; ValueError otherwise."""
    parts = urlsplit(value.strip())
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(
            f"{value!r} must be an http:// or https:// URL with a host, e.g. http://203.0.113.7:8090"
        )
    return value.strip().rstrip("/")
