"""API keys out of logs: RPC URLs of hosted providers carry keys, and transport errors quote URLs."""

from __future__ import annotations

import re

# RPC URLs of hosted providers carry API keys in their path, query or user part; transport errors
# quote the URL (requests: "... with url: /v3/KEY (Caused by ...)").
_URL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?:[^@/\s]*@)?(?P<host>[^/\s?#'\"]+)(?P<rest>[^\s'\"]*)", re.IGNORECASE
)
_REQUESTS_URL = re.compile(r"(with url: )\S+")


def redact(text: str) -> str:
    """`text` with every URL cut to scheme://host:port, so API keys in RPC URLs stay out of logs."""
    text = _URL.sub(lambda m: m["scheme"] + m["host"] + ("/…" if m["rest"] not in ("", "/") else ""), text)
    return _REQUESTS_URL.sub(r"\1…", text)
