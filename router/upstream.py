"""Sending a request to nodes: best host first, the next one on failure, paying for what arrived.

An attempt fails over to the next candidate when the node cannot be reached, answers 5xx (503
busy included), 404 (its served set moved on) or 429 (its limit for this payer), or sends no first
event within `first_token_timeout`; at most `attempts` hosts are tried. Any other answer (a 400
for a bad request, a payment refusal) is the answer: another node would say the same.

Once a stream has sent its first event the router is committed to that node: if it breaks off
later, the client gets an OpenAI-style error event (never a silent truncation) and the payer is
billed only for the text chunks that arrived (router.wallet). Upstream streams always ask for the
usage chunk (it is what the receipt is checked against); the client only sees it if it asked.
The node's receipt never reaches the client: the `llm_mesh` field the client sees says which
node and model served and what the request cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from chain.logs import kv as _kv
from protocol import sse
from protocol.errors import ApiError
from protocol.payer import ReceiptRefused
from protocol.payment import RESPONSE_FIELD, encode_signed_receipt
from router.health import HealthBook
from router.select import Candidate
from router.wallet import Paid, Unsent, Wallet

log = logging.getLogger(__name__)

# What a node that cannot be reached, or stops answering, raises (timeouts are not all ClientErrors).
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)
# The longest SSE line read from a node (a chunk with top_logprobs can be long); aiohttp's default
# of 64 KiB would cut such a stream.
READ_BUFFER = 1 << 20

# Refusals another node may not give: this node's own limits, queue, credit or stale view of the chain.
NODE_SPECIFIC = frozenset(
    {
        "insufficient_escrow",  # counts what the payer owes this node
        "credit_limit",
        "settlement_pending",
        "rate_limited",
        "wrong_model",
        "not_found",
        "model_not_found",
        "max_tokens_too_large",
        "context_length_exceeded",
    }
)


class _TryNext(Exception):  # noqa: N818 - control flow inside failover
    """Ask the next host; `mark`: this node failed (back it off), else it only refused this request."""

    def __init__(self, reason: str, mark: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.mark = reason, mark


@dataclass
class Served:
    """Which host answered, and its request's state while the answer is relayed."""

    candidate: Candidate
    nonce: int
    started: float
    chunks: int = 0  # text chunks that arrived
    text_bytes: int = 0  # the UTF-8 bytes of their text
    paid: Paid | None = None
    attempts: list[str] = field(default_factory=list)  # why earlier hosts were passed over

    def arrived(self, event: dict[str, Any]) -> None:
        """Count an event's text (what a cut stream may be billed for)."""
        for choice in event.get("choices") or ():
            text = _text(choice) if isinstance(choice, dict) else ""
            if text:
                self.chunks += 1
                self.text_bytes += len(text.encode())

    def summary(self) -> dict[str, Any]:
        """The `llm_mesh` field of the client's answer."""
        c = self.candidate
        out: dict[str, Any] = {"node": c.operator, "model": c.model, "model_id": c.model_id}
        if self.paid is not None:
            out |= {"completion_tokens": self.paid.tokens, "cost": str(self.paid.amount)}
        if self.attempts:
            out["failed_over"] = self.attempts
        return out


@dataclass
class OpenStream:
    """A stream whose first event arrived: relay `events()` to the client."""

    served: Served
    response: aiohttp.ClientResponse
    first: str
    want_usage: bool


