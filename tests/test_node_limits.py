"""The body size limit, in front of a real uvicorn server on a loopback port with each of the
daemons' HTTP parsers (protocol.server: h11 for the node, httptools for the router): announced and
chunked bodies over the limit get OpenAI's 413 and the app never sees more than the limit."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI, Request

from protocol.limits import BodyLimit
from protocol.server import PROTOCOLS
from tests.conftest import free_port

LIMIT = 1000


@dataclass
class Server:
    url: str
    port: int
    parser: str = "h11"
    calls: list[str] = field(default_factory=list)  # paths the server handed to the middleware
    seen: list[int] = field(default_factory=list)  # body bytes each app request read in the end
    # What the apps have read so far, after each piece of body (None: they were cut off).
    progress: queue.Queue[int | None] = field(default_factory=queue.Queue)


def make_app(server: Server) -> Any:
    """A FastAPI app that reads the body and echoes its length, a raw ASGI app that starts its
    response before it reads (at /raw), the limit around both, and a counter around everything."""
    inner = FastAPI()

    @inner.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        length = 0
        try:
            async for chunk in request.stream():
                length += len(chunk)
                server.progress.put(length)
        except BaseException:
            server.seen.append(length)
            server.progress.put(None)
            raise
        server.seen.append(length)
        return {"length": length}

    async def streaming_echo(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        length = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                server.seen.append(length)
                server.progress.put(None)
                await send({"type": "http.response.body", "body": b"end\n", "more_body": False})
                return
            length += len(message.get("body", b""))
            server.progress.put(length)
            await send({"type": "http.response.body", "body": b"%d\n" % length, "more_body": True})
            if not message.get("more_body"):
                break
        server.seen.append(length)
        await send({"type": "http.response.body", "body": b"end\n", "more_body": False})

    inner.mount("/raw", streaming_echo)
    limited = BodyLimit(inner, LIMIT)

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            server.calls.append(scope["path"])
        await limited(scope, receive, send)

    return counted


@pytest.fixture(params=sorted(PROTOCOLS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """uvicorn serving the limited app on a free loopback port with one of the daemons' HTTP
    protocols; stopped after the test."""
    port = free_port()
    state = Server(url=f"http://127.0.0.1:{port}", port=port, parser=request.param)
    config = uvicorn.Config(
        make_app(state),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        http=PROTOCOLS[request.param],
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not uv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield state
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-should-retry"] == "false"
    assert response.headers["connection"] == "close"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, code)
    return error


def raw_request(port: int, request: bytes) -> bytes:
    """Send `request` as is and read until the server closes (5 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def chunks(size: int, count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield b"x" * size


def wait_cut_off(server: Server) -> None:
    """Wait until the app has been handed its disconnect (the client may have its 413 before)."""
    while server.progress.get(timeout=10) is not None:
        pass


def paced(server: Server, size: int, count: int) -> Iterator[bytes]:
    """Chunks sent one at a time: the next goes once the app has read the last (so the server
    cannot hand it the whole body at once); stops when the app was cut off."""
    for _ in range(count):
        yield b"x" * size
        if server.progress.get(timeout=10) is None:
            return


def test_bodyUnderOrAtTheLimit_reachesTheApp(server: Server) -> None:
    for length in (0, 10, LIMIT):
        response = httpx.post(f"{server.url}/echo", content=b"x" * length)
        assert response.status_code == 200 and response.json() == {"length": length}
    response = httpx.post(f"{server.url}/echo", content=chunks(100, 10))  # chunked, exactly the limit
    assert response.status_code == 200 and response.json() == {"length": LIMIT}
    assert server.seen == [0, 10, LIMIT, LIMIT]


def test_contentLengthOverTheLimit_gets413WithoutTheAppSeeingIt(server: Server) -> None:
    response = httpx.post(f"{server.url}/echo", content=b"x" * (LIMIT + 1))
    error = assert_openai_error(response, 413, "body_too_large")
    assert f"limit of {LIMIT} bytes" in error["message"]
    assert server.calls == ["/echo"] and server.seen == []


def test_contentLengthOverTheLimit_isAnsweredBeforeAnyBodyIsSent(server: Server) -> None:
    # Only the headers go out; a limit that waited for the body would time out here.
    answer = raw_request(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b'"code": "body_too_large"' in body
    assert server.seen == []


def test_hugeContentLength_is413OrMalformedHttp(server: Server) -> None:
    # 20 digits is the most h11 lets through; the limit compares digit counts before it parses.
    # httptools refuses a length beyond 2^64 itself, as malformed HTTP, in OpenAI's shape.
    answer = raw_request(
        server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 20 + b"\r\n\r\n"
    )
    if server.parser == "h11":
        assert answer.startswith(b"HTTP/1.1 413 ")
    else:
        assert_malformed_http(answer)
    assert server.calls == ([] if server.parser == "httptools" else ["/echo"])


def test_chunkedBodyOverTheLimit_gets413AndTheAppSawAtMostTheLimit(server: Server) -> None:
    response = httpx.post(f"{server.url}/echo", content=chunks(300, 20))  # 6000 bytes, no Content-Length
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_openai_error(response, 413, "body_too_large")
    wait_cut_off(server)
    assert len(server.seen) == 1 and server.seen[0] <= LIMIT


def test_chunkedBodyOverTheLimit_cutsTheAppOffAtTheChunkThatCrossesTheLimit(server: Server) -> None:
    response = httpx.post(f"{server.url}/echo", content=paced(server, 300, 20))
    assert_openai_error(response, 413, "body_too_large")
    assert server.seen == [900]  # three chunks read; the fourth would have made 1200


def test_chunkedBodyOverTheLimit_endsAResponseTheAppHadStarted(server: Server) -> None:
    response = httpx.post(f"{server.url}/raw/", content=paced(server, 300, 20))
    assert response.status_code == 200  # the app had sent its headers before the body ran over
    counts = response.text.split()
    assert counts and "end" not in counts  # ended by the limit; what the app sent after is dropped
    assert all(int(n) <= LIMIT for n in counts)
    assert server.seen == [900]


def test_invalidContentLength_isRefusedWith400BeforeTheApp(server: Server) -> None:
    # The HTTP parser refuses these itself, before any ASGI app runs; the answer is OpenAI's shape.
    for value in (b"abc", b"-1", b"+5", b"5, 6"):
        answer = raw_request(
            server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n"
        )
        assert_malformed_http(answer)
    assert server.calls == []


def assert_malformed_http(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"\r\nx-should-retry: false" in head and b"\r\nconnection: close" in head
    error = json.loads(body)["error"]
    assert (error["code"], error["type"]) == ("invalid_http", "invalid_request_error")


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["abc", "-1", "+5", "5, 6", "1_0"])
async def test_invalidContentLength_getsOpenAIs400FromTheLimitItself(value: str) -> None:
    # Servers that hand headers on as they came (and in-process transports) reach the limit's own check.
    state = Server(url="http://limit", port=0)
    transport = httpx.ASGITransport(app=make_app(state))
    async with httpx.AsyncClient(transport=transport, base_url=state.url) as client:
        response = await client.post("/echo", content=b"hello", headers={"content-length": value})
    assert response.request.headers["content-length"] == value
    error = assert_openai_error(response, 400, "invalid_content_length")
    assert "Content-Length" in error["message"]
    assert state.seen == []


def test_openaiClient_raisesAn413ItDoesNotRetry(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=3)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 2000}])
    error = caught.value
    assert (error.status_code, error.code, error.type, error.param) == (
        413,
        "body_too_large",
        "invalid_request_error",
        None,
    )
    assert f"limit of {LIMIT} bytes" in error.message
    assert server.calls == ["/v1/chat/completions"]  # once: x-should-retry: false stopped the retries


def test_maxBytes_isValidated() -> None:
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_bytes"):
            BodyLimit(FastAPI(), bad)  # type: ignore[arg-type]
