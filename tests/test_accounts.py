"""Accounts: Anvil's dev keys checked against Anvil, v3 keystores, passwords, script options."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from eth_account import Account
from eth_keyfile import decode_keyfile_json
from web3 import Web3

from chain import accounts
from chain.accounts import (
    ANVIL_DEV_KEYS,
    account_from_args,
    add_account_arguments,
    create_keystore,
    dev_account,
    load_account,
    load_keystore,
    read_password,
)
from chain.errors import ChainError, KeystoreError

PASSWORD = "correct horse battery staple"
KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One keystore for the module (scrypt takes a second or two per use): path and address."""
    path = tmp_path_factory.mktemp("keys") / "operator.json"
    return path, create_keystore(path, PASSWORD, KEY)


@pytest.fixture
def no_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    monkeypatch.delenv(accounts.PASSWORD_ENV, raising=False)


# --- Anvil's dev accounts -----------------------------------------------------------------------------


def test_anvilDevKeys_deriveFromTheTestMnemonic() -> None:
    Account.enable_unaudited_hdwallet_features()
    derived = tuple(
        Account.from_mnemonic(accounts.ANVIL_DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key.to_0x_hex()
        for i in range(10)
    )
    assert derived == ANVIL_DEV_KEYS
    assert ANVIL_DEV_KEYS[0] == "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def test_anvilDevKeys_areTheAccountsAnvilFunds(anvil: Web3) -> None:
    assert [dev_account(i).address for i in range(10)] == anvil.eth.accounts[:10]


def test_devAccount_rejectsIndexOutsideAnvilsTen() -> None:
    with pytest.raises(KeystoreError, match="accounts 0 to 9"):
        dev_account(10)
    with pytest.raises(KeystoreError):
        dev_account(-1)


# --- keystores -------------------------------------------------------------------------------------------


def test_createKeystore_writesStandardV3FileOnlyTheOwnerReads(keystore) -> None:
    path, address = keystore
    assert address == Account.from_key(KEY).address
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["version"] == 3
    assert document["crypto"]["kdf"] == "scrypt"
    assert decode_keyfile_json(document, PASSWORD.encode()) == KEY  # what other wallets do


def test_createKeystore_refusesToOverwrite(keystore) -> None:
    path, _ = keystore
    before = path.read_bytes()
    with pytest.raises(KeystoreError, match="already exists"):
        create_keystore(path, "another password", bytes(31) + b"\x01")
    assert path.read_bytes() == before


def test_createKeystore_makesANewKeyByDefault(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.json"
    address = create_keystore(path, "pw")
    assert Web3.is_checksum_address(address)
    assert json.loads(path.read_text())["address"].lower() == address[2:].lower()  # stored without 0x


def test_createKeystore_refusesEmptyPassword(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="empty password"):
        create_keystore(tmp_path / "k.json", "")
    assert not (tmp_path / "k.json").exists()


def test_loadKeystore_returnsTheAccount(keystore) -> None:
    path, address = keystore
    account = load_keystore(path, PASSWORD)
    assert account.address == address
    assert account.key == KEY


def test_loadKeystore_rejectsWrongPassword(keystore) -> None:
    path, _ = keystore
    with pytest.raises(KeystoreError) as info:
        load_keystore(path, "wrong")
    assert str(info.value) == f"wrong password for keystore {path}"


def test_loadKeystore_namesTheFixForMissingFile(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="not found: check the --keystore path"):
        load_keystore(tmp_path / "absent.json", PASSWORD)


def test_loadKeystore_namesTheFixForCorruptFile(tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"version": 3, "crypto": ')
    with pytest.raises(KeystoreError, match=r"not JSON .* restore it from a backup"):
        load_keystore(garbled, PASSWORD)
    other = tmp_path / "other.json"
    other.write_text('{"hello": "world"}')
    with pytest.raises(KeystoreError, match="not a Web3 Secret Storage v3 file"):
        load_keystore(other, PASSWORD)


def test_loadKeystore_namesTheFixForDamagedCrypto(keystore, tmp_path: Path) -> None:
    document = json.loads(keystore[0].read_text())
    del document["crypto"]["kdfparams"]
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(document))
    with pytest.raises(KeystoreError, match="cannot be decrypted"):
        load_keystore(damaged, PASSWORD)


def test_loadKeystore_acceptsTheOlderCapitalisedCryptoKey(keystore, tmp_path: Path) -> None:
    """Older geth and pyethereum keystores name the section "Crypto"; the file is otherwise v3."""
    document = json.loads(keystore[0].read_text())
    document["Crypto"] = document.pop("crypto")
    older = tmp_path / "older.json"
    older.write_text(json.dumps(document))
    older.chmod(0o600)
    assert load_keystore(older, PASSWORD).key == KEY


def test_createKeystore_fsyncsTheDirectorySoACrashCannotLoseTheKey(tmp_path: Path, monkeypatch) -> None:
    """A crash between writing the key and the directory entry reaching the disk cannot be caused
    here; what the test can see for real is that the directory itself is fsynced after the file."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "keys" / "node.json"
    create_keystore(path, PASSWORD, KEY)
    assert synced == [str(path), str(path.parent)]


def test_keystoreErrors_areChainErrors() -> None:
    assert issubclass(KeystoreError, ChainError)


# --- passwords ----------------------------------------------------------------------------------------------


def test_readPassword_stripsOneTrailingNewlineFromFile(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(accounts.PASSWORD_ENV, "from env")
    file = tmp_path / "pw"
    file.write_text(" secret \n\n")
    assert read_password(file) == " secret \n"  # the file wins over the environment
    file.write_text("secret\r\n")
    assert read_password(file) == "secret"


def test_readPassword_warnsWhenOthersCanReadThePasswordFile(tmp_path: Path, caplog) -> None:
    path = tmp_path / "password"
    path.write_text("secret\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="chain.accounts"):
        assert read_password(path) == "secret"
    assert [r.getMessage() for r in caplog.records] == [
        f"password_file_permissions path={path} mode=644 fix='chmod 600 {path}'"
    ]
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="chain.accounts"):
        read_password(path)
    assert not caplog.records


def test_readPassword_rejectsMissingOrEmptyFile(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="not found"):
        read_password(tmp_path / "absent")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(KeystoreError, match="is empty"):
        read_password(tmp_path / "empty")


def test_readPassword_usesEnvironmentWithoutFile(monkeypatch) -> None:
    monkeypatch.setenv("MY_PW", "from env")
    assert read_password(None, env_var="MY_PW") == "from env"


def test_readPassword_promptsOnTerminal(monkeypatch, no_tty) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: "typed")
    assert read_password(None) == "typed"


def test_readPassword_explainsHowToPassOneWithoutTerminal(no_tty) -> None:
    with pytest.raises(KeystoreError, match=r"--password-file FILE .* LLM_MESH_KEYSTORE_PASSWORD"):
        read_password(None)


def test_readPassword_neverPromptsWhenAskedNotTo(monkeypatch, no_tty) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    with pytest.raises(KeystoreError):
        read_password(None, prompt=False)


# --- choosing an account ------------------------------------------------------------------------------------


def test_loadAccount_needsExactlyOneSource(keystore) -> None:
    with pytest.raises(KeystoreError, match="choose exactly one account"):
        load_account(keystore=None, password_file=None, dev_index=None)
    with pytest.raises(KeystoreError, match="choose exactly one account"):
        load_account(keystore=keystore[0], password_file=None, dev_index=0)


def test_loadAccount_readsKeystoreWithPasswordFile(keystore, tmp_path: Path) -> None:
    path, address = keystore
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    account = load_account(keystore=path, password_file=tmp_path / "pw", dev_index=None)
    assert account.address == address


def test_accountFromArgs_picksDevAccount() -> None:
    parser = argparse.ArgumentParser()
    add_account_arguments(parser)
    assert account_from_args(parser.parse_args(["--dev-account", "3"])).address == dev_account(3).address


def test_addAccountArguments_marksDevAccountsAndTakesNoSecrets() -> None:
    parser = argparse.ArgumentParser()
    add_account_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert "DEV ONLY" in help_text and "Anvil" in help_text
    options = {o for action in parser._actions for o in action.option_strings} - {"-h", "--help"}
    assert options == {"--keystore", "--password-file", "--dev-account"}
    args = parser.parse_args(["--keystore", "k.json", "--password-file", "pw.txt"])
    assert (args.keystore, args.password_file, args.dev_account) == (Path("k.json"), Path("pw.txt"), None)
