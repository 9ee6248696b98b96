"""EIP-712 in Python must match Settlement.sol byte for byte, in both directions."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3.exceptions import ContractCustomError

from chain import eip712
from chain.artifacts import load_artifact
from chain.deploy import deploy_all
from chain.errors import ChainError
from chain.revert import decode_revert

ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # Anvil's account 0
UINT = st.integers(min_value=0, max_value=2**256 - 1)
KEYS = st.integers(min_value=1, max_value=eip712.SECP256K1_N - 1)
ADDRESSES = st.binary(min_size=20, max_size=20).map(lambda b: Account.from_key(keccak(b)).address)


@pytest.fixture(scope="module")
def settlement(anvil):
    deployment = deploy_all(anvil, Account.from_key(ANVIL_KEY))
    return anvil.eth.contract(address=deployment.settlement, abi=load_artifact("Settlement").abi)


def receipt_strategy():
    return st.fixed_dictionaries(
        {
            "payer": ADDRESSES,
            "node": ADDRESSES,
            "modelId": UINT,
            "cumulativeTokens": UINT,
            "cumulativeAmount": UINT,
            "expiry": UINT,
        }
    )


def auth_strategy():
    return st.fixed_dictionaries(
        {
            "payer": ADDRESSES,
            "node": ADDRESSES,
            "modelId": UINT,
            "maxTokens": UINT,
            "maxPricePer1k": UINT,
            "nonce": UINT,
            "deadline": UINT,
        }
    )


def as_tuple(struct: str, message: dict) -> tuple:
    return tuple(message[name] for name, _ in eip712.struct_fields(struct))


def test_typeHashes_matchSolidityConstants(settlement) -> None:
    assert settlement.functions.USAGE_RECEIPT_TYPEHASH().call() == eip712.type_hash("UsageReceipt")
    assert settlement.functions.REQUEST_AUTH_TYPEHASH().call() == eip712.type_hash("RequestAuth")


def test_domain_matchesErc5267(settlement, anvil) -> None:
    _, name, version, chain_id, contract, _, _ = settlement.functions.eip712Domain().call()
    assert (name, version, chain_id, contract) == (
        eip712.DOMAIN_NAME,
        eip712.DOMAIN_VERSION,
        anvil.eth.chain_id,
        settlement.address,
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=receipt_strategy())
def test_receiptDigest_pythonEqualsSolidity(settlement, anvil, message) -> None:
    expected = settlement.functions.hashReceipt(as_tuple("UsageReceipt", message)).call()
    assert eip712.digest("UsageReceipt", message, anvil.eth.chain_id, settlement.address) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=auth_strategy(), key=KEYS)
def test_requestAuth_signedInPython_recoversInSolidity(settlement, anvil, message, key) -> None:
    account = Account.from_key(key.to_bytes(32, "big"))
    sig = eip712.sign(account.key, "RequestAuth", message, anvil.eth.chain_id, settlement.address)
    signer = settlement.functions.recoverRequestSigner(
        as_tuple("RequestAuth", message), sig.as_tuple()
    ).call()
    assert signer == account.address


def test_highS_refusedInPythonAndSolidity(settlement, anvil) -> None:
    account = Account.from_key(ANVIL_KEY)
    message = {
        "payer": account.address,
        "node": account.address,
        "modelId": 1,
        "maxTokens": 256,
        "maxPricePer1k": 10**18,
        "nonce": 7,
        "deadline": 2**40,
    }
    sig = eip712.sign(account.key, "RequestAuth", message, anvil.eth.chain_id, settlement.address)
    high_s = (eip712.SECP256K1_N - int.from_bytes(sig.s, "big")).to_bytes(32, "big")
    malleable = eip712.Signature(v=55 - sig.v, r=sig.r, s=high_s)  # 27 <-> 28
    with pytest.raises(ContractCustomError) as refused:
        settlement.functions.recoverRequestSigner(
            as_tuple("RequestAuth", message), malleable.as_tuple()
        ).call()
    assert decode_revert(refused.value.data).name == "InvalidRequestSignature"
    with pytest.raises(ChainError, match="high s"):
        eip712.recover("RequestAuth", message, malleable, anvil.eth.chain_id, settlement.address)


def test_typedData_rejectsWrongFields() -> None:
    with pytest.raises(ChainError, match="missing"):
        eip712.typed_data("UsageReceipt", {"payer": "0x" + "11" * 20}, 1, "0x" + "22" * 20)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=receipt_strategy())
def test_receipt_signedByWallet_recoversInPythonAndSolidity(settlement, anvil, message) -> None:
    """The reverse direction: a wallet (Anvil's eth_signTypedData_v4) signs, Python and Solidity verify."""
    signer = anvil.eth.accounts[0]
    document = eip712.typed_data("UsageReceipt", message, anvil.eth.chain_id, settlement.address)
    document["message"] = {k: str(v) if isinstance(v, int) else v for k, v in document["message"].items()}
    raw = anvil.provider.make_request("eth_signTypedData_v4", [signer, document])["result"]
    sig = eip712.Signature.from_bytes(bytes.fromhex(raw.removeprefix("0x")))
    assert eip712.recover("UsageReceipt", message, sig, anvil.eth.chain_id, settlement.address) == signer
    digest = settlement.functions.hashReceipt(as_tuple("UsageReceipt", message)).call()
    assert Account._recover_hash(digest, vrs=(sig.v, sig.r, sig.s)) == signer
