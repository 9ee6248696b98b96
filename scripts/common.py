"""What every script shares: connection and account options, amounts, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from chain.accounts import account_from_args, add_account_arguments
from chain.deployment import Deployment, contract_at, load_deployment
from chain.errors import ChainError, redact
from chain.tx import TxSender
from node.config import ConfigError
from storage.errors import StorageError

DEFAULT_RPC = "http://127.0.0.1:8545"
DEFAULT_DEPLOYMENT = Path(".devnet/deployment.json")
DECIMALS = 18
MAX_DIGITS = 80  # digits before the point: past any uint256, so huge exponents are refused cheaply


class UsageError(Exception):
    """Bad input on the command line; the message says what to pass instead."""


def parser(description: str, *, account: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the shared --rpc-url / --deployment (and account) options."""
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)
    p.add_argument(
        "--rpc-url",
        default=os.environ.get("LLM_MESH_RPC_URL", DEFAULT_RPC),
        help=f"JSON-RPC endpoint (env LLM_MESH_RPC_URL; default {DEFAULT_RPC})",
    )
    p.add_argument(
        "--deployment",
        type=Path,
        default=Path(os.environ.get("LLM_MESH_DEPLOYMENT", DEFAULT_DEPLOYMENT)),
        help=f"deployment file (env LLM_MESH_DEPLOYMENT; default {DEFAULT_DEPLOYMENT})",
    )
    if account:
        add_account_arguments(p)
    return p


@dataclass
class Session:
    """A connection to one deployment, with contract handles and (optionally) a signer."""

    w3: Web3
    deployment: Deployment
    account: LocalAccount | None
    sender: TxSender | None

    def contract(self, name: str) -> Contract:
        return contract_at(self.w3, self.deployment, name)

    @property
    def token(self) -> Contract:
        return self.contract("NetworkToken")

    @property
    def models(self) -> Contract:
        return self.contract("ModelRegistry")

    @property
    def nodes(self) -> Contract:
        return self.contract("NodeRegistry")

    @property
    def settlement(self) -> Contract:
        return self.contract("Settlement")

    @property
    def vault(self) -> Contract:
        return self.contract("HysaVault")

    @property
    def address(self) -> str:
        if self.account is None:
            raise UsageError("this command needs an account: pass --keystore FILE or --dev-account N")
        return self.account.address

    def send(self, call) -> dict:
        if self.sender is None:
            raise UsageError("this command needs an account: pass --keystore FILE or --dev-account N")
        return self.sender.send(call)


def connect_rpc(rpc_url: str) -> Web3:
    """Connect and check the node answers, with an error that says how to fix it."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    try:
        w3.eth.chain_id  # noqa: B018 - a reachability probe
    except Exception as exc:
        raise ChainError(
            f"cannot reach the RPC at {redact(rpc_url)}: start `make devnet` or pass --rpc-url "
            f"({redact(str(exc))})"
        ) from exc
    return w3


def connect(args: argparse.Namespace, *, need_account: bool = True) -> Session:
    """Open a session from parsed arguments: RPC, deployment (chain id checked), account."""
    w3 = connect_rpc(args.rpc_url)
    deployment = load_deployment(args.deployment, w3)
    account = account_from_args(args) if need_account else None
    sender = TxSender(w3, account) if account is not None else None
    return Session(w3=w3, deployment=deployment, account=account, sender=sender)


def parse_amount(text: str, what: str = "amount") -> int:
    """'1000' or '0.5' MESH -> base units (18 decimals). Refuses negatives and sub-wei precision."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise UsageError(f"{what} {text!r} is not a number; write MESH like 1000 or 0.25") from exc
    if not value.is_finite() or value <= 0:
        raise UsageError(f"{what} must be a positive number of MESH, got {text}")
    # In integers: Decimal arithmetic rounds to 28 digits, which would turn 99999999999.999999999999999999
    # into 100000000000 before any check could see it.
    _, digits, exponent = value.as_tuple()
    if len(digits) + exponent > MAX_DIGITS:
        raise UsageError(f"{what} {text} is larger than any token amount")
    mantissa, shift = int("".join(map(str, digits))), int(exponent) + DECIMALS
    if shift < 0 and mantissa % 10**-shift:
        raise UsageError(f"{what} {text} has more than {DECIMALS} decimals")
    units = mantissa * 10**shift if shift >= 0 else mantissa // 10**-shift
    if units >= 2**256:
        raise UsageError(f"{what} {text} is larger than any token amount")
    return units


def parse_address(w3: Web3, text: str, what: str) -> str:
    """A checksummed address, or a UsageError saying what to pass."""
    if not Web3.is_address(text):
        raise UsageError(f"{what} {text!r} is not an address; pass 0x followed by 40 hex digits")
    return w3.to_checksum_address(text)


def fmt(amount: int) -> str:
    """Base units -> '1,234.5 MESH' (exact, trailing zeros trimmed)."""
    whole, frac = divmod(amount, 10**DECIMALS)
    frac_text = f"{frac:018d}".rstrip("0")
    return f"{whole:,}{'.' + frac_text if frac_text else ''} MESH"


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a script's main: bad input and chain errors become one line on stderr and exit 1/2."""
    try:
        return main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ChainError, ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def latest_approved(session: Session, name: str) -> int:
    """The newest approved version of a model name, or a UsageError listing what exists."""
    ids = session.models.functions.versionsOf(name).call()
    approved = [i for i in ids if session.models.functions.isApproved(i).call()]
    if approved:
        return approved[-1]
    if ids:
        raise UsageError(f"model {name!r} has versions {ids} but none is approved yet (approve_model.py)")
    count = session.models.functions.modelCount().call()
    known = sorted({session.models.functions.getModel(i).call()[0] for i in range(1, count + 1)})
    raise UsageError(f"unknown model {name!r}; registered: {', '.join(known) or 'none'}")
