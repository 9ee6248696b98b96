"""Publish a model: add and pin the GGUF to kubo (its CID and sha256 computed here and checked
against kubo's), then propose the version in the ModelRegistry.

  publish_model.py model.gguf --name gemma-3-270m --context 32768 --price-per-1k 0.002
  publish_model.py --cid bafk... --sha256 ... --size N ...   (bytes already on IPFS)

A curator then approves it with approve_model.py. Re-running with the same file reports the
existing model instead of failing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path

from chain.units import format_token
from scripts.common import UsageError, connect, parse_amount, parser, run
from storage import KuboClient, ProgressBar
from storage.cid import Cid
from storage.errors import CidError
from storage.gguf import read_header
from storage.publish import PublishedFile, publish

SHA256 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("path", nargs="?", type=Path, help="the .gguf file to add and pin to kubo")
    p.add_argument(
        "--kubo-api",
        default=os.environ.get("LLM_MESH_KUBO_API", "http://127.0.0.1:5001"),
        help="kubo RPC URL (env LLM_MESH_KUBO_API; default http://127.0.0.1:5001)",
    )
    p.add_argument("--name", required=True, help="model name, e.g. gemma-3-270m")
    p.add_argument("--cid", help="instead of PATH: IPFS CIDv1 of a file already on IPFS")
    p.add_argument("--sha256", help="with --cid: sha256 of the file, hex")
    p.add_argument("--size", type=int, help="with --cid: file size in bytes")
    p.add_argument("--quantization", default="Q4_K_M", help="quantization, e.g. Q4_K_M")
    p.add_argument("--context", type=int, required=True, help="context window in tokens")
    p.add_argument("--price-per-1k", required=True, help="price per 1K tokens, in MESH")
    p.add_argument("--specialties", default="", help="comma-separated tags, e.g. python,debugging")
    return p


def file_facts(args: argparse.Namespace) -> PublishedFile:
    """CID, sha256 and size: from kubo after adding PATH, or as given with --cid."""
    if args.path is not None:
        if args.cid or args.sha256 or args.size:
            raise UsageError("give either PATH or --cid/--sha256/--size, not both")
        # Refused before anything is pinned or proposed: a version can never be changed later.
        header = read_header(args.path)
        print(
            f"{args.path}: GGUF v{header.version}, {header.architecture or 'unknown'} architecture, "
            f"{header.tensor_count} tensors"
        )
        return asyncio.run(_publish(args.kubo_api, args.path))
    if not (args.cid and args.sha256 and args.size):
        raise UsageError("give the .gguf PATH to publish, or --cid, --sha256 and --size of a published file")
    if not SHA256.match(args.sha256):
        raise UsageError(f"--sha256 must be 64 hex characters, got {args.sha256!r}")
    try:  # a version can never be changed once proposed: refuse what is not a CID
        cid = Cid.parse(args.cid)
    except CidError as exc:
        raise UsageError(f"--cid {args.cid!r} is not an IPFS CID: {exc}") from None
    return PublishedFile(cid, args.sha256.removeprefix("0x").lower(), args.size)


async def _publish(kubo_api: str, path: Path) -> PublishedFile:
    async with KuboClient(kubo_api) as kubo:
        published = await publish(kubo, path, progress=ProgressBar(f"adding {path.name}"))
    print(f"pinned {path} as {published.cid} (sha256 {published.sha256})")
    return published


def spec_from_args(args: argparse.Namespace, facts: PublishedFile) -> tuple:
    if not 0 < facts.size < 2**64 or not 0 < args.context < 2**32:
        raise UsageError("the file size must be 1 to 2^64-1 bytes and --context 1 to 2^32-1 tokens")
    specialties = [s.strip() for s in args.specialties.split(",") if s.strip()]
    price = parse_amount(args.price_per_1k, "--price-per-1k")
    digest = bytes.fromhex(facts.sha256)
    return (
        args.name,
        str(facts.cid),
        digest,
        facts.size,
        args.quantization,
        args.context,
        price,
        specialties,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    session = connect(args)
    spec = spec_from_args(args, file_facts(args))
    existing = session.models.functions.modelIdByCid(session.w3.keccak(text=spec[1])).call()
    if existing:
        print(f"{spec[1]} is already model {existing}")
        return 0
    receipt = session.send(session.models.functions.propose(spec))
    event = session.models.events.ModelProposed().process_receipt(receipt)[0]["args"]
    print(
        f"proposed {args.name} v{event['version']} as model {event['modelId']} "
        f"at {format_token(spec[6])} per 1K tokens"
    )
    print("a curator approves it with: approve_model.py --model-id", event["modelId"])
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
