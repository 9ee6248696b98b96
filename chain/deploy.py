"""Deploy the llm-mesh contracts in dependency order and wire their roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from chain.deployment import Deployment
from chain.tx import TxSender

ETHER = 10**18


@dataclass(frozen=True)
class DeployParams:
    """Deployment parameters; defaults suit a development chain."""

    min_stake: int = 1_000 * ETHER
    unbonding_period: int = 7 * 24 * 3600
    unlock_delay: int = 24 * 3600
    # Income reaching the vault while it has no shares would belong to its virtual shares forever,
    # so the deployer seeds it with a real deposit whose shares the vault itself holds: nobody can
    # redeem them, so the vault is never empty again.
    vault_seed: int = 1 * ETHER
    developers: str | None = None
    infrastructure: str | None = None
    research: str | None = None


def deploy_contract(w3: Web3, account: LocalAccount, name: str, *args: Any) -> Contract:
    """Deploy one contract from its committed artifact."""
    return TxSender(w3, account).deploy(name, *args)


def _seed_vault(sender: TxSender, token: Contract, vault: Contract, amount: int) -> None:
    sender.send(token.functions.mint(sender.address, amount))
    sender.send(token.functions.approve(vault.address, amount))
    # The vault never calls redeem or approve for itself, so shares it holds stay forever.
    sender.send(vault.functions.deposit(amount, vault.address))


def deploy_all(w3: Web3, admin: LocalAccount, params: DeployParams | None = None) -> Deployment:
    """Deploy token, registries, vault and settlement; give Settlement the reputation-writer role."""
    params = params or DeployParams()
    sender = TxSender(w3, admin)
    owner = admin.address
    token = sender.deploy("NetworkToken", owner)
    models = sender.deploy("ModelRegistry", owner)
    vault = sender.deploy("HysaVault", token.address)
    _seed_vault(sender, token, vault, params.vault_seed)
    nodes = sender.deploy(
        "NodeRegistry",
        token.address,
        models.address,
        owner,
        vault.address,
        params.min_stake,
        params.unbonding_period,
    )
    # The vault's 20% goes to the registry's slash recipient, fixed at deployment.
    treasury = (
        params.developers or owner,
        params.infrastructure or owner,
        params.research or owner,
    )
    settlement = sender.deploy(
        "Settlement", token.address, nodes.address, owner, treasury, params.unlock_delay
    )
    receipt = sender.send(
        nodes.functions.grantRole(nodes.functions.SETTLEMENT_ROLE().call(), settlement.address)
    )
    return Deployment(
        chain_id=w3.eth.chain_id,
        block_number=receipt["blockNumber"],
        network_token=token.address,
        model_registry=models.address,
        node_registry=nodes.address,
        settlement=settlement.address,
        hysa_vault=vault.address,
    )
