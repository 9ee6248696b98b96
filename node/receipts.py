"""The node's payment store: seen nonces, billed requests, countersigned receipts, settle attempts.

SQLite in WAL mode with synchronous=FULL: a commit returns only after the log is on disk, so what
the node acknowledged survives kill -9 and power loss. Writes go through one writer thread that
commits everything queued at that moment as one transaction (group commit: one fsync for many
requests under load); callers await their write's future. A write submitted `lazy` (a request's
bill: nothing the node acknowledged depends on it) waits for the next commit, or at most
`LAZY_S`: on a paid node nearly every bill rides with the next request's nonce, whose receipt
usually covers it, so a paid request costs one fsync, not two (on a virtual disk an fsync also
stalls the CPU, so the second one slowed every request on the machine). Reads happen once, at start (`load`):
the payment code keeps the live state in memory and writes through.

Tables: `nonces` (payer, nonce, deadline: pruned once the deadline passed, since an expired auth is
refused anyway), `items` (requests billed and not yet covered by a countersigned receipt, in order),
`receipts` (the best countersigned receipt per payer and its settlement state), `attempts` (a settle
transaction about to be sent, so a restart knows one may be in flight).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chain.eip712 import Signature
from chain.receipts import SignedReceipt, UsageReceipt
from protocol.payment import Item

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (payer TEXT, nonce TEXT, deadline INTEGER, PRIMARY KEY (payer, nonce));
CREATE TABLE IF NOT EXISTS items (
    payer TEXT, seq INTEGER, nonce TEXT, model_id INTEGER, tokens INTEGER, price TEXT, amount TEXT,
    PRIMARY KEY (payer, seq));
CREATE TABLE IF NOT EXISTS receipts (
    payer TEXT PRIMARY KEY, node TEXT, model_id INTEGER, cumulative_tokens TEXT, cumulative_amount TEXT,
    expiry INTEGER, payer_sig BLOB, node_sig BLOB, state TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS attempts (id INTEGER PRIMARY KEY, payers TEXT, account_nonce INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

# Receipt states: "open" (to settle), "settled" (the chain paid it all), "dropped" (it can never pay).
OPEN, SETTLED, DROPPED = "open", "settled", "dropped"


@dataclass
class StoredReceipt:
    signed: SignedReceipt
    state: str = OPEN
    detail: str = ""


@dataclass
class Loaded:
    """Everything the store holds, read at start."""

    nonces: dict[str, dict[int, int]]  # payer -> nonce -> deadline
    items: dict[str, list[tuple[int, Item]]]  # payer -> (seq, item), oldest first
    receipts: dict[str, StoredReceipt]
    attempts: list[tuple[int, list[str], int]]  # (id, payers, account nonce)


_Op = Callable[[sqlite3.Connection], Any]
_Entry = tuple[_Op, "Future[Any]", bool]  # (op, its future, lazy)
LAZY_S = 0.5  # a lazy write is committed at most this long after it was submitted


class ReceiptStore:
    """The SQLite file and its writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        self._db.executescript(_SCHEMA)
        self._queue: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="receipt-store", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    # ---------------------------------------------------------------- reading (at start)

    def load(self) -> Loaded:
        db = self._db
        nonces: dict[str, dict[int, int]] = {}
        for payer, nonce, deadline in db.execute("SELECT payer, nonce, deadline FROM nonces"):
            nonces.setdefault(payer, {})[int(nonce)] = deadline
        items: dict[str, list[tuple[int, Item]]] = {}
        rows = db.execute(
            "SELECT payer, seq, nonce, model_id, tokens, price, amount FROM items ORDER BY payer, seq"
        )
        for payer, seq, nonce, model_id, tokens, price, amount in rows:
            items.setdefault(payer, []).append(
                (seq, Item(int(nonce), model_id, tokens, int(price), int(amount)))
            )
        receipts = {}
        for row in db.execute("SELECT * FROM receipts"):
            payer, node, model_id, tokens, amount, expiry, payer_sig, node_sig, state, detail = row
            receipt = UsageReceipt(payer, node, model_id, int(tokens), int(amount), expiry)
            signed = SignedReceipt(receipt, Signature.from_bytes(payer_sig), Signature.from_bytes(node_sig))
            receipts[payer] = StoredReceipt(signed, state, detail)
        attempts = [
            (i, json.loads(p), n) for i, p, n in db.execute("SELECT id, payers, account_nonce FROM attempts")
        ]
        return Loaded(nonces, items, receipts, attempts)

    def bind_node(self, node: str) -> None:
        """Tie the file to one node account: a store written for another account is refused."""
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key = 'node'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('node', ?)", (node,))
        elif row[0] != node:
            raise ValueError(
                f"the payment store {self.path} belongs to node account {row[0]}, not {node}: point "
                "the node at its own data directory (or move the file away if that account is retired)"
            )

    # ---------------------------------------------------------------- writing

    def submit(self, op: _Op, *, lazy: bool = False) -> Future[Any]:
        """Queue `op(connection)` for the next group commit (a lazy one: for the next commit, or
        within LAZY_S); the future resolves once it is durable. Ops commit in submission order."""
        future: Future[Any] = Future()
        self._queue.put((op, future, lazy))
        return future

    async def write(self, op: _Op) -> Any:
        return await asyncio.wrap_future(self.submit(op))

    @staticmethod
    def together(ops: list[_Op]) -> _Op:
        """Several ops as one: they commit, or fail, together."""
        return lambda db: [op(db) for op in ops]

    @staticmethod
    def add_nonce(payer: str, nonce: int, deadline: int) -> _Op:
        return lambda db: db.execute("INSERT INTO nonces VALUES (?, ?, ?)", (payer, str(nonce), deadline))

    @staticmethod
    def prune_nonces(before: int) -> _Op:
        return lambda db: db.execute("DELETE FROM nonces WHERE deadline < ?", (before,))

    @staticmethod
    def add_item(payer: str, seq: int, item: Item) -> _Op:
        row = (
            payer,
            seq,
            str(item.nonce),
            item.model_id,
            item.tokens,
            str(item.price_per_1k),
            str(item.amount),
        )
        return lambda db: db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    @staticmethod
    def put_receipt(stored: StoredReceipt, covered_seq: int | None) -> _Op:
        """Store the best receipt of its payer and drop the items it covers (seq <= covered_seq)."""
        s = stored.signed
        r = s.receipt
        row = (
            r.payer,
            r.node,
            r.model_id,
            str(r.cumulative_tokens),
            str(r.cumulative_amount),
            r.expiry,
            s.payer_sig.to_bytes(),
            s.node_sig.to_bytes(),
            stored.state,
            stored.detail,
        )

        def op(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            if covered_seq is not None:
                db.execute("DELETE FROM items WHERE payer = ? AND seq <= ?", (r.payer, covered_seq))

        return op

    @staticmethod
    def set_state(payer: str, state: str, detail: str) -> _Op:
        return lambda db: db.execute(
            "UPDATE receipts SET state = ?, detail = ? WHERE payer = ?", (state, detail, payer)
        )

    @staticmethod
    def add_attempt(payers: list[str], account_nonce: int) -> _Op:
        return lambda db: (
            db.execute(
                "INSERT INTO attempts (payers, account_nonce) VALUES (?, ?)",
                (json.dumps(payers), account_nonce),
            ).lastrowid
        )

    @staticmethod
    def end_attempt(attempt_id: int) -> _Op:
        return lambda db: db.execute("DELETE FROM attempts WHERE id = ?", (attempt_id,))

    def _write_loop(self) -> None:
        batch: list[_Entry] = []
        due = 0.0  # when the lazy writes waiting in `batch` must be committed
        while True:
            try:
                entry = self._queue.get(timeout=max(0.0, due - time.monotonic()) if batch else None)
            except queue.Empty:  # the lazy writes waited long enough
                self._commit(self._db, batch)
                batch = []
                continue
            closing = entry is None
            if entry is not None:
                if not batch:
                    due = time.monotonic() + LAZY_S
                batch.append(entry)
                closing = self._drain(batch)
            if batch and (closing or not all(lazy for _, _, lazy in batch)):
                self._commit(self._db, batch)
                batch = []
            if closing:
                return

    def _drain(self, batch: list[_Entry]) -> bool:
        """Everything queued meanwhile joins this transaction; True when close() came."""
        while True:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return False
            if more is None:
                return True
            batch.append(more)

    def _commit(self, db: sqlite3.Connection, batch: list[_Entry]) -> None:
        results: list[tuple[Future[Any], Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for op, future, _ in batch:
                try:
                    db.execute("SAVEPOINT one")
                    results.append((future, op(db)))
                    db.execute("RELEASE one")
                except sqlite3.Error as exc:  # this op only (a duplicate nonce, ...): the rest commit
                    db.execute("ROLLBACK TO one")
                    db.execute("RELEASE one")
                    results.append((future, exc))
            db.execute("COMMIT")
        except sqlite3.Error as exc:  # the disk: nothing in the batch is durable
            log.error("event=store_commit_failed error=%r", exc)
            if db.in_transaction:
                db.execute("ROLLBACK")
            for _, future, _ in batch:
                future.set_exception(exc)
            return
        for future, result in results:
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._db.close()
