"""A second OS process for the cache tests: a ModelCache on a shared directory that fetches or holds a
model while the test's own cache works on the same directory.

    python -m tests.storage_cache_worker fetch ROOT MAX_BYTES API_URL CID SHA256 [--pause-after N]
        [--min-free BYTES]
    python -m tests.storage_cache_worker hold ROOT MAX_BYTES CID

It speaks line by line: `paused` on stdout when a fetch stopped after N leaves (a line on stdin lets
it go on), `held` once a model is acquired (it is released when stdin closes), `done` at the end.
Cache log lines go to stderr, so the test can see `event=cache_fetch_waiting`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from storage.blocks import KuboBlocks
from storage.cache import ModelCache
from storage.kubo import KuboClient
from tests.storage_fixtures import AfterLeaves


async def _pause() -> None:
    """Tell the test the fetch is in flight, and wait until it lets the fetch go on."""
    print("paused", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def _fetch(args: argparse.Namespace) -> None:
    extra = {} if args.min_free is None else {"min_free_bytes": args.min_free}
    cache = ModelCache(args.root, args.max_bytes, **extra)
    async with KuboClient(args.api) as kubo:
        source = KuboBlocks(kubo) if args.pause_after is None else AfterLeaves(kubo, args.pause_after, _pause)
        await cache.fetch(source, args.cid, args.sha256)
    print("done", flush=True)


def _hold(args: argparse.Namespace) -> None:
    cache = ModelCache(args.root, args.max_bytes)
    with cache.use(args.cid):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin
    print("done", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch")
    fetch.add_argument("root")
    fetch.add_argument("max_bytes", type=int)
    fetch.add_argument("api")
    fetch.add_argument("cid")
    fetch.add_argument("sha256")
    fetch.add_argument("--pause-after", type=int)
    fetch.add_argument("--min-free", type=int)
    hold = sub.add_parser("hold")
    hold.add_argument("root")
    hold.add_argument("max_bytes", type=int)
    hold.add_argument("cid")
    args = parser.parse_args()
    if args.command == "fetch":
        asyncio.run(_fetch(args))
    else:
        _hold(args)


if __name__ == "__main__":
    main()
