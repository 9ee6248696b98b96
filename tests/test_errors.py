"""Revert decoding: the selector table against the ABIs, and real reverts from Anvil decoded."""

from __future__ import annotations

import pickle

import pytest
from eth_abi import encode
from eth_utils import keccak
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError

from chain.accounts import dev_account
from chain.artifacts import CONTRACT_NAMES, load_artifact
from chain.errors import ChainError
from chain.revert import HINTS, RevertError, decode_revert, selector_table

ETHER = 10**18
PSEUDO_ERRORS = {"OutOfGas", "UnknownError"}  # reported as RevertError, not declared in any ABI


def signature(entry: dict) -> str:
    """Name(types) written out independently of chain.errors (these ABIs have no tuple errors)."""
    assert all(not p["type"].startswith("tuple") for p in entry["inputs"])
    return f"{entry['name']}({','.join(p['type'] for p in entry['inputs'])})"


def abi_errors() -> list[tuple[str, dict]]:
    return [
        (name, entry)
        for name in CONTRACT_NAMES
        for entry in load_artifact(name).abi
        if entry["type"] == "error"
    ]


def revert_data(fn: ContractFunction, sender: str) -> str:
    """The raw revert data of a call on Anvil (eth_call), as the node returns it."""
    with pytest.raises(ContractLogicError) as info:
        fn.call({"from": sender})
    return info.value.data


# --- the selector table ---------------------------------------------------------------------------


def test_selectorTable_mapsEveryAbiErrorBackByItsSelector() -> None:
    table = selector_table()
    for contract, entry in abi_errors():
        selector = keccak(text=signature(entry))[:4]
        assert selector in table, f"{contract}.{signature(entry)} missing"
        _, found = table[selector]
        assert signature(found) == signature(entry)
        assert [p["name"] for p in found["inputs"]] == [p["name"] for p in entry["inputs"]]


def test_selectorTable_holdsExactlyTheAbiErrorsPlusBuiltins() -> None:
    expected = {keccak(text=signature(e))[:4] for _, e in abi_errors()}
    expected |= {bytes.fromhex("08c379a0"), bytes.fromhex("4e487b71")}  # Error(string), Panic(uint256)
    assert set(selector_table()) == expected


def test_selectorTable_noTwoDifferentErrorsShareASelector() -> None:
    by_selector: dict[bytes, set[str]] = {}
    for _, entry in abi_errors():
        by_selector.setdefault(keccak(text=signature(entry))[:4], set()).add(signature(entry))
    assert {s: sigs for s, sigs in by_selector.items() if len(sigs) > 1} == {}


def test_selectorTable_namesTheDeclaringContract() -> None:
    table = selector_table()
    assert table[keccak(text="StakeBelowMinimum(uint256,uint256)")[:4]][0] == "NodeRegistry"
    assert table[keccak(text="InsufficientEscrow(address,uint256,uint256)")[:4]][0] == "Settlement"
    assert table[keccak(text="Error(string)")[:4]][0] == "Solidity"


def test_hints_nameOnlyKnownErrors() -> None:
    names = {entry["name"] for _, entry in selector_table().values()}
    assert set(HINTS) - names - PSEUDO_ERRORS == set()


# --- decoding without a chain -----------------------------------------------------------------------


def test_decodeRevert_formatsAmountsInMeshWithHint() -> None:
    data = keccak(text="StakeBelowMinimum(uint256,uint256)")[:4] + encode(
        ["uint256", "uint256"], [500 * ETHER, 1000 * ETHER]
    )
    err = decode_revert(data)
    assert err.args == {"stake": 500 * ETHER, "minimum": 1000 * ETHER}
    assert err.contract == "NodeRegistry"
    assert str(err) == (
        "StakeBelowMinimum(stake=500 MESH, minimum=1,000 MESH): stake more with register_node.py --stake"
    )


def test_decodeRevert_acceptsHexAndBytes() -> None:
    data = keccak(text="ZeroAmount()")[:4]
    assert decode_revert(data).name == decode_revert("0x" + data.hex()).name == "ZeroAmount"


def test_decodeRevert_readsBuiltinErrorString() -> None:
    err = decode_revert(keccak(text="Error(string)")[:4] + encode(["string"], ["no luck"]))
    assert (err.name, err.args, err.contract) == ("Error", {"message": "no luck"}, None)
    assert str(err) == 'Error(message="no luck")'


def test_decodeRevert_explainsPanicCodes() -> None:
    err = decode_revert(keccak(text="Panic(uint256)")[:4] + encode(["uint256"], [0x11]))
    assert err.args == {"code": 0x11}
    assert "arithmetic overflow or underflow" in str(err)


def test_decodeRevert_unknownSelectorKeepsTheData() -> None:
    err = decode_revert("0xdeadbeef0102")
    assert (err.name, err.selector, err.data) == (
        "UnknownError",
        bytes.fromhex("deadbeef"),
        bytes.fromhex("deadbeef0102"),
    )
    assert "0xdeadbeef0102" in str(err)


