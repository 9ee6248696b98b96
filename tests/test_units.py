"""One MESH formatter and parser (chain.units), and the typed struct views (chain.views) on Anvil."""

from __future__ import annotations

import pytest

from chain.errors import ChainError
from chain.units import AmountError, format_duration, format_timestamp, format_token, parse_amount
from chain.views import ModelInfo, NodeInfo, escrow_of, node_info

ETHER = 10**18


@pytest.mark.parametrize(
    ("units", "text"),
    [
        (0, "0 MESH"),
        (1, "0.000000000000000001 MESH"),
        (ETHER // 4, "0.25 MESH"),
        (1_234_500 * ETHER // 1000, "1,234.5 MESH"),
        (10_000_000 * ETHER, "10,000,000 MESH"),
        (-3 * ETHER, "-3 MESH"),
    ],
)
def test_formatToken_isExactWithThousandsSeparators(units: int, text: str) -> None:
    assert format_token(units) == text


@pytest.mark.parametrize(
    ("text", "units"),
    [("1000", 1000 * ETHER), ("0.5", ETHER // 2), ("99999999999.999999999999999999", 10**29 - 1)],
)
def test_parseAmount_isExact(text: str, units: int) -> None:
    assert parse_amount(text) == units
    assert parse_amount(format_token(units).removesuffix(" MESH").replace(",", "")) == units


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("abc", "not a number"),
        ("-1", "positive"),
        ("1e80", "larger than any"),
        ("0." + "0" * 18 + "1", "decimals"),
    ],
)
def test_parseAmount_refusesWithTheFix(text: str, problem: str) -> None:
    with pytest.raises(AmountError, match=problem):
        parse_amount(text, "--amount")
    assert issubclass(AmountError, ChainError)


def test_formatTimes_areUtcAndShort() -> None:
    assert format_timestamp(0) == "1970-01-01 00:00:00 UTC"
    assert format_duration(2 * 86400 + 3 * 3600 + 5) == "2d 3h"


def test_views_nameEveryFieldFromTheAbi() -> None:
    assert ModelInfo._fields[:2] == ("name", "cid") and "price_per_1k" in ModelInfo._fields
    assert {"stake", "unbonding", "registered", "deregistered_at"} <= set(NodeInfo._fields)


def test_views_readStructsByName(marketplace) -> None:
    admin = marketplace.admin.address
    node = node_info(marketplace.contract("NodeRegistry"), admin)
    assert (node.stake, node.registered, node.hosted_models) == (0, False, [])
    assert escrow_of(marketplace.contract("Settlement"), admin).balance == 0
