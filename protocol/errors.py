"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status
the official clients map to their exception classes (400 BadRequest, 401, 402, 403, 404, 413,
422, 429 RateLimit, 503). A refusal that retrying cannot fix says so in `x-should-retry: false`,
which the openai client honours instead of retrying 408/409/429/5xx on its own."""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """An error answer: status, OpenAI error fields and whether the client should retry.

    `retry_after` (seconds) is sent as Retry-After, for a full queue (503) or a rate limit (429).
    `retry` False adds `x-should-retry: false`; by default only 408, 429 and 5xx are retryable.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        retry: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = error_type or _TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.retry = retry if retry is not None else (status in (408, 429) or status >= 500)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The JSON body (also what a stream's error event carries)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Headers that go with the answer."""
        headers = {} if self.retry else {"x-should-retry": "false"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return headers

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"
