"""Model files and IPFS: kubo RPC client, kubo-identical CIDs, verified fetch, cache.

The HTTP gateway routes are in storage.gateway, imported on their own: nothing here needs FastAPI.
"""

from storage.blocks import BlockSource, GatewayBlocks, KuboBlocks, plan_file
from storage.blockstore import BlockStore, FileBlockStore
from storage.cache import CacheEntry, ModelCache
from storage.cid import Cid
from storage.daemon import KuboDaemon, find_ipfs
from storage.errors import (
    CacheFullError,
    CidError,
    DagError,
    GatewayError,
    IntegrityError,
    KuboError,
    KuboUnavailableError,
    StorageError,
)
from storage.fetch import Fetched, FetchInProgressError, fetch_file, verify_file
from storage.kubo import KuboClient
from storage.progress import ProgressBar
from storage.publish import PublishedFile, publish
from storage.unixfs import CHUNK_SIZE, FileDag, FileHashes, hash_bytes, hash_file

__all__ = [
    "CHUNK_SIZE",
    "BlockSource",
    "BlockStore",
    "CacheEntry",
    "CacheFullError",
    "Cid",
    "CidError",
    "DagError",
    "FetchInProgressError",
    "Fetched",
    "FileBlockStore",
    "FileDag",
    "FileHashes",
    "GatewayBlocks",
    "GatewayError",
    "IntegrityError",
    "KuboBlocks",
    "KuboClient",
    "KuboDaemon",
    "KuboError",
    "KuboUnavailableError",
    "ModelCache",
    "ProgressBar",
    "PublishedFile",
    "StorageError",
    "fetch_file",
    "find_ipfs",
    "hash_bytes",
    "hash_file",
    "plan_file",
    "publish",
    "verify_file",
]
