"""Node endpoint URLs: what the node config, register_node.py and the router accept as a node's
public base URL (the router calls whatever a node registered on chain, so it checks too)."""

from __future__ import annotations

from urllib.parse import urlsplit


def check_endpoint(value: str) -> str:
    """An http(s) URL with a host (and a valid port), without a trailing slash; ValueError otherwise."""
    parts = urlsplit(value.strip())
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(
            f"{value!r} must be an http:// or https:// URL with a host, e.g. http://203.0.113.7:8090"
        )
    return value.strip().rstrip("/")
