"""The payer's ledgers on disk, so a restarted router knows every request it authorised and every
receipt it countersigned.

Without it, a router that stops while a request is in flight forgets that request's auth, and the
node's next receipt, which bills it, can only be refused: the node's unsigned usage then grows to
its credit limit. With it, the restarted router checks and countersigns that receipt as if it had
never stopped.

SQLite in WAL mode with synchronous=NORMAL: a commit is in the database once `execute` returns,
so it survives the router crashing or being killed (kill -9); only a crash of the whole machine
can lose the last commits (then the node's receipts carry the last countersigned one back, and a
request in flight at that moment is what may be refused). An auth is written before its request
is sent, a node's ledger after each receipt is checked; about 0.1 ms each here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from chain.receipts import RequestAuth
from protocol.payer import AuthRecord, NodeLedger, Payer
from protocol.payment import decode_item, decode_signed_receipt, encode_item, encode_signed_receipt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (node TEXT PRIMARY KEY, signed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS auths (
    node TEXT NOT NULL, nonce TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (node, nonce)
);
"""


def _encode(record: AuthRecord) -> str:
    a = record.auth
    auth = {
        "payer": a.payer,
        "node": a.node,
        **{
            k: str(getattr(a, k)) for k in ("model_id", "max_tokens", "max_price_per_1k", "nonce", "deadline")
        },
    }
    return json.dumps(
        {
            "auth": auth,
            "created": record.created,
            "streamed": record.streamed,
            "answered": record.answered,
            "ceiling": record.ceiling,
            "billed": encode_item(record.billed) if record.billed is not None else None,
            "billed_in": None if record.billed_in is None else str(record.billed_in),
        },
        separators=(",", ":"),
    )


def _decode(raw: str) -> AuthRecord:
    data: dict[str, Any] = json.loads(raw)
    a = data["auth"]
    numbers = {k: int(a[k]) for k in ("model_id", "max_tokens", "max_price_per_1k", "nonce", "deadline")}
    record = AuthRecord(RequestAuth(payer=a["payer"], node=a["node"], **numbers), float(data["created"]))
    record.streamed, record.answered, record.ceiling = data["streamed"], data["answered"], data["ceiling"]
    record.billed = decode_item(data["billed"], "ledger") if data["billed"] is not None else None
    record.billed_in = None if data["billed_in"] is None else int(data["billed_in"])
    return record


class LedgerStore:
    """One payer's ledgers in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def load_into(self, payer: Payer) -> int:
        """Restore every node's ledger into `payer`; how many nodes it had."""
        with self._lock:
            receipts = self._db.execute("SELECT node, signed FROM receipts").fetchall()
            auths = self._db.execute("SELECT node, record FROM auths").fetchall()
        for node, signed in receipts:
            payer.ledger(node).last = decode_signed_receipt(signed, "ledger")
        for node, raw in auths:
            record = _decode(raw)
            payer.ledger(node).auths[record.auth.nonce] = record
        return len({node for node, _ in receipts} | {node for node, _ in auths})

    def save_auth(self, node: str, record: AuthRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO auths (node, nonce, record) VALUES (?, ?, ?)",
                (node, str(record.auth.nonce), _encode(record)),
            )

    def save_ledger(self, ledger: NodeLedger) -> None:
        """A node's whole ledger (its newest countersigned receipt and its open auths), in one
        transaction: auths the payer has pruned leave the file too."""
        rows = [(ledger.node, str(nonce), _encode(r)) for nonce, r in ledger.auths.items()]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("DELETE FROM auths WHERE node = ?", (ledger.node,))
                self._db.executemany("INSERT INTO auths (node, nonce, record) VALUES (?, ?, ?)", rows)
                if ledger.last is not None:
                    signed = json.dumps(encode_signed_receipt(ledger.last), separators=(",", ":"))
                    self._db.execute(
                        "INSERT OR REPLACE INTO receipts (node, signed) VALUES (?, ?)", (ledger.node, signed)
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
