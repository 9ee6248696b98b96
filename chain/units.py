"""MESH amounts and times as people read and write them: one formatter and one parser for every
script, log line and error message."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from chain.errors import ChainError

TOKEN_SYMBOL = "MESH"
TOKEN_DECIMALS = 18
MAX_DIGITS = 80  # digits before the point: past any uint256, so huge exponents are refused cheaply


class AmountError(ChainError, ValueError):
    """Text that is not a MESH amount; the message says what to write instead."""


def format_token(amount: int) -> str:
    """Base units -> '1,234.5 MESH', '0.25 MESH' (exact, trailing zeros trimmed)."""
    sign, amount = ("-", -amount) if amount < 0 else ("", amount)
    whole, frac = divmod(amount, 10**TOKEN_DECIMALS)
    frac_text = f"{frac:0{TOKEN_DECIMALS}d}".rstrip("0")
    return f"{sign}{whole:,}{'.' + frac_text if frac_text else ''} {TOKEN_SYMBOL}"


def format_duration(seconds: int) -> str:
    """Seconds -> '2d 3h', '5h', '40m 3s' or '9s' (the two largest units, rounded down)."""
    if seconds < 0:
        return f"-{format_duration(-seconds)}"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count or parts:
            parts.append(f"{count}{unit}")
    kept = parts[:2]
    if len(kept) == 2 and kept[1].startswith("0"):
        kept = kept[:1]
    return " ".join(kept) or "0s"


def format_timestamp(timestamp: int) -> str:
    """A unix time as 'YYYY-MM-DD HH:MM:SS UTC' (or the raw number when out of range)."""
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(timestamp)


def parse_amount(text: str, what: str = "amount") -> int:
    """'1000' or '0.5' MESH -> base units (18 decimals). Refuses negatives and sub-wei precision."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise AmountError(f"{what} {text!r} is not a number; write MESH like 1000 or 0.25") from exc
    if not value.is_finite() or value <= 0:
        raise AmountError(f"{what} must be a positive number of MESH, got {text}")
    # In integers: Decimal arithmetic rounds to 28 digits, which would turn 99999999999.999999999999999999
    # into 100000000000 before any check could see it.
    _, digits, exponent = value.as_tuple()
    if len(digits) + exponent > MAX_DIGITS:
        raise AmountError(f"{what} {text} is larger than any token amount")
    mantissa, shift = int("".join(map(str, digits))), int(exponent) + TOKEN_DECIMALS
    if shift < 0 and mantissa % 10**-shift:
        raise AmountError(f"{what} {text} has more than {TOKEN_DECIMALS} decimals")
    units = mantissa * 10**shift if shift >= 0 else mantissa // 10**-shift
    if units >= 2**256:
        raise AmountError(f"{what} {text} is larger than any token amount")
    return units