def test_decodeRevert_emptyDataSaysSo() -> None:
    err = decode_revert("0x")
    assert err.name == "UnknownError"
    assert "without revert data" in str(err)


def test_decodeRevert_truncatedArgumentsAreUnknown() -> None:
    err = decode_revert(keccak(text="StakeBelowMinimum(uint256,uint256)")[:4] + b"\x00" * 10)
    assert err.name == "UnknownError"


def test_decodeRevert_rejectsNonHex() -> None:
    with pytest.raises(ChainError, match="not hex"):
        decode_revert("0xzz")


def test_revertError_survivesPickling() -> None:
    err = decode_revert(
        keccak(text="NotRegistered(address)")[:4] + encode(["address"], [dev_account(1).address])
    )
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.name, copy.args, copy.contract, str(copy)) == (err.name, err.args, err.contract, str(err))


# --- real reverts from Anvil ---------------------------------------------------------------------------


def test_decodeRevert_readsStakeBelowMinimumFromAnvil(marketplace) -> None:
    admin = marketplace.admin.address
    token, nodes = marketplace.contract("NetworkToken"), marketplace.contract("NodeRegistry")
    for call in (
        token.functions.mint(admin, 500 * ETHER),
        token.functions.approve(nodes.address, 500 * ETHER),
    ):
        call.transact({"from": admin})
    nodes.functions.stake(500 * ETHER).transact({"from": admin})
    err = decode_revert(revert_data(nodes.functions.register("node-a", "http://n", "{}", []), admin))
    assert err.name == "StakeBelowMinimum"
    assert err.args == {"stake": 500 * ETHER, "minimum": 1000 * ETHER}
    assert str(err).startswith("StakeBelowMinimum(stake=500 MESH, minimum=1,000 MESH): ")


def test_decodeRevert_readsInsufficientEscrowFromAnvil(marketplace) -> None:
    payer = dev_account(1).address
    err = decode_revert(
        revert_data(marketplace.contract("Settlement").functions.requestUnlock(7 * ETHER), payer)
    )
    assert (err.name, err.args) == (
        "InsufficientEscrow",
        {"payer": payer, "needed": 7 * ETHER, "available": 0},
    )
    assert "needed=7 MESH, available=0 MESH" in str(err)


def test_decodeRevert_readsOpenZeppelinErrorsFromAnvil(marketplace) -> None:
    stranger = dev_account(2).address
    token, models = marketplace.contract("NetworkToken"), marketplace.contract("ModelRegistry")
    balance = decode_revert(revert_data(token.functions.transfer(stranger, ETHER), stranger))
    assert (balance.name, balance.args) == (
        "ERC20InsufficientBalance",
        {"sender": stranger, "balance": 0, "needed": ETHER},
    )
    role = decode_revert(revert_data(models.functions.approve(1), stranger))
    assert role.name == "AccessControlUnauthorizedAccount"
    assert role.args == {"account": stranger, "neededRole": keccak(text="CURATOR_ROLE")}
    assert "neededRole=CURATOR_ROLE" in str(role)


def test_decodeRevert_readsParameterBoundsAndTimesFromAnvil(marketplace) -> None:
    w3, admin = marketplace.w3, marketplace.admin.address
    settlement = marketplace.contract("Settlement")
    bounds = decode_revert(revert_data(settlement.functions.setUnlockDelay(5), admin))
    assert bounds.args == {"name": "unlockDelay", "value": 5, "minimum": 600, "maximum": 30 * 86400}
    assert 'name="unlockDelay", value=5s, minimum=10m, maximum=30d' in str(bounds)

    token = marketplace.contract("NetworkToken")
    token.functions.mint(admin, 10 * ETHER).transact({"from": admin})
    token.functions.approve(settlement.address, 10 * ETHER).transact({"from": admin})
    settlement.functions.deposit(10 * ETHER).transact({"from": admin})
    settlement.functions.requestUnlock(ETHER).transact({"from": admin})
    not_ready = decode_revert(revert_data(settlement.functions.withdraw(), admin))
    assert not_ready.name == "UnlockNotReady"
    assert not_ready.args["readyAt"] - not_ready.args["nowTimestamp"] <= 24 * 3600
    assert not_ready.args["nowTimestamp"] >= w3.eth.get_block("latest")["timestamp"]
    assert "(in 23h 59m)" in str(not_ready) or "(in 1d)" in str(not_ready)


def test_decodeRevert_readsEnumArgumentsByName(marketplace) -> None:
    admin = marketplace.admin.address
    models = marketplace.contract("ModelRegistry")
    spec = ("tiny", "bafkreitiny", b"\x01" * 32, 1000, "Q4_K_M", 2048, 5, ["python"])
    models.functions.propose(spec).transact({"from": admin})
    models.functions.approve(1).transact({"from": admin})
    err = decode_revert(revert_data(models.functions.approve(1), admin))
    assert (err.name, err.args) == ("WrongModelStatus", {"modelId": 1, "current": 2, "expected": 1})
    assert "current=Approved, expected=Proposed" in str(err)


def test_revertError_isAChainError() -> None:
    assert issubclass(RevertError, ChainError)
