"""What travels between clients, routers and nodes: OpenAI-compatible requests, responses, stream
chunks and errors, and their Server-Sent Events framing. Imports `chain` only (payment headers)."""

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
