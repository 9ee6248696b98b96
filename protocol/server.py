"""The HTTP server as a service: binds in `start` (a taken port fails the daemon at once), serves in
`run`, and on `stop` stops accepting, lets running requests and streams finish for a grace period,
then closes what is left.

What one turn of the event loop writes to a connection leaves in one `send`: uvicorn writes a
response's status line and headers, its body and its end as separate writes, and on loopback each
`send` wakes the reader, which on two cores takes the CPU from the writer before it can write the
rest. A request the HTTP parser cannot read is answered 400 in OpenAI's shape, like every other
refusal.

Two parsers: h11 (the node's: it lets a Content-Length of any 20 digits through to the body limit,
which answers 413; httptools refuses one beyond 2^64 as malformed HTTP) and httptools (the
router's: ~30 us of CPU per request instead of h11's ~155 us, measured here with uvicorn on one
keep-alive connection; the router's whole cost per request is what it adds to the node's answer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from protocol.errors import ApiError
from protocol.service import Service

log = logging.getLogger(__name__)

Parser = Literal["h11", "httptools"]


class HttpServer(Service):
    name = "http"

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        max_connections: int,
        grace_s: float = 30.0,
        parser: Parser = "h11",
    ) -> None:
        self.host, self.port = host, port
        self._config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            # A cap on connections, idle ones included; requests are limited in the app (RequestLimit).
            limit_concurrency=2 * max_connections + 16,
            timeout_graceful_shutdown=grace_s,
            timeout_keep_alive=15,
            http=PROTOCOLS[parser],
        )
        self._server = uvicorn.Server(self._config)
        self._socket: socket.socket | None = None
        self._served = asyncio.Event()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on accepted
        # sockets whose protocol says TCP, and with Nagle on, a response written as headers then
        # body waits for the client's delayed ACK: 40 ms on every keep-alive request.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}; is another node running?"
            ) from exc
        sock.listen(2048)
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]
        log.info("event=listening host=%s port=%d", self.host, self.port)

    async def run(self) -> None:
        assert self._socket is not None
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self._served.set()
        if not self._server.should_exit:
            raise RuntimeError("the HTTP server stopped on its own")

    async def stop(self) -> None:
        """Stop accepting; serve() returns once in-flight requests finished or the grace period ended."""
        self._server.should_exit = True
        if self._server.started:
            await self._served.wait()
        if self._socket is not None:
            self._socket.close()


class CoalescingTransport:
    """A transport whose writes within one turn of the event loop go out as one write at the end
    of it (at once before `close` or `write_eof`). Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def invalid_http() -> bytes:
    """The whole answer to a request the parser refused, closing the connection."""
    error = ApiError(
        400,
        "the request is not valid HTTP/1.1 (malformed request line, header or Content-Length); "
        "send it with a standard HTTP client",
        code="invalid_http",
        retry=False,
    )
    body = json.dumps(error.body()).encode()
    head = (
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-should-retry: false\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _CoalescingMixin:
    """What both of uvicorn's protocols get here: a CoalescingTransport, and malformed HTTP
    refused in OpenAI's shape."""

    transport: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(CoalescingTransport(transport))  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        self.transport.write(invalid_http())
        self.transport.close()


class CoalescingH11Protocol(_CoalescingMixin, H11Protocol):
    """uvicorn's h11 protocol over a CoalescingTransport."""


class CoalescingHttpToolsProtocol(_CoalescingMixin, HttpToolsProtocol):
    """uvicorn's httptools protocol over a CoalescingTransport."""


PROTOCOLS: dict[str, type[asyncio.Protocol]] = {
    "h11": CoalescingH11Protocol,
    "httptools": CoalescingHttpToolsProtocol,
}
