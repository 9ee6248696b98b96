"""Start unbonding node stake (withdraw_stake.py pays it out after the unbonding period).

Stake below the minimum makes the node inactive: routers stop sending it traffic.
"""

from __future__ import annotations

import argparse
import sys

from chain.units import format_timestamp, format_token
from scripts.common import UsageError, connect, parse_amount, parser, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--amount", help="MESH to unbond")
    group.add_argument("--cancel", action="store_true", help="put all unbonding stake back")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    session = connect(args)
    nodes = session.nodes.functions
    if args.cancel:
        session.send(nodes.cancelUnbond())
        print("unbonding cancelled; the stake is active again")
        return 0
    amount = parse_amount(args.amount)
    stake = session.node().stake
    if amount > stake:
        raise UsageError(f"the node has {format_token(stake)} staked; cannot unbond {format_token(amount)}")
    session.send(nodes.requestUnbond(amount))
    node = session.node()
    print(
        f"unbonding {format_token(node.unbonding)}; withdraw with withdraw_stake.py after "
        f"{format_timestamp(node.unbonding_ready_at)}"
    )
    if not nodes.isActive(session.address).call():
        print("note: the remaining stake is below the minimum, so the node is now inactive")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
