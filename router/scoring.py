"""The host score: how much the router wants to send one request to one node serving one model.

A pure function of what the chain says about the node (stake, reputation counters, age) and the
model (price, specialties), and of what the router sees live (health, latency, load). Every factor
is positive and bounded, so no single one can make a bad host win; a dead host scores 0 and is
never chosen. The README writes the formula out; tests/test_router_scoring.py checks its properties.

    score = health x trust x maturity x stake x price x speed x load x specialty

    health    = share of recent probes and requests that succeeded (0..1)
    trust     = (1 + log10(1 + receipts settled)) / (1 + slashes)^2
    maturity  = min(1, 0.5 + days registered / 14)     (a new node starts at half)
    stake     = min(2, 1 + log2(stake / minimum stake) / 4)
    price     = (cheapest candidate price + 1) / (this model's price + 1), in token base units
    speed     = 1 / (1 + latency seconds)                  (time to first token, else probe time)
    load      = 1 / (1 + requests in flight to it + its queue)
    specialty = 1.2 when one of the model's specialties matches the task, else 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SPECIALTY_BOOST = 1.2
MATURITY_DAYS = 14.0
MAX_STAKE_FACTOR = 2.0


@dataclass(frozen=True)
class HostFacts:
    """What the score is computed from, for one (node, model) pair."""

    alive: bool
    health: float  # 0..1
    receipts_settled: int
    slash_count: int
    registered_days: float
    stake: int
    min_stake: int
    price_per_1k: int
    cheapest_price_per_1k: int
    latency_s: float | None  # None: not measured yet (counts as one second)
    load: int
    specialty: bool


def trust(receipts_settled: int, slash_count: int) -> float:
    """Settled work raises trust slowly (logarithmically); every slash divides it hard."""
    return (1.0 + math.log10(1 + max(0, receipts_settled))) / (1 + max(0, slash_count)) ** 2


def maturity(registered_days: float) -> float:
    return min(1.0, 0.5 + max(0.0, registered_days) / MATURITY_DAYS)


def stake_factor(stake: int, min_stake: int) -> float:
    if min_stake <= 0 or stake <= min_stake:
        return 1.0
    return min(MAX_STAKE_FACTOR, 1.0 + math.log2(stake / min_stake) / 4)


def price_factor(price: int, cheapest: int) -> float:
    # +1 base unit on both sides: free models compare as equals, prices in base units barely move.
    return (max(0, cheapest) + 1) / (max(0, price) + 1)


def speed(latency_s: float | None) -> float:
    return 1.0 / (1.0 + (1.0 if latency_s is None else max(0.0, latency_s)))


def load_factor(load: int) -> float:
    return 1.0 / (1 + max(0, load))


def score(f: HostFacts) -> float:
    """The host score (0 for a host that is not alive); higher is better."""
    if not f.alive or f.health <= 0:
        return 0.0
    return (
        min(1.0, f.health)
        * trust(f.receipts_settled, f.slash_count)
        * maturity(f.registered_days)
        * stake_factor(f.stake, f.min_stake)
        * price_factor(f.price_per_1k, f.cheapest_price_per_1k)
        * speed(f.latency_s)
        * load_factor(f.load)
        * (SPECIALTY_BOOST if f.specialty else 1.0)
    )