class Upstream:
    """The router's HTTP side towards nodes."""

    def __init__(
        self,
        book: HealthBook,
        wallet: Wallet | None,
        *,
        attempts: int = 3,
        connect_timeout: float = 3.0,
        first_token_timeout: float = 60.0,
        token_timeout: float = 60.0,
        request_timeout: float = 600.0,
        drain_timeout: float = 2.0,
    ) -> None:
        """`first_token_timeout`: from sending a streamed request to its first event (queueing and
        prefill included); `token_timeout`: between later events; `request_timeout`: a whole
        non-streamed answer; `drain_timeout`: how long a stream the client left is read on, to
        count what the node sent before it learnt of it."""
        self.book, self.wallet, self.attempts = book, wallet, attempts
        self.drain_timeout = drain_timeout
        self.first_token_timeout = first_token_timeout
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=connect_timeout)
        self._stream_timeout = aiohttp.ClientTimeout(sock_read=token_timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def _http(self) -> aiohttp.ClientSession:
        """Made on first use: a session belongs to the event loop it was made in."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=self._stream_timeout,
                read_bufsize=READ_BUFFER,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---------------------------------------------------------------- one answer

    async def complete(
        self, path: str, body: dict[str, Any], candidates: list[Candidate]
    ) -> tuple[Served, dict]:
        """A non-streamed answer from the first host that gives one; ApiError otherwise. Its
        receipt is countersigned; `save_ledgers()` writes it down."""
        tried: list[str] = []
        for candidate in candidates[: self.attempts]:
            served, request, headers = self._prepare(candidate, body, tried)
            try:
                answer = await self._post(candidate, path, request, headers)
                billing = answer.pop(RESPONSE_FIELD, None)
                tokens = _tokens(answer.get("usage"))
            except _TryNext as exc:
                self._failed(served, exc.reason, tried, exc.mark)
                continue
            except (ValueError, TypeError, AttributeError):
                self._failed(served, f"{candidate.operator}: a malformed answer", tried, True)
                continue
            self._pay(served, billing, tokens)
            self.book.succeeded(candidate.operator, ttft_s=None)
            answer[RESPONSE_FIELD] = served.summary()
            return served, answer
        raise _exhausted(tried)

    # ---------------------------------------------------------------- a stream

    async def open_stream(
        self, path: str, body: dict[str, Any], candidates: list[Candidate], want_usage: bool
    ) -> OpenStream:
        """A stream from the first host whose first event arrives in time; ApiError otherwise."""
        tried: list[str] = []
        for candidate in candidates[: self.attempts]:
            served, request, headers = self._prepare(candidate, body, tried)
            request["stream_options"] = {"include_usage": True}
            try:
                async with asyncio.timeout(self.first_token_timeout):  # not wait_for: no task per request
                    return await self._first_event(served, path, request, headers, want_usage)
            except TimeoutError:
                self._inflight(candidate, -1)
                reason = f"{candidate.operator}: no first event within {self.first_token_timeout:g} s"
                self._failed(served, reason, tried, True)
            except _TryNext as exc:
                self._inflight(candidate, -1)
                self._failed(served, exc.reason, tried, exc.mark)
            except BaseException:
                self._inflight(candidate, -1)
                raise
        raise _exhausted(tried)

    async def _first_event(
        self, served: Served, path: str, request: dict, headers: dict[str, str], want_usage: bool
    ) -> OpenStream:
        """Send, and read up to the first event; _TryNext when another host should be asked."""
        candidate = served.candidate
        url = f"{candidate.endpoint.rstrip('/')}/v1/{path}"
        try:
            response = await self._http.post(url, json=request, headers=headers)
        except UPSTREAM_ERRORS as exc:
            raise _TryNext(f"{candidate.operator}: {type(exc).__name__}: {exc}") from None
        try:
            if response.status != 200:
                raise _refused(candidate, response, _json(await response.read()), self._funded())
            first = await _next_event(response.content)
            if first is None:
                raise ValueError("the stream ended before its first event")
            if '"error"' in first and isinstance(event := json.loads(first), dict) and "error" in event:
                # Nothing reached the client yet: a node failing at once (a lost worker) is passed over.
                raise _TryNext(f"{candidate.operator}: {str(event['error'])[:200]}")
        except (*UPSTREAM_ERRORS, ValueError) as exc:
            response.close()
            raise _TryNext(f"{candidate.operator}: no first event ({type(exc).__name__})") from None
        except BaseException:
            response.close()
            raise
        self.book.succeeded(candidate.operator, ttft_s=time.monotonic() - served.started)
        return OpenStream(served, response, first, want_usage)

    async def events(self, stream: OpenStream) -> AsyncIterator[bytes]:
        """The client's SSE events. The node's final chunk (its receipt) and usage chunk are held
        until [DONE], so the final chunk can say what the request cost once the receipt checked."""
        served = stream.served
        held: list[dict[str, Any]] = []  # the final chunk and the usage chunk
        billing: Any = None
        tokens: int | None = None
        ended = ""  # "done", "error" (the node sent an error event) or "" (it broke off)
        data: str | None = stream.first
        try:
            while data is not None:
                if data == "[DONE]":
                    ended = "done"
                    break
                event = json.loads(data)
                if not isinstance(event, dict):
                    raise ValueError("an event that is not a JSON object")
                if "error" in event:  # the node ended the stream with an error: pass it on
                    ended = "error"
                    self.book.failed(served.candidate.operator, f"stream error: {event['error']}")
                    yield sse.event(event)
                    break
                if event.get("usage") and not event.get("choices"):
                    tokens = _tokens(event["usage"])
                    if stream.want_usage:
                        held.append(event)
                elif RESPONSE_FIELD in event:
                    billing = event.pop(RESPONSE_FIELD)
                    held.append(event)
                else:
                    served.arrived(event)
                    yield sse.event(event)
                data = await _next_event(stream.response.content)
            if not ended:
                self.book.failed(served.candidate.operator, "stream ended without [DONE]")
        except (*UPSTREAM_ERRORS, ValueError, TypeError, AttributeError) as exc:
            self.book.failed(served.candidate.operator, f"stream broke off: {type(exc).__name__}: {exc}")
        except BaseException:  # the client went away (the generator was closed or cancelled)
            await self._drain(stream)
            self._broke_off(served)
            raise
        finally:
            # release: the connection goes back to the pool if the body was read to its end.
            if ended == "done":
                stream.response.release()
            else:
                stream.response.close()
            self._inflight(served.candidate, -1)
        paid = ended == "done" and tokens is not None
        if paid:
            self._pay(served, billing, tokens or 0)
            self.save_ledgers()
        for event in held:
            if "usage" not in event or event.get("choices"):
                event[RESPONSE_FIELD] = served.summary()
            yield sse.event(event)
        if paid:
            yield sse.DONE
            return
        self._broke_off(served)
        if ended != "error":
            yield sse.error_event(
                ApiError(
                    502,
                    f"the node serving this request ({served.candidate.operator}) broke off after "
                    f"{served.chunks} tokens; only those are paid for; retry the request",
                    code="upstream_broke_off",
                )
            )

    async def _drain(self, stream: OpenStream) -> None:
        """The client left mid-stream: tell the node (closing our sending side reads as a
        disconnect there) and count what it had sent by then, which it bills, until it closes."""
        connection = stream.response.connection
        transport = connection.transport if connection is not None else None
        if transport is None:
            return
        try:
            transport.write_eof()
            async with asyncio.timeout(self.drain_timeout):
                while (data := await _next_event(stream.response.content)) not in (None, "[DONE]"):
                    event = json.loads(data)
                    if isinstance(event, dict):
                        stream.served.arrived(event)
        except (*UPSTREAM_ERRORS, ValueError, TypeError, AttributeError, OSError, RuntimeError):
            pass  # what was counted stands; the payer allows in-flight slack beyond it

    # ---------------------------------------------------------------- receipts no request carried

    async def deliver_receipts(self, idle_s: float, timeout: float = 5.0) -> int:
        """POST /v1/receipts for every countersigned receipt no request carried to its node for
        `idle_s` seconds (so the node can settle it), to all nodes at once; how many were stored."""
        if self.wallet is None:
            return 0
        results = await asyncio.gather(*(self._deliver(u, timeout) for u in self.wallet.unsent(idle_s)))
        return sum(results)

    async def _deliver(self, unsent: Unsent, timeout: float) -> bool:
        assert self.wallet is not None
        url = f"{unsent.endpoint.rstrip('/')}/v1/receipts"
        body = encode_signed_receipt(unsent.receipt)
        try:
            limit = aiohttp.ClientTimeout(total=timeout)
            async with self._http.post(url, json=body, timeout=limit) as response:
                status = response.status
                await response.read()
        except UPSTREAM_ERRORS as exc:
            log.info(_kv("upstream.receipt_not_delivered", node=unsent.node, reason=type(exc).__name__))
            return False
        if status != 200:
            log.warning(_kv("upstream.receipt_refused_by_node", node=unsent.node, status=status))
            return False
        self.wallet.delivered(unsent)
        return True

    # ---------------------------------------------------------------- shared steps

    def _prepare(
        self, candidate: Candidate, body: dict[str, Any], tried: list[str]
    ) -> tuple[Served, dict, dict]:
        request = {**body, "model": candidate.model}
        headers: dict[str, str] = {}
        nonce = 0
        if self.wallet is not None:
            max_tokens = int(request["max_tokens"])
            nonce, headers = self.wallet.authorize(
                candidate.operator, candidate.model_id, max_tokens, candidate.price_per_1k
            )
        self._inflight(candidate, +1)
        return Served(candidate, nonce, time.monotonic(), attempts=list(tried)), request, headers

    async def _post(
        self, candidate: Candidate, path: str, request: dict, headers: dict[str, str]
    ) -> dict[str, Any]:
        url = f"{candidate.endpoint.rstrip('/')}/v1/{path}"
        try:
            async with self._http.post(
                url, json=request, headers=headers, timeout=self._request_timeout
            ) as response:
                raw = await response.read()
        except UPSTREAM_ERRORS as exc:
            raise _TryNext(f"{candidate.operator}: {type(exc).__name__}: {exc}") from None
        finally:
            self._inflight(candidate, -1)
        answer = _json(raw)
        if response.status != 200:
            raise _refused(candidate, response, answer, self._funded())
        if not isinstance(answer, dict):
            raise ValueError("the answer is not a JSON object")
        return answer

    def _failed(self, served: Served, reason: str, tried: list[str], mark: bool) -> None:
        """`mark`: the node failed (backed off), not only refused this one request."""
        tried.append(reason)
        if mark:
            self.book.failed(served.candidate.operator, reason)
        self._broke_off(served)
        log.info(_kv("upstream.failover", node=served.candidate.operator, reason=reason[:200]))

    def _pay(self, served: Served, billing: Any, tokens: int) -> None:
        if self.wallet is None:
            return
        try:
            c = served.candidate
            served.paid = self.wallet.answered(c.operator, c.endpoint, served.nonce, billing, tokens)
        except Exception as exc:  # ReceiptRefused, or a receipt too malformed to read
            reason = str(exc) if isinstance(exc, ReceiptRefused) else f"{type(exc).__name__}: {exc}"
            # The client has its answer; the node gets no signature and no more requests for a while.
            self.book.failed(served.candidate.operator, f"receipt refused: {reason}")
            log.warning(_kv("upstream.receipt_refused", node=served.candidate.operator, reason=reason[:300]))

    def save_ledgers(self) -> None:
        """Write what answered requests changed in the payer's ledgers (router.wallet)."""
        if self.wallet is not None:
            self.wallet.save()

    def _broke_off(self, served: Served) -> None:
        if self.wallet is not None:
            self.wallet.broke_off(served.candidate.operator, served.nonce, served.chunks, served.text_bytes)

    def _funded(self) -> bool:
        left = self.wallet.spendable() if self.wallet is not None else None
        return left is not None and left > 0

    def _inflight(self, candidate: Candidate, delta: int) -> None:
        health = self.book.get(candidate.operator)
        if health is not None:
            health.inflight = max(0, health.inflight + delta)


def _refused(
    candidate: Candidate, response: aiohttp.ClientResponse, answer: Any, funded: bool = False
) -> Exception:
    """What a non-200 answer means: the next host (_TryNext) or the client's answer (ApiError).
    `funded`: the router's own chain view shows spendable escrow, so a node saying there is none
    is behind the chain (a deposit it has not seen yet) and another node may know better."""
    status = response.status
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    reason = f"{candidate.operator}: HTTP {status}" + (f" {code}" if code else "")
    if status >= 500:
        return _TryNext(reason)
    if status in (404, 429) or code in NODE_SPECIFIC or (funded and code == "no_escrow"):
        # credit_limit: the node holds receipts this payer refused to sign; leave it alone a while.
        return _TryNext(reason, mark=code == "credit_limit")
    return _passed_through(response, answer)


def _tokens(usage: Any) -> int:
    if not isinstance(usage, dict):
        raise ValueError("usage is not an object")
    tokens = usage.get("completion_tokens") or 0
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"completion_tokens {tokens!r} is not a count")
    return tokens


