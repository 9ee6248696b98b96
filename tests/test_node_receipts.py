"""The node's payment store on a real SQLite file: group commits, lazy writes, ops that fail alone
or together. What survives kill -9 is tested against the real daemon in test_node_payments."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from chain.accounts import dev_account
from chain.receipts import Domain, SignedReceipt, UsageReceipt
from node.receipts import ReceiptStore, StoredReceipt
from protocol.payment import Item

PAYER, NODE = dev_account(4), dev_account(1)
DOMAIN = Domain(31337, "0x" + "12" * 20)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReceiptStore]:
    store = ReceiptStore(tmp_path / "payments.sqlite")
    try:
        yield store
    finally:
        store.close()


def on_disk(store: ReceiptStore, sql: str) -> list[tuple]:
    """What another connection reads: only what was committed."""
    with sqlite3.connect(store.path) as db:
        return db.execute(sql).fetchall()


def item(nonce: int) -> Item:
    return Item(nonce, 1, 8, 10**15, 8 * 10**12)


def receipt(amount: int) -> StoredReceipt:
    r = UsageReceipt(PAYER.address, NODE.address, 1, 8, amount, 2_000_000_000)
    return StoredReceipt(SignedReceipt(r, r.sign(PAYER, DOMAIN), r.sign(NODE, DOMAIN)))


def test_a_lazy_write_commits_on_its_own_without_another_write(store: ReceiptStore) -> None:
    store.submit(store.add_item(PAYER.address, 1, item(7)), lazy=True).result(timeout=10)
    assert on_disk(store, "SELECT seq, nonce FROM items") == [(1, "7")]


def test_lazy_writes_ride_with_the_next_write_in_order(store: ReceiptStore) -> None:
    bills = [store.submit(store.add_item(PAYER.address, seq, item(seq)), lazy=True) for seq in (1, 2)]
    # The receipt covers the first bill: its delete runs after that insert, in the same commit.
    stored = store.submit(store.put_receipt(receipt(8 * 10**12), covered_seq=1))
    stored.result(timeout=10)
    assert all(bill.done() and bill.exception() is None for bill in bills)
    assert on_disk(store, "SELECT seq FROM items") == [(2,)]
    assert on_disk(store, "SELECT cumulative_amount FROM receipts") == [(str(8 * 10**12),)]


def test_close_commits_what_waits_lazily(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path / "payments.sqlite")
    bill = store.submit(store.add_item(PAYER.address, 1, item(7)), lazy=True)
    store.close()
    assert bill.exception() is None
    assert on_disk(store, "SELECT seq FROM items") == [(1,)]


def test_ops_fail_alone_but_together_ops_fail_as_one(store: ReceiptStore) -> None:
    store.submit(store.add_nonce(PAYER.address, 1, 100)).result(timeout=10)
    again = store.submit(store.add_nonce(PAYER.address, 1, 100))  # a duplicate: this op fails
    other = store.submit(store.add_nonce(PAYER.address, 2, 100))  # same commit, unaffected
    both = store.submit(
        store.together([store.add_nonce(PAYER.address, 3, 100), store.add_nonce(PAYER.address, 1, 100)])
    )
    assert other.result(timeout=10) is not None
    with pytest.raises(sqlite3.IntegrityError):
        again.result(timeout=10)
    with pytest.raises(sqlite3.IntegrityError):
        both.result(timeout=10)
    assert sorted(on_disk(store, "SELECT nonce FROM nonces")) == [("1",), ("2",)]  # 3 went with 1
