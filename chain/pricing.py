"""The pricing rule, written once for the node (what it bills) and the payer (what it accepts).

A model's on-chain price is per 1K completion tokens, in token base units. One request of N
completion tokens costs ceil(N x price / 1000): rounded up per request, so a node is never paid less
than the tokens it produced and a payer never more than one base unit above the exact value. A
channel's cumulative amount is the sum of its requests' costs, and its cumulative tokens the sum of
their tokens. Prompt tokens are not billed (the payer's RequestAuth caps a request's price at
max_tokens x max_price_per_1k, which only a completion-token price keeps exact).
"""

from __future__ import annotations

TOKENS_PER_PRICE = 1000  # prices are per 1K tokens (Settlement.sol's TOKENS_PER_PRICE)


def request_cost(tokens: int, price_per_1k: int) -> int:
    """What one request of `tokens` completion tokens costs at `price_per_1k` (rounded up)."""
    if tokens < 0 or price_per_1k < 0:
        raise ValueError(f"tokens and price must not be negative (got {tokens}, {price_per_1k})")
    return -(-tokens * price_per_1k // TOKENS_PER_PRICE)
