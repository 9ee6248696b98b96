"""Server-Sent Events framing of OpenAI streams: one `data: {json}` event per chunk, a final
`data: [DONE]`, and for a stream that fails after it started, one event holding an `error` object
(the openai client raises APIError on it) so a broken stream is never a silent truncation."""

from __future__ import annotations

import json
from typing import Any

from protocol.errors import ApiError

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
# Proxies must not buffer a token stream.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: dict[str, Any]) -> bytes:
    """One SSE event carrying `data` as compact JSON (JSON never contains a raw newline)."""
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def error_event(error: ApiError) -> bytes:
    """The event that ends a stream that failed after its first chunk."""
    return event(error.body())
