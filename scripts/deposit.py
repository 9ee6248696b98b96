"""Deposit MESH into your Settlement escrow, from which nodes are paid per 1K tokens."""

from __future__ import annotations

import argparse
import sys

from chain.units import format_token
from scripts.common import UsageError, connect, parse_address, parse_amount, parser, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--amount", required=True, help="MESH to deposit")
    p.add_argument("--for", dest="beneficiary", help="fund another payer's escrow instead of your own")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    amount = parse_amount(args.amount)
    session = connect(args)
    payer = parse_address(session.w3, args.beneficiary, "--for") if args.beneficiary else session.address
    if int(payer, 16) == 0:
        raise UsageError("--for is the zero address; pass the payer whose escrow to fund")
    balance = session.token.functions.balanceOf(session.address).call()
    if balance < amount:
        raise UsageError(
            f"insufficient balance: depositing {format_token(amount)} needs it, "
            f"the account holds {format_token(balance)}"
        )
    session.send(session.token.functions.approve(session.settlement.address, amount))
    if payer == session.address:
        session.send(session.settlement.functions.deposit(amount))
    else:
        session.send(session.settlement.functions.depositFor(payer, amount))
    escrow = session.escrow(payer)
    print(f"deposited {format_token(amount)} for {payer}; escrow now {format_token(escrow.balance)}")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
