"""The HTTP server as a service: binds in `start` (a taken port fails the daemon at once), serves in
`run`, and on `stop` stops accepting, lets running requests and streams finish for a grace period,
then closes what is left."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from starlette.types import ASGIApp

from protocol.service import Service

log = logging.getLogger(__name__)


class HttpServer(Service):
    name = "http"

    def __init__(
        self, app: ASGIApp, host: str, port: int, *, max_connections: int, grace_s: float = 30.0
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
            # h11, also where httptools is installed: httptools answers a Content-Length too large to
            # parse with its own plain-text 400 before the body limit can give the client a 413 in
            # OpenAI's shape (and it saved only ~17 us of a token's ~100 us of CPU here).
            http="h11",
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
