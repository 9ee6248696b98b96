"""A request body size limit, as a pure ASGI middleware in front of the whole app.

A body announced with Content-Length above the limit is refused with 413 before a byte of it is
read (the client, if it sent `Expect: 100-continue`, never has to send it). Every body is also
counted while the app receives it, whatever the headers say: a chunked body has no length to check
up front, and a Content-Length can disagree with what arrives. The moment the count would pass the
limit the app gets `http.disconnect` instead of the chunk that crosses it (so it never sees more
than `max_bytes`), the client gets 413, and whatever the app still sends is dropped. If the app had
already started its response, that response is ended instead, since a second one cannot be sent.

Errors are in OpenAI's shape from `protocol.errors.ApiError` and close the connection: the rest of
an unread body cannot be skipped in HTTP/1.1 without reading it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from protocol.errors import ApiError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimit", "RequestLimit"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a long chat with a full context of code is a few hundred KB

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DIGITS = re.compile(rb"[0-9]+")


class BodyLimit:
    """Wrap `app` so that no request body longer than `max_bytes` reaches it (see the module)."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a byte count of 0 or more, not {max_bytes!r}")
        self.app, self.max_bytes = app, max_bytes

    def too_large(self) -> ApiError:
        """The 413 answer."""
        return ApiError(
            413,
            f"the request body is larger than this node's limit of {self.max_bytes} bytes; "
            "send a shorter prompt or fewer messages",
            code="body_too_large",
            param=None,
            retry=False,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = self._declared_length(scope)
        if declared == "invalid":
            error = ApiError(
                400,
                "the Content-Length header is not one byte count; send a single decimal Content-Length, "
                "or none with a chunked body",
                code="invalid_content_length",
                param=None,
                retry=False,
            )
            await _answer(send, error)
            return
        if declared == "too large":
            self._log(scope, "declared")
            await _answer(send, self.too_large())
            return
        await _Guard(self, scope, receive, send).run()

    def _declared_length(self, scope: Scope) -> int | Literal["invalid", "too large"] | None:
        """The Content-Length as a number, None without one, "invalid" or "too large"."""
        values = [value for name, value in scope.get("headers", ()) if name.lower() == b"content-length"]
        if not values:
            return None
        # Repeated headers, or one header with a list, must all state the same length (RFC 9110, 8.6).
        lengths = {part.strip(b" \t") for value in values for part in value.split(b",")}
        if len(lengths) != 1:
            return "invalid"
        length = lengths.pop()
        if not _DIGITS.fullmatch(length):
            return "invalid"
        digits = length.lstrip(b"0") or b"0"
        # Compared as digits first: an absurdly long number is simply too large, never parsed.
        if len(digits) > len(str(self.max_bytes)) or int(digits) > self.max_bytes:
            return "too large"
        return int(digits)

    def _log(self, scope: Scope, how: str) -> None:
        client = scope.get("client") or ("-", 0)
        log.info(
            "event=body_too_large how=%s max_bytes=%d method=%s path=%s client=%s",
            how,
            self.max_bytes,
            scope.get("method", "-"),
            scope.get("path", "-"),
            client[0],
        )


class _Guard:
    """One request: counts the body the app receives and owns what reaches the client."""

    def __init__(self, limit: BodyLimit, scope: Scope, receive: Receive, send: Send) -> None:
        self.limit, self.scope = limit, scope
        self._receive, self._send = receive, send
        self.received = 0
        self.exceeded = False
        self.response_started = False
        self.response_ended = False

    async def run(self) -> None:
        try:
            await self.limit.app(self.scope, self.receive, self.send)
        except Exception:
            if not self.exceeded:
                raise
            # The app failed on the disconnect it was handed (Starlette raises ClientDisconnect):
            # the expected end of a refused request, whose 413 has gone out already.

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.max_bytes:
                self.exceeded = True
                self.limit._log(self.scope, "counted")
                await self._refuse()
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded:
            return  # the client has its 413 (or the end of the response); the app is told nothing
        if message["type"] == "http.response.start":
            self.response_started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_ended = True
        await self._send(message)

    async def _refuse(self) -> None:
        if self.response_ended:
            return
        self.response_ended = True
        if self.response_started:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _answer(self._send, self.limit.too_large())


async def _answer(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers().items()
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestLimit:
    """Wrap `app` so that at most `max_requests` HTTP requests run at once (streams included); past it
    a request is answered 503 with a Retry-After at once. `exempt` paths (health, metrics) are never
    refused, so monitoring sees a node that is full. uvicorn's own limit answers in plain text, so
    the node keeps this count and leaves uvicorn a looser cap on connections."""

    def __init__(
        self, app: ASGIApp, max_requests: int, retry_after: float = 1.0, exempt: tuple[str, ...] = ()
    ) -> None:
        self.app, self.max_requests, self.retry_after = app, max_requests, retry_after
        self.exempt = frozenset(exempt)
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_requests:
            error = ApiError(
                503,
                f"the node is serving its limit of {self.max_requests} requests at once; retry later "
                "or use another node",
                code="too_many_requests",
                retry_after=self.retry_after,
            )
            await _answer(send, error)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
