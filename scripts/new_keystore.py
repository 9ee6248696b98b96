"""Create an encrypted keystore (standard Ethereum JSON, readable by other wallets) for a new
account, or for an existing key read from a file. The password comes from --password-file or a
prompt, never from the command line."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from chain.accounts import create_keystore, read_password
from scripts.common import UsageError, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    p.add_argument("path", type=Path, help="keystore file to create (refuses to overwrite)")
    p.add_argument("--password-file", type=Path, help="file holding the password (else prompt)")
    p.add_argument("--import-key-file", type=Path, help="file holding an existing hex private key")
    return p


def password(args: argparse.Namespace) -> str:
    if args.password_file or not sys.stdin.isatty():
        return read_password(args.password_file, prompt=False)
    first = getpass.getpass("new keystore password: ")
    if first != getpass.getpass("repeat password: "):
        raise UsageError("the passwords differ")
    return first


def read_key_file(path: Path) -> bytes:
    """A 32-byte private key written as hex in `path`, or a UsageError saying what is wrong."""
    try:
        text = path.read_text().strip().removeprefix("0x")
    except OSError as exc:
        raise UsageError(f"cannot read the key file {path}: {exc.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{path} must hold a private key as 64 hex digits") from None
    if len(key) != 32:
        raise UsageError(f"{path} holds {len(key)} bytes; a private key is 32 (64 hex digits)")
    return key


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    secret = password(args)
    if len(secret) < 8:
        raise UsageError("use a password of at least 8 characters")
    key = read_key_file(args.import_key_file) if args.import_key_file else None
    address = create_keystore(args.path, secret, key)
    print(f"{address} -> {args.path}")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
