"""What travels between clients, routers and nodes: OpenAI-compatible requests, responses, stream
chunks and errors, their Server-Sent Events framing, the payment headers, and the two things both
daemons serve them with: the HTTP server (protocol.server) and the service lifecycle
(protocol.service). Imports `chain` only."""

from protocol.errors import ApiError
from protocol.openai import ChatCompletionRequest, CompletionRequest, TokenLogprob, Usage, parse_request

__all__ = [
    "ApiError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "TokenLogprob",
    "Usage",
    "parse_request",
]
