"""Withdraw unbonded node stake once the unbonding period has passed."""

from __future__ import annotations

import sys

from chain.units import format_duration, format_timestamp, format_token
from scripts.common import UsageError, connect, parser, run


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    session = connect(args)
    nodes = session.nodes.functions
    node = session.node()
    unbonding, ready = node.unbonding, node.unbonding_ready_at
    if unbonding == 0:
        raise UsageError("nothing is unbonding: start with unbond.py --amount AMOUNT")
    now = session.w3.eth.get_block("latest")["timestamp"]
    if now < ready:
        raise UsageError(
            f"the unbonding period ends at {format_timestamp(ready)}; {format_duration(ready - now)} to go"
        )
    session.send(nodes.withdrawStake())
    print(f"withdrew {format_token(unbonding)} of stake")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
