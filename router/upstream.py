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

import httpx

from chain.logs import kv as _kv
from protocol import sse
from protocol.errors import ApiError
from protocol.payer import ReceiptRefused
from protocol.payment import RESPONSE_FIELD, encode_signed_receipt
from router.health import HealthBook
from router.select import Candidate
from router.wallet import Paid, Wallet

log = logging.getLogger(__name__)

FAILOVER_STATUSES = frozenset({404, 429})


class _TryNext(Exception):  # noqa: N818 - control flow inside failover
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Served:
    """Which host answered, and its request's state while the answer is relayed."""

    candidate: Candidate
    nonce: int
    started: float
    chunks: int = 0  # text chunks that arrived
    paid: Paid | None = None
    attempts: list[str] = field(default_factory=list)  # why earlier hosts were passed over

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
    response: httpx.Response
    lines: AsyncIterator[str]
    first: str
    want_usage: bool


class Upstream:
    """The router's HTTP side towards nodes."""

    def __init__(
        self,
        book: HealthBook,
        wallet: Wallet | None,
        *,
        client: httpx.AsyncClient | None = None,
        attempts: int = 3,
        connect_timeout: float = 3.0,
        first_token_timeout: float = 60.0,
        token_timeout: float = 60.0,
    ) -> None:
        self.book, self.wallet, self.attempts = book, wallet, attempts
        self.first_token_timeout = first_token_timeout
        timeout = httpx.Timeout(token_timeout, connect=connect_timeout)
        self._client = client or httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=256))

    async def close(self) -> None:
        await self._client.aclose()

    # ---------------------------------------------------------------- one answer

    async def complete(
        self, path: str, body: dict[str, Any], candidates: list[Candidate]
    ) -> tuple[Served, dict]:
        """A non-streamed answer from the first host that gives one; ApiError otherwise."""
        tried: list[str] = []
        for candidate in candidates[: self.attempts]:
            served, request, headers = self._prepare(candidate, body, tried)
            try:
                response = await self._post(candidate, path, request, headers)
                answer = response.json()
            except _TryNext as exc:
                self._failed(served, exc.reason, tried)
                continue
            except ValueError:
                self._failed(served, "the node's answer is not JSON", tried)
                continue
            if response.status_code != 200:
                raise _passed_through(response, answer)
            billing = answer.pop(RESPONSE_FIELD, None)
            tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
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
                return await self._first_event(served, path, request, headers, want_usage)
            except _TryNext as exc:
                self._inflight(candidate, -1)
                self._failed(served, exc.reason, tried)
            except BaseException:
                self._inflight(candidate, -1)
                raise
        raise _exhausted(tried)

    async def _first_event(
        self, served: Served, path: str, request: dict, headers: dict[str, str], want_usage: bool
    ) -> OpenStream:
        candidate = served.candidate
        url = f"{candidate.endpoint.rstrip('/')}/v1/{path}"
        try:
            response = await self._client.send(
                self._client.build_request("POST", url, json=request, headers=headers), stream=True
            )
        except httpx.HTTPError as exc:
            raise _TryNext(f"{candidate.operator}: {type(exc).__name__}: {exc}") from None
        try:
            if response.status_code != 200:
                raw = await response.aread()
                if _fails_over(response.status_code):
                    raise _TryNext(f"{candidate.operator}: HTTP {response.status_code}")
                raise _passed_through(response, _json(raw))
            lines = response.aiter_lines()
            first = await asyncio.wait_for(_next_event(lines), self.first_token_timeout)
            if first is None:
                raise httpx.RemoteProtocolError("the stream ended before its first event")
        except (TimeoutError, httpx.HTTPError) as exc:
            await response.aclose()
            raise _TryNext(f"{candidate.operator}: no first event ({type(exc).__name__})") from None
        except BaseException:
            await response.aclose()
            raise
        self.book.succeeded(candidate.operator, ttft_s=time.monotonic() - served.started)
        return OpenStream(served, response, lines, first, want_usage)

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
                if "error" in event:  # the node ended the stream with an error: pass it on
                    ended = "error"
                    self.book.failed(served.candidate.operator, f"stream error: {event['error']}")
                    yield sse.event(event)
                    break
                if event.get("usage") and not event.get("choices"):
                    tokens = int(event["usage"].get("completion_tokens") or 0)
                    if stream.want_usage:
                        held.append(event)
                elif RESPONSE_FIELD in event:
                    billing = event.pop(RESPONSE_FIELD)
                    held.append(event)
                else:
                    served.chunks += sum(1 for c in event.get("choices") or () if _has_text(c))
                    yield sse.event(event)
                data = await _next_event(stream.lines)
            if not ended:
                self.book.failed(served.candidate.operator, "stream ended without [DONE]")
        except (httpx.HTTPError, ValueError) as exc:
            self.book.failed(served.candidate.operator, f"stream broke off: {type(exc).__name__}: {exc}")
        except BaseException:  # the client went away (the generator was closed or cancelled)
            self._broke_off(served)
            raise
        finally:
            await stream.response.aclose()
            self._inflight(served.candidate, -1)
        paid = ended == "done" and tokens is not None
        if paid:
            self._pay(served, billing, tokens or 0)
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

    # ---------------------------------------------------------------- receipts no request carried

    async def deliver_receipts(self, idle_s: float) -> int:
        """POST /v1/receipts for every countersigned receipt no request carried to its node for
        `idle_s` seconds (so the node can settle it); how many were stored."""
        if self.wallet is None:
            return 0
        stored = 0
        for unsent in self.wallet.unsent(idle_s):
            url = f"{unsent.endpoint.rstrip('/')}/v1/receipts"
            try:
                response = await self._client.post(url, json=encode_signed_receipt(unsent.receipt))
            except httpx.HTTPError as exc:
                log.info(_kv("upstream.receipt_not_delivered", node=unsent.node, reason=type(exc).__name__))
                continue
            if response.status_code == 200:
                self.wallet.delivered(unsent)
                stored += 1
            else:
                log.warning(
                    _kv("upstream.receipt_refused_by_node", node=unsent.node, status=response.status_code)
                )
        return stored

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
    ) -> httpx.Response:
        url = f"{candidate.endpoint.rstrip('/')}/v1/{path}"
        try:
            response = await self._client.post(url, json=request, headers=headers)
        except httpx.HTTPError as exc:
            raise _TryNext(f"{candidate.operator}: {type(exc).__name__}: {exc}") from None
        finally:
            self._inflight(candidate, -1)
        if _fails_over(response.status_code):
            raise _TryNext(f"{candidate.operator}: HTTP {response.status_code}")
        return response

    def _failed(self, served: Served, reason: str, tried: list[str]) -> None:
        tried.append(reason)
        if not reason.endswith("HTTP 429") and not reason.endswith("HTTP 404"):
            self.book.failed(served.candidate.operator, reason)
        self._broke_off(served)
        log.info(_kv("upstream.failover", node=served.candidate.operator, reason=reason[:200]))

    def _pay(self, served: Served, billing: Any, tokens: int) -> None:
        if self.wallet is None:
            return
        try:
            c = served.candidate
            served.paid = self.wallet.answered(c.operator, c.endpoint, served.nonce, billing, tokens)
        except ReceiptRefused as exc:
            # The client has its answer; the node gets no signature and no more requests for a while.
            self.book.failed(served.candidate.operator, f"receipt refused: {exc}")
            log.warning(
                _kv("upstream.receipt_refused", node=served.candidate.operator, reason=str(exc)[:300])
            )

    def _broke_off(self, served: Served) -> None:
        if self.wallet is not None:
            self.wallet.broke_off(served.candidate.operator, served.nonce, served.chunks)

    def _inflight(self, candidate: Candidate, delta: int) -> None:
        health = self.book.get(candidate.operator)
        if health is not None:
            health.inflight = max(0, health.inflight + delta)


def _fails_over(status: int) -> bool:
    return status >= 500 or status in FAILOVER_STATUSES


def _has_text(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    return bool(choice.get("text") or (isinstance(delta, dict) and delta.get("content")))


async def _next_event(lines: AsyncIterator[str]) -> str | None:
    """The next `data:` payload; None at the end of the body."""
    async for line in lines:
        if line.startswith("data:"):
            return line[5:].strip()
    return None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _passed_through(response: httpx.Response, answer: Any) -> ApiError:
    """The node's own refusal, as the client's answer."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return ApiError(502, f"the node answered HTTP {response.status_code} without an error body")
    retry = response.headers.get("x-should-retry")
    return ApiError(
        response.status_code,
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
