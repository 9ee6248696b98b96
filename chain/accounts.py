"""Accounts for scripts and daemons: encrypted keystores, passwords, and Anvil's dev accounts.

Keys and passwords never come from the command line (shell history, `ps`): a keystore file
(Web3 Secret Storage v3, readable by geth, MetaMask import, cast, ...) plus a password from a
file, an environment variable or a terminal prompt. `--dev-account N` is for Anvil only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import stat
import sys
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from chain.errors import KeystoreError

log = logging.getLogger(__name__)

PASSWORD_ENV = "LLM_MESH_KEYSTORE_PASSWORD"

# DEV ONLY. Anvil's (and Hardhat's) well-known test keys, m/44'/60'/0'/0/{0..9} of the public
# mnemonic "test test test test test test test test test test test junk". Everyone knows them:
# anything sent to these addresses on a real network is taken within seconds. A test derives
# them from the mnemonic and checks them against a running Anvil.
ANVIL_DEV_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_DEV_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)


def dev_account(index: int) -> LocalAccount:
    """DEV ONLY: Anvil's test account `index` (0-9), funded with 10,000 ETH on a fresh Anvil."""
    if not 0 <= index < len(ANVIL_DEV_KEYS):
        raise KeystoreError(
            f"dev account {index} does not exist: Anvil has accounts 0 to {len(ANVIL_DEV_KEYS) - 1}"
        )
    return Account.from_key(ANVIL_DEV_KEYS[index])


# --- keystores ------------------------------------------------------------------------------------


def create_keystore(path: Path, password: str, private_key: bytes | None = None) -> str:
    """Encrypt a key (a new random one by default) into a v3 keystore file; return its address.

    The file is created with mode 0600 and never overwrites an existing file.
    """
    path = Path(path)
    if not password:
        raise KeystoreError("refusing to create a keystore with an empty password: choose a password")
    if path.exists():
        raise KeystoreError(f"{path} already exists: refusing to overwrite a keystore; choose another path")
    key = private_key if private_key is not None else Account.create().key
    try:
        document = Account.encrypt(key, password)
    except (ValueError, TypeError) as exc:
        raise KeystoreError(f"cannot encrypt the private key: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(path, json.dumps(document).encode())
    return to_checksum_address(document["address"])


def _write_private(path: Path, content: bytes) -> None:
    """Create `path` (exclusively) readable only by its owner, and fsync it and its directory.

    The directory too: the file's data can be on disk while its directory entry is not, and a crash
    would then lose a key whose address was already printed (and perhaps funded).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeystoreError(f"{path} already exists: refusing to overwrite a keystore") from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_keystore(path: Path, password: str) -> LocalAccount:
    """Decrypt a v3 keystore file."""
    path = Path(path)
    document = _read_keystore(path)
    _warn_if_readable_by_others(path)
    try:
        key = Account.decrypt(document, password)
    except (ValueError, KeyError, TypeError) as exc:
        if "MAC mismatch" in str(exc):
            raise KeystoreError(f"wrong password for keystore {path}") from exc
        raise KeystoreError(f"keystore {path} cannot be decrypted ({exc}); restore it from a backup") from exc
    return Account.from_key(key)


def _read_keystore(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise KeystoreError(
            f"keystore {path} not found: check the --keystore path (or the node config's "
            "chain.keystore), or create one with new_keystore.py"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeystoreError(
            f"keystore {path} is unreadable or not JSON ({exc}); restore it from a backup"
        ) from exc
    if isinstance(document, dict) and "crypto" not in document and "Crypto" in document:
        # Older geth and pyethereum wrote the section as "Crypto"; the v3 format is the same.
        document = {**document, "crypto": document["Crypto"]}
        del document["Crypto"]
    if not isinstance(document, dict) or document.get("version") != 3 or "crypto" not in document:
        raise KeystoreError(
            f"keystore {path} is not a Web3 Secret Storage v3 file (version 3 with a crypto section); "
            "export the key from your wallet as a v3 keystore JSON"
        )
    return document


def _warn_if_readable_by_others(path: Path, what: str = "keystore") -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s_permissions path=%s mode=%o fix='chmod 600 %s'", what, path, mode & 0o777, path)


# --- passwords --------------------------------------------------------------------------------------


def read_password(password_file: Path | None, *, env_var: str = PASSWORD_ENV, prompt: bool = True) -> str:
    """The keystore password: from `password_file`, else `$env_var`, else a terminal prompt."""
    if password_file is not None:
        return _password_from_file(Path(password_file))
    from_env = os.environ.get(env_var)
    if from_env:
        return from_env
    if prompt and sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass("keystore password: ")
    raise KeystoreError(
        f"no keystore password: pass --password-file FILE (mode 600), set {env_var}, "
        "or run in a terminal to be prompted"
    )


def _password_from_file(path: Path) -> str:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise KeystoreError(f"password file {path} not found: check the --password-file path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"cannot read password file {path} ({exc})") from exc
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise KeystoreError(f"password file {path} is empty: write the keystore password into it")
    _warn_if_readable_by_others(path, "password_file")
    return text


# --- choosing an account -------------------------------------------------------------------------


def load_account(*, keystore: Path | None, password_file: Path | None, dev_index: int | None) -> LocalAccount:
    """The signing account: a keystore (with its password) or, for development, an Anvil account."""
    if (keystore is None) == (dev_index is None):
        raise KeystoreError(
            "choose exactly one account: --keystore FILE (with --password-file or "
            f"{PASSWORD_ENV}), or --dev-account N on a local Anvil"
        )
    if dev_index is not None:
        return dev_account(dev_index)
    return load_keystore(Path(keystore), read_password(password_file))


def add_account_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --keystore, --password-file and --dev-account to a script's parser."""
    group = parser.add_argument_group("account (choose one of --keystore and --dev-account)")
    group.add_argument(
        "--keystore", type=Path, metavar="FILE", help="encrypted keystore JSON (v3) of the account"
    )
    group.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the keystore password (else ${PASSWORD_ENV}, else a prompt)",
    )
    group.add_argument(
        "--dev-account",
        type=int,
        metavar="N",
        help="DEV ONLY: use Anvil's well-known test account N (0-9); never on a real network",
    )


def account_from_args(args: argparse.Namespace) -> LocalAccount:
    """The account chosen by the options `add_account_arguments` added."""
    return load_account(
        keystore=getattr(args, "keystore", None),
        password_file=getattr(args, "password_file", None),
        dev_index=getattr(args, "dev_account", None),
    )
