"""Deploy the llm-mesh contracts in dependency order and wire their roles."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from chain.artifacts import load_artifact
from chain.errors import ChainError

ETHER = 10**18


@dataclass(frozen=True)
class DeployParams:
    """Deployment parameters; defaults suit a development chain."""

    min_stake: int = 1_000 * ETHER
    unbonding_period: int = 7 * 24 * 3600
    unlock_delay: int = 24 * 3600
    # Income reaching the vault while it has no shares would belong to its virtual shares forever,
    # so the deployer seeds it with a real deposit whose shares stay with the admin.
    vault_seed: int = 1 * ETHER
    developers: str | None = None
    infrastructure: str | None = None
    research: str | None = None


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live."""

    chain_id: int
    block_number: int
    network_token: str
    model_registry: str
    node_registry: str
    settlement: str
    hysa_vault: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def send(w3: Web3, account: LocalAccount, call: Any, gas_cap: int = 10_000_000) -> dict:
    """Sign and send a contract call or constructor, wait for it, and fail loudly on revert."""
    tx = call.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    if tx["gas"] > gas_cap:
        raise ChainError(f"transaction needs {tx['gas']} gas, above the cap of {gas_cap}")
    signed = account.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=120
    )
    if receipt["status"] != 1:
        raise ChainError(f"transaction {receipt['transactionHash'].hex()} reverted")
    return receipt


def deploy_contract(w3: Web3, account: LocalAccount, name: str, *args: Any) -> Contract:
    """Deploy one contract from its committed artifact."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = send(w3, account, factory.constructor(*args))
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


def _seed_vault(w3: Web3, admin: LocalAccount, token: Contract, vault: Contract, amount: int) -> None:
    send(w3, admin, token.functions.mint(admin.address, amount))
    send(w3, admin, token.functions.approve(vault.address, amount))
    send(w3, admin, vault.functions.deposit(amount, admin.address))


def deploy_all(w3: Web3, admin: LocalAccount, params: DeployParams | None = None) -> Deployment:
    """Deploy token, registries, vault and settlement; give Settlement the reputation-writer role."""
    params = params or DeployParams()
    owner = admin.address
    token = deploy_contract(w3, admin, "NetworkToken", owner)
    models = deploy_contract(w3, admin, "ModelRegistry", owner)
    vault = deploy_contract(w3, admin, "HysaVault", token.address)
    _seed_vault(w3, admin, token, vault, params.vault_seed)
    nodes = deploy_contract(
        w3, admin, "NodeRegistry", token.address, models.address, owner, vault.address,
        params.min_stake, params.unbonding_period,
    )  # fmt: skip
    treasury = (
        params.developers or owner,
        vault.address,
        params.infrastructure or owner,
        params.research or owner,
    )
    settlement = deploy_contract(
        w3, admin, "Settlement", token.address, nodes.address, owner, treasury, params.unlock_delay
    )
    receipt = send(
        w3, admin, nodes.functions.grantRole(nodes.functions.SETTLEMENT_ROLE().call(), settlement.address)
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
