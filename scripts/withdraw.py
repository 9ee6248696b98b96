"""Take MESH out of your escrow: request an unlock, wait the delay, then withdraw.

withdraw.py --request 50   start (or restart) an unlock of 50 MESH
withdraw.py --cancel       cancel the unlock
withdraw.py                withdraw once the delay has passed (nodes settle what you owe first)
"""

from __future__ import annotations

import argparse
import sys

from web3.logs import DISCARD

from chain.units import format_duration, format_timestamp, format_token
from scripts.common import UsageError, connect, parse_amount, parser, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    group = p.add_mutually_exclusive_group()
    group.add_argument("--request", metavar="AMOUNT", help="start an unlock of AMOUNT MESH")
    group.add_argument("--cancel", action="store_true", help="cancel the unlock in progress")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    session = connect(args)
    settlement = session.settlement.functions
    if args.request is not None:
        amount = parse_amount(args.request, "--request")
        balance = session.escrow().balance
        if amount > balance:
            raise UsageError(f"escrow holds {format_token(balance)}; cannot unlock {format_token(amount)}")
        session.send(settlement.requestUnlock(amount))
        ready = session.escrow().unlock_ready_at
        lapses = ready + settlement.UNLOCK_WINDOW().call()
        print(
            f"unlock of {format_token(amount)} requested; withdraw between {format_timestamp(ready)} and "
            f"{format_timestamp(lapses)}; after that it lapses and must be requested again"
        )
        return 0
    if args.cancel:
        session.send(settlement.cancelUnlock())
        print("unlock cancelled")
        return 0
    balance, unlocking, ready = session.escrow()
    if ready == 0:
        raise UsageError("no unlock in progress: start one with --request AMOUNT")
    now = session.w3.eth.get_block("latest")["timestamp"]
    if now < ready:
        raise UsageError(
            f"the unlock delay ends at {format_timestamp(ready)}; {format_duration(ready - now)} to go"
        )
    if now > ready + settlement.UNLOCK_WINDOW().call():
        raise UsageError(
            "the unlock lapsed (not withdrawn within its window): request it again with --request"
        )
    receipt = session.send(settlement.withdraw())
    event = session.settlement.events.EscrowWithdrawn()
    paid = event.process_receipt(receipt, errors=DISCARD)[0]["args"]["amount"]  # skip the token's Transfer
    print(
        f"withdrew {format_token(paid)} (asked {format_token(unlocking)}); "
        f"escrow now {format_token(balance - paid)}"
    )
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