def _text(choice: dict[str, Any]) -> str:
    """A completion or chat choice's text ("" for none, or for what is not text)."""
    delta = choice.get("delta")
    text = choice.get("text") or (delta.get("content") if isinstance(delta, dict) else None)
    return text if isinstance(text, str) else ""


async def _next_event(content: aiohttp.StreamReader) -> str | None:
    """The next `data:` payload; None at the end of the body. A line longer than the read buffer
    raises ValueError, like any other malformed stream."""
    while line := await content.readline():
        if line.startswith(b"data:"):
            return line[5:].strip().decode()
    return None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _passed_through(response: aiohttp.ClientResponse, answer: Any) -> ApiError:
    """The node's own refusal, as the client's answer."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return ApiError(502, f"the node answered HTTP {response.status} without an error body")
    retry = response.headers.get("x-should-retry")
    return ApiError(
        response.status,
        str(error.get("message") or ""),
        param=error.get("param"),
        code=error.get("code"),
        error_type=error.get("type"),
        retry=None if retry is None else retry == "true",
        retry_after=_float(response.headers.get("retry-after")),
    )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _exhausted(tried: list[str]) -> ApiError:
    if not tried:
        return ApiError(503, "no host to try; retry later", code="no_host")
    return ApiError(
        503,
        f"{len(tried)} host(s) failed: {'; '.join(tried)}; retry later",
        code="no_host_answered",
        retry_after=1,
    )
