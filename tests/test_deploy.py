"""Deploying the whole marketplace to a real Anvil node."""

from __future__ import annotations

from pathlib import Path

import pytest
from web3.exceptions import ContractLogicError

from chain.accounts import dev_account
from chain.artifacts import load_artifact
from chain.deploy import DeployParams, deploy_all
from chain.deployment import load_deployment, save_deployment
from chain.errors import ChainError
from chain.tx import TxSender


def contract(w3, name: str, address: str):
    return w3.eth.contract(address=address, abi=load_artifact(name).abi)


def test_deployAll_wiresRolesAndParameters(chain_snapshot) -> None:
    w3 = chain_snapshot
    admin = dev_account(0)
    params = DeployParams(min_stake=5 * 10**18, unbonding_period=2 * 3600, unlock_delay=1800)
    d = deploy_all(w3, admin, params)
    nodes = contract(w3, "NodeRegistry", d.node_registry)
    settlement = contract(w3, "Settlement", d.settlement)
    assert d.chain_id == w3.eth.chain_id
    assert nodes.functions.hasRole(nodes.functions.SETTLEMENT_ROLE().call(), d.settlement).call()
    assert nodes.functions.minStake().call() == params.min_stake
    assert nodes.functions.unbondingPeriod().call() == params.unbonding_period
    assert nodes.functions.slashRecipient().call() == d.hysa_vault
    assert settlement.functions.unlockDelay().call() == params.unlock_delay
    assert settlement.functions.hysaVault().call() == d.hysa_vault


def test_deployAll_seedsVaultWithSharesNobodyCanRedeem(chain_snapshot) -> None:
    w3 = chain_snapshot
    admin = dev_account(0)
    d = deploy_all(w3, admin)
    vault = contract(w3, "HysaVault", d.hysa_vault)
    token = contract(w3, "NetworkToken", d.network_token)
    seed = DeployParams().vault_seed
    assert vault.functions.totalAssets().call() == seed
    shares = vault.functions.balanceOf(d.hysa_vault).call()
    assert shares == vault.functions.totalSupply().call() > 0  # the vault itself holds the seed
    assert vault.functions.balanceOf(admin.address).call() == 0
    # Nobody (the admin included) can take the seed out: the vault never approves its own shares.
    with pytest.raises(ContractLogicError):
        vault.functions.redeem(shares, admin.address, d.hysa_vault).call({"from": admin.address})

    # Income before any user deposits (a fee or slash is a plain transfer) vests to the seed's
    # shares, which stay, so no income is ever stranded with the virtual shares.
    income = 10 * 10**18
    sender = TxSender(w3, admin)
    sender.send(token.functions.mint(d.hysa_vault, income))
    sender.send(vault.functions.sync())
    assert vault.functions.totalAssets().call() == seed  # vesting, not yet counted
    w3.provider.make_request("evm_increaseTime", [vault.functions.VESTING_PERIOD().call()])
    w3.provider.make_request("evm_mine", [])
    claimable = vault.functions.convertToAssets(shares).call()
    assert seed + income - claimable <= (seed + income) // 10**6  # virtual shares keep at most a millionth


def test_saveDeployment_isReadableByOtherUsersAndLoadsBack(chain_snapshot, tmp_path: Path) -> None:
    d = deploy_all(chain_snapshot, dev_account(0))
    path = tmp_path / "deployment.json"
    save_deployment(d, path)
    assert path.stat().st_mode & 0o777 == 0o644  # the node, router and scripts may run as other users
    assert load_deployment(path, chain_snapshot) == d


@pytest.mark.parametrize("content", ["null", "5", "[]", '"text"'])
def test_loadDeployment_nonObjectJson_isAClearChainError(tmp_path: Path, content: str) -> None:
    path = tmp_path / "deployment.json"
    path.write_text(content)
    with pytest.raises(ChainError, match="not an object; redeploy or restore it"):
        load_deployment(path)
