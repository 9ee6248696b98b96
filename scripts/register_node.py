"""Stake and register a node (approve, stake up to --stake, register or update), then show it.

Idempotent: running it again tops the stake up to --stake and updates the endpoint if it changed.
"""

from __future__ import annotations

import argparse
import sys

from web3 import Web3

from chain.units import format_token
from protocol.endpoints import check_endpoint
from scripts.common import Session, UsageError, connect, node_config, parse_amount, parser, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__, node_config=True)
    p.add_argument("--node-id", help="unique node name (default: node_id from --config)")
    p.add_argument("--stake", required=True, help="total stake to hold, in MESH (at least the minimum stake)")
    p.add_argument("--endpoint", help="public base URL of the node's API (default: endpoint from --config)")
    return p


def resolve(args: argparse.Namespace) -> tuple[str, str, str]:
    """node id, endpoint and hardware profile, from the arguments and the node config."""
    config = node_config(args)
    node_id = args.node_id or (config.node_id if config else None)
    endpoint = args.endpoint or (config.endpoint if config else None)
    if not node_id or not endpoint:
        raise UsageError("pass --node-id and --endpoint, or create a node config with configure_node.py")
    try:
        endpoint = check_endpoint(endpoint)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    hardware = config.hardware.profile() if config else '{"gpu":"unknown"}'
    return node_id, endpoint, hardware


def preflight(session: Session, node_id: str, endpoint: str, hardware: str) -> None:
    """Refuse, before any token moves, what registering would refuse after staking: a node id owned by
    another operator, fields too long, a changed node id, and unbonding stake that should come back."""
    node = session.node()
    if node.registered and node.node_id != node_id:
        raise UsageError(
            f"this account's node is registered as {node.node_id!r}, not {node_id!r}; keep its id"
        )
    limits = (("node id", node_id, "MAX_NODE_ID_BYTES"), ("endpoint", endpoint, "MAX_ENDPOINT_BYTES"))
    for what, value, limit in (*limits, ("hardware profile", hardware, "MAX_HARDWARE_BYTES")):
        most = getattr(session.nodes.functions, limit)().call()
        if not 0 < len(value.encode()) <= most:
            raise UsageError(f"the {what} must be 1 to {most} bytes, got {len(value.encode())}")
    owner = session.nodes.functions.nodeIdOwner(Web3.keccak(text=node_id)).call()
    if int(owner, 16) not in (0, int(session.address, 16)):
        raise UsageError(f"node id {node_id!r} belongs to {owner}; choose another --node-id")
    if node.unbonding:
        raise UsageError(
            f"{format_token(node.unbonding)} of this account's stake is unbonding: put it back with "
            "unbond.py --cancel before staking more"
        )


def ensure_stake(session: Session, target: int) -> None:
    missing = target - session.node().stake
    if missing <= 0:
        return
    balance = session.token.functions.balanceOf(session.address).call()
    if balance < missing:
        raise UsageError(
            f"insufficient balance: staking {format_token(missing)} more needs it, "
            f"the account holds {format_token(balance)}"
        )
    session.send(session.token.functions.approve(session.nodes.address, missing))
    session.send(session.nodes.functions.stake(missing))
    print(f"staked {format_token(missing)}")


def ensure_registered(session: Session, node_id: str, endpoint: str, hardware: str) -> None:
    node = session.node()
    if not node.registered:
        session.send(session.nodes.functions.register(node_id, endpoint, hardware, node.hosted_models))
        print(f"registered {node_id}")
    elif node.endpoint != endpoint:
        session.send(session.nodes.functions.updateEndpoint(endpoint))
        print(f"endpoint updated to {endpoint}")


def show(session: Session) -> None:
    node = session.node()
    active = session.nodes.functions.isActive(session.address).call()
    print(f"node {node.node_id} ({session.address})")
    print(f"  endpoint   {node.endpoint}")
    print(f"  stake      {format_token(node.stake)}  unbonding {format_token(node.unbonding)}")
    print(f"  models     {list(node.hosted_models) or 'none'}")
    print(f"  active     {active}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = parse_amount(args.stake, "--stake")
    node_id, endpoint, hardware = resolve(args)
    session = connect(args)
    minimum = session.nodes.functions.minStake().call()
    if target < minimum:
        raise UsageError(
            f"--stake {format_token(target)} is below the minimum stake of {format_token(minimum)}"
        )
    preflight(session, node_id, endpoint, hardware)
    ensure_stake(session, target)
    ensure_registered(session, node_id, endpoint, hardware)
    show(session)
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
