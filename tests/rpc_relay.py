"""A loopback JSON-RPC relay in front of a real node that plays a hosted provider's caps and failures.

Tests point a client at `RpcRelay.url`; every request is forwarded to the real upstream (Anvil)
unless the relay's `behaviour` answers it differently: a `getLogs` cap error, a silently truncated
answer, a `null` block from a lagging backend, an answer held back past the client's timeout. While
`down` is set it drops every connection unanswered (an outage). The relay listens on 127.0.0.1 on
a port the kernel picks and is stopped by the fixture that started it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from web3 import Web3

Forward = Callable[[dict[str, Any]], dict[str, Any]]
# (request, forward) -> the response object, or (HTTP status, response object).
Behaviour = Callable[[dict[str, Any], Forward], "dict[str, Any] | tuple[int, dict[str, Any]]"]


def rpc_error(request: dict[str, Any], code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response to `request`."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request.get("id"), "error": error}


class RpcRelay:
    """Forward JSON-RPC over HTTP to `upstream`, letting `behaviour` rewrite or replace answers."""

    def __init__(
        self, upstream: str, *, upstream_timeout: float = 10.0, client_timeout: float = 10.0
    ) -> None:
        self.upstream = upstream
        self.upstream_timeout = upstream_timeout
        self.behaviour: Behaviour | None = None
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self.down = threading.Event()
        self.dropped = 0
        relay = self

        class Handler(BaseHTTPRequestHandler):
            # Headers and body go out in separate writes: with Nagle's algorithm on, each answer
            # would wait for the client's delayed ACK (tens of ms per request).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if relay.down.is_set():
                    with relay._lock:
                        relay.dropped += 1
                    self.close_connection = True
                    return
                status, answer = relay._answer(json.loads(body))
                payload = json.dumps(answer).encode()
                with contextlib.suppress(OSError):  # a client that gave up waiting has gone
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: pytest shows the watcher's own log lines."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.w3 = Web3(
            Web3.HTTPProvider(
                self.url, request_kwargs={"timeout": client_timeout}, exception_retry_configuration=None
            )
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> RpcRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wait for the server thread; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        """The requests received so far (of one method, when given), in arrival order."""
        with self._lock:
            return [r for r in self._requests if method is None or r.get("method") == method]

    def forward(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send `request` to the upstream node unchanged and return its answer."""
        response = requests.post(self.upstream, json=request, timeout=self.upstream_timeout)
        response.raise_for_status()
        return response.json()

    def _answer(self, request: Any) -> tuple[int, Any]:
        # web3's HTTPProvider sends one request per POST; batches would need their own rules.
        assert isinstance(request, dict), "the relay handles single JSON-RPC requests only"
        with self._lock:
            self._requests.append(request)
        behaviour = self.behaviour
        answer = self.forward(request) if behaviour is None else behaviour(request, self.forward)
        return answer if isinstance(answer, tuple) else (200, answer)
