"""Withdraw unbonded node stake once the unbonding period has passed."""

from __future__ import annotations

import sys
import time

from scripts.common import UsageError, connect, fmt, parser, run


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    session = connect(args)
    nodes = session.nodes.functions
    node = nodes.getNode(session.address).call()
    unbonding, ready = node[5], node[6]
    if unbonding == 0:
        raise UsageError("nothing is unbonding: start with unbond.py --amount AMOUNT")
    now = session.w3.eth.get_block("latest")["timestamp"]
    if now < ready:
        raise UsageError(f"the unbonding period ends at {time.ctime(ready)}; {ready - now} s to go")
    session.send(nodes.withdrawStake())
    print(f"withdrew {fmt(unbonding)} of stake")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
