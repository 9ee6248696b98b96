"""What every script shares: connection and account options, amounts, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from chain import rpc, units, views
from chain.accounts import account_from_args, add_account_arguments, load_account
from chain.deployment import Deployment, contract_at, load_deployment
from chain.errors import ChainError
from chain.tx import TxSender
from node.config import CONFIG_ENV, ConfigError, NodeConfig, default_config_path, load_config
from storage.errors import StorageError

DEFAULT_RPC = "http://127.0.0.1:8545"
DEFAULT_DEPLOYMENT = Path(".devnet/deployment.json")


class UsageError(Exception):
    """Bad input on the command line; the message says what to pass instead."""


def parser(description: str, *, account: bool = True, node_config: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the shared --rpc-url / --deployment (and account) options.

    With `node_config`, also --config: the node config then supplies the RPC URL, the deployment
    file and the account (its keystore and password file) when neither flag nor environment does.
    """
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)
    source = "env LLM_MESH_RPC_URL, the node config" if node_config else "env LLM_MESH_RPC_URL"
    p.add_argument("--rpc-url", help=f"JSON-RPC endpoint ({source}; default {DEFAULT_RPC})")
    source = "env LLM_MESH_DEPLOYMENT, the node config" if node_config else "env LLM_MESH_DEPLOYMENT"
    p.add_argument(
        "--deployment", type=Path, help=f"deployment file ({source}; default {DEFAULT_DEPLOYMENT})"
    )
    if node_config:
        add_config_argument(p)
    if account:
        add_account_arguments(p)
    return p


def add_config_argument(p: argparse.ArgumentParser) -> None:
    """--config, defaulting to the one node config location every script and the daemon share."""
    default = default_config_path()
    p.add_argument(
        "--config", type=Path, default=default, help=f"node config (default {default}, or ${CONFIG_ENV})"
    )


def node_config(args: argparse.Namespace, *, required: bool = False) -> NodeConfig | None:
    """The node config named by --config (None when the script has none, or it does not exist yet)."""
    path = getattr(args, "config", None)
    if path is None or (not required and not path.exists()):
        return None
    return load_config(path)


def rpc_url(args: argparse.Namespace, config: NodeConfig | None = None) -> str:
    """--rpc-url, else $LLM_MESH_RPC_URL, else the node `config`'s, else the local default."""
    return (
        args.rpc_url
        or os.environ.get("LLM_MESH_RPC_URL")
        or (config.chain.rpc_url if config else DEFAULT_RPC)
    )


def deployment_path(args: argparse.Namespace, config: NodeConfig | None = None) -> Path:
    """--deployment, else $LLM_MESH_DEPLOYMENT, else the node `config`'s, else .devnet/deployment.json."""
    if args.deployment is not None:
        return args.deployment
    if os.environ.get("LLM_MESH_DEPLOYMENT"):
        return Path(os.environ["LLM_MESH_DEPLOYMENT"])
    return config.chain.deployment if config else DEFAULT_DEPLOYMENT


def account(args: argparse.Namespace, config: NodeConfig | None = None) -> LocalAccount:
    """--keystore or --dev-account, else the node `config`'s keystore (and password file)."""
    if args.keystore is None and args.dev_account is None and config and config.chain.keystore:
        password = args.password_file or config.chain.password_file
        return load_account(keystore=config.chain.keystore, password_file=password, dev_index=None)
    return account_from_args(args)


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

    def node(self, operator: str | None = None) -> views.NodeInfo:
        """A node's registration and stake (this account's by default)."""
        return views.node_info(self.nodes, operator or self.address)

    def model(self, model_id: int) -> views.ModelInfo:
        """One model version."""
        return views.model_info(self.models, model_id)

    def escrow(self, payer: str | None = None) -> views.Escrow:
        """A payer's escrow (this account's by default)."""
        return views.escrow_of(self.settlement, payer or self.address)

    @property
    def address(self) -> str:
        if self.account is None:
            raise UsageError("this command needs an account: pass --keystore FILE or --dev-account N")
        return self.account.address

    def send(self, call) -> dict:
        if self.sender is None:
            raise UsageError("this command needs an account: pass --keystore FILE or --dev-account N")
        return self.sender.send(call)


def connect(args: argparse.Namespace, *, need_account: bool = True) -> Session:
    """Open a session from parsed arguments: RPC, deployment (chain id checked), account."""
    config = node_config(args)  # read once: it may supply the RPC, the deployment and the account
    w3 = rpc.connect(rpc_url(args, config))
    deployment = load_deployment(deployment_path(args, config), w3)
    signer = account(args, config) if need_account else None
    sender = TxSender(w3, signer) if signer is not None else None
    return Session(w3=w3, deployment=deployment, account=signer, sender=sender)


def parse_amount(text: str, what: str = "amount") -> int:
    """'1000' or '0.5' MESH -> base units, or a UsageError saying what to write."""
    try:
        return units.parse_amount(text, what)
    except units.AmountError as exc:
        raise UsageError(str(exc)) from None


def parse_address(w3: Web3, text: str, what: str) -> str:
    """A checksummed address, or a UsageError saying what to pass."""
    if not Web3.is_address(text):
        raise UsageError(f"{what} {text!r} is not an address; pass 0x followed by 40 hex digits")
    return w3.to_checksum_address(text)


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
    except BrokenPipeError:
        # The reader has gone (`status | head`): not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
