"""Fund an address on a development network: the NetworkToken owner mints MESH to it and sends it
native currency for gas, so a fresh keystore can stake or deposit. Needs the token owner's account
(on `make devnet`: --dev-account 0)."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation

from web3 import Web3

from chain.units import format_token
from scripts.common import UsageError, connect, parse_address, parse_amount, parser, run

DEFAULT_GAS_FUNDS = "1"  # ether: thousands of transactions on Anvil's 1-gwei-ish fees


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--to", required=True, help="the address to fund (0x..., e.g. from new_keystore.py)")
    p.add_argument("--amount", required=True, help="MESH to mint to it")
    p.add_argument(
        "--gas-funds",
        default=DEFAULT_GAS_FUNDS,
        help=f"top its native balance up to this many ether for gas (default {DEFAULT_GAS_FUNDS}; 0: none)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    amount = parse_amount(args.amount)
    gas_target = _gas_target(args.gas_funds)
    session = connect(args)
    to = parse_address(session.w3, args.to, "--to")
    owner = session.token.functions.owner().call()
    if owner != session.address:
        raise UsageError(
            f"{session.address} cannot mint: the token owner is {owner} (on make devnet: --dev-account 0)"
        )
    missing_gas = max(0, gas_target - session.w3.eth.get_balance(to))
    if missing_gas > session.w3.eth.get_balance(session.address):  # refuse before minting anything
        asked = Web3.from_wei(missing_gas, "ether")
        raise UsageError(f"{session.address} holds less than the {asked} ether asked for gas")
    session.send(session.token.functions.mint(to, amount))
    topped = _top_up_gas(session, to, gas_target)
    balance = session.token.functions.balanceOf(to).call()
    print(
        f"minted {format_token(amount)} to {to}; it holds {format_token(balance)}"
        + (f", sent {topped}" if topped else "")
    )
    return 0


def _gas_target(text: str) -> int:
    """--gas-funds in wei: ether like 1 or 0.5, and 0 for none."""
    try:
        if Decimal(text) == 0:
            return 0
    except InvalidOperation:
        pass  # parse_amount says what is wrong
    return parse_amount(text, "--gas-funds (ether)")


def _top_up_gas(session, to: str, target: int) -> str:
    """Send native currency so `to` holds `target` wei; '' when it already does."""
    missing = target - session.w3.eth.get_balance(to)
    if missing <= 0:
        return ""
    session.sender.send_value(to, missing)
    return f"{Web3.from_wei(missing, 'ether')} ether for gas"


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
