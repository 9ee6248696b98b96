"""The project's log dialect: one line per event, `event=name key=value ...` (storage, which may not
import chain, keeps a copy of this one function)."""

from __future__ import annotations

import json
import re
from typing import Any

_NEEDS_QUOTES = re.compile(r'[\s"=]')


def kv(event: str, **fields: Any) -> str:
    """A structured log line: `event=name key=value ...`, values with spaces JSON-quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        if not text or _NEEDS_QUOTES.search(text):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)
