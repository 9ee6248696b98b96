"""The registry fold: what the ModelRegistry and NodeRegistry hold, kept current from their events.

The node and the router both read models (id -> ModelInfo), nodes (operator -> NodeInfo) and their
reputation counters (operator -> Reputation) from a `RegistryView`. `load()` reads everything as of
one block: `modelCount` and `getModel` for every id, `operatorCount`, `operatorsPage`, `getNode`
and `reputationOf` for every operator that ever registered. After that,
`apply(event)` takes the EventWatcher's events: one that names a model id (`modelId`) or an operator
(`operator`: also SettlementRecorded and NodeSlashed, which change the counters) makes the view
read that entry again through chain.views, as of the confirmed head
(the chain's head minus `confirmations`, never below the event's block). Everything the view shows
is therefore confirmed state, and a later change always comes with an event of its own.

An event the view already reflects (at or below the block the entry, or the whole load, was read
at) changes nothing, so `apply` is idempotent and replaying a watcher's history after a restart
costs no reads. Events that name neither (roles, parameters, NameReleased) are ignored.

Reads never wait: every change builds a new immutable `RegistrySnapshot` and swaps it in, so a
reader holding one sees a consistent whole. `version` grows with every change; listeners are called
after each swap on the thread that applied it (the watcher's): they must be quick and thread-safe.
Writes are meant for one thread (the watcher's); a lock keeps concurrent writers correct anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any

from eth_utils import to_checksum_address
from web3.contract import Contract

from chain.errors import ChainError
from chain.logs import kv as _kv
from chain.views import MODEL_STATUS, model_info, node_info, reputation_of, status_name
from chain.watcher import ChainEvent

log = logging.getLogger(__name__)

MODELS = "ModelRegistry"
NODES = "NodeRegistry"
APPROVED = MODEL_STATUS.index("Approved")

Listener = Callable[["RegistrySnapshot"], None]


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registries as one consistent, immutable picture.

    `version` counts the changes since the view was made (0: not loaded); `block` is the newest
    block anything in it was read at (-1: not loaded).
    """

    version: int = 0
    block: int = -1
    models: Mapping[int, Any] = field(default_factory=lambda: MappingProxyType({}))
    nodes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    reputation: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @cached_property
    def _by_name(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for model_id in sorted(self.models):
            out.setdefault(self.models[model_id].name, []).append(model_id)
        return out

    def model(self, model_id: int) -> Any | None:
        """A model version (a chain.views.ModelInfo), None when there is no such id."""
        return self.models.get(model_id)

    def versions(self, name: str) -> list[int]:
        """Every id registered under `name`, oldest first."""
        return list(self._by_name.get(name, ()))

    def names(self) -> list[str]:
        """Every registered model name, sorted."""
        return sorted(self._by_name)

    def latest_approved(self, name: str) -> int | None:
        """The id of the newest approved version of `name`, None when none is approved."""
        approved = [i for i in self._by_name.get(name, ()) if self.models[i].status == APPROVED]
        return max(approved, key=lambda i: (self.models[i].version, i)) if approved else None

    @cached_property
    def _approved(self) -> dict[str, int]:
        out = {}
        for name in self._by_name:
            newest = self.latest_approved(name)
            if newest is not None:
                out[name] = newest
        return out

    def approved(self) -> dict[str, int]:
        """Model name -> id of its newest approved version, for every name that has one (computed
        once per snapshot: the router asks on every request)."""
        return dict(self._approved)

    def node(self, operator: str) -> Any | None:
        """A node (a chain.views.NodeInfo) by operator address, None when it never registered."""
        return _by_address(self.nodes, operator)

    def reputation_of(self, operator: str) -> Any | None:
        """A node's reputation counters (a chain.views.Reputation), None when it never registered."""
        return _by_address(self.reputation, operator)

    def registered_nodes(self) -> dict[str, Any]:
        """Operator -> NodeInfo of the nodes registered now."""
        return {operator: info for operator, info in self.nodes.items() if info.registered}

    @cached_property
    def _hosts(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for op, info in self.nodes.items():
            if info.registered:
                for model_id in dict.fromkeys(info.hosted_models):
                    out.setdefault(model_id, []).append(op)
        return out

    def hosts_of(self, model_id: int) -> list[str]:
        """The registered operators that declare `model_id` among their hosted models."""
        return list(self._hosts.get(model_id, ()))


def _by_address(table: dict[str, Any], address: str) -> Any | None:
    """`table[address]` for a table keyed by checksummed addresses. An address already spelled so
    (as every operator the snapshot hands out is) is found without checksumming it again: that
    hashes it, ~0.1 ms, and host choice asks once per candidate per request."""
    hit = table.get(address)
    return hit if hit is not None else table.get(to_checksum_address(address))


class RegistryView:
    """ModelRegistry models and NodeRegistry nodes, loaded once and kept current from events."""

    def __init__(
        self, models: Contract, nodes: Contract, *, confirmations: int = 0, page_size: int = 200
    ) -> None:
        """`confirmations`: how far behind the head entries are read (match the watcher's);
        `page_size`: operators per `operatorsPage` call in `load()`."""
        if confirmations < 0 or page_size < 1:
            raise ChainError(
                f"confirmations must be >= 0 and page_size >= 1 (got {confirmations}, {page_size})"
            )
        self._models = models
        self._nodes = nodes
        self._w3 = models.w3
        self._confirmations = confirmations
        self._page_size = page_size
        self._snapshot = RegistrySnapshot()
        self._write_lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._loaded_at = -1
        # (kind, id) -> the block that entry was last read at; events at or below it are reflected.
        self._read_at: dict[tuple[str, int | str], int] = {}

    # ---------------------------------------------------------------- reading

    def snapshot(self) -> RegistrySnapshot:
        """The current picture (never changes; call again for a newer one)."""
        return self._snapshot

    @property
    def version(self) -> int:
        """Grows by one with every change; 0 before `load()`."""
        return self._snapshot.version

    def model(self, model_id: int) -> Any | None:
        """A model version by id (see RegistrySnapshot.model)."""
        return self._snapshot.model(model_id)

    def latest_approved(self, name: str) -> int | None:
        """The newest approved version of a name (see RegistrySnapshot.latest_approved)."""
        return self._snapshot.latest_approved(name)

    def node(self, operator: str) -> Any | None:
        """A node by operator (see RegistrySnapshot.node)."""
        return self._snapshot.node(operator)

    def registered_nodes(self) -> dict[str, Any]:
        """The registered nodes (see RegistrySnapshot.registered_nodes)."""
        return self._snapshot.registered_nodes()

    def contracts(self) -> dict[str, Contract]:
        """The contracts to hand to an EventWatcher, under the names `apply` expects."""
        return {MODELS: self._models, NODES: self._nodes}

    # ---------------------------------------------------------------- listeners

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(snapshot)` after every change; returns a function that removes it."""
        with self._write_lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._write_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _notify(self, snapshot: RegistrySnapshot) -> None:
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:  # one consumer's bug must not stop the fold the others rely on
                name = getattr(listener, "__qualname__", repr(listener))
                log.exception(_kv("registry.listener_failed", listener=name))

    # ---------------------------------------------------------------- writing

    def confirmed_head(self) -> int:
        """The newest block `confirmations` deep: where entries are read."""
        return max(0, self._w3.eth.block_number - self._confirmations)

    def load(self, block: int | None = None) -> RegistrySnapshot:
        """Read every model and every operator as of `block` (default: the confirmed head) and
        replace the whole picture with it. RPC errors propagate; nothing changes then."""
        with self._write_lock:
            started = time.monotonic()
            at = self.confirmed_head() if block is None else block
            count = self._models.functions.modelCount().call(block_identifier=at)
            models = {i: model_info(self._models, i, at) for i in range(1, count + 1)}
            operators: list[str] = []
            total = self._nodes.functions.operatorCount().call(block_identifier=at)
            for start in range(0, total, self._page_size):
                page = self._nodes.functions.operatorsPage(start, self._page_size).call(block_identifier=at)
                operators.extend(to_checksum_address(op) for op in page)
            nodes = {op: node_info(self._nodes, op, at) for op in operators}
            reputation = {op: reputation_of(self._nodes, op, at) for op in operators}
            old = self._snapshot
            self._loaded_at = at
            self._read_at.clear()
            snapshot = RegistrySnapshot(
                version=old.version + 1,
                block=at,
                models=MappingProxyType(models),
                nodes=MappingProxyType(nodes),
                reputation=MappingProxyType(reputation),
            )
            self._snapshot = snapshot
        log.info(
            _kv(
                "registry.loaded",
                block=at,
                models=len(models),
                approved=sum(1 for m in models.values() if m.status == APPROVED),
                nodes=len(nodes),
                registered=sum(1 for n in nodes.values() if n.registered),
                seconds=f"{time.monotonic() - started:.2f}",
            )
        )
        self._notify(snapshot)
        return snapshot

    def reload(self, fork_block: int | None = None) -> RegistrySnapshot:
        """Read everything again (an EventWatcher `on_reorg`: what was read may have left the chain)."""
        if fork_block is not None:
            log.warning(_kv("registry.reload", reason="reorg", fork_block=fork_block))
        return self.load()

    def apply(self, event: ChainEvent) -> bool:
        """Re-read the model or node `event` names, unless the view already reflects the event's
        block; True when the picture changed. RPC errors propagate (the event may be applied again)."""
        key = _key(event)
        if key is None:
            return False
        kind, ident = key
        with self._write_lock:
            if event.block_number <= max(self._read_at.get(key, -1), self._loaded_at):
                return False
            at = max(event.block_number, self.confirmed_head())
            old = self._snapshot
            if kind == "model":
                info = model_info(self._models, ident, at)
                self._read_at[key] = at
                if old.models.get(ident) == info:
                    return False
                snapshot = replace(old, models=MappingProxyType({**old.models, ident: info}))
            else:
                info = node_info(self._nodes, ident, at)
                counters = reputation_of(self._nodes, ident, at)
                self._read_at[key] = at
                if old.nodes.get(ident) == info and old.reputation.get(ident) == counters:
                    return False
                snapshot = replace(
                    old,
                    nodes=MappingProxyType({**old.nodes, ident: info}),
                    reputation=MappingProxyType({**old.reputation, ident: counters}),
                )
            snapshot = replace(snapshot, version=old.version + 1, block=max(old.block, at))
            self._snapshot = snapshot
        if kind == "model":
            log.info(
                _kv(
                    "registry.model_updated",
                    model_id=ident,
                    name=info.name,
                    version=info.version,
                    status=status_name(info.status),
                    block=at,
                    cause=event.event,
                )
            )
        else:
            log.info(
                _kv(
                    "registry.node_updated",
                    operator=ident,
                    node_id=info.node_id or "-",
                    registered=info.registered,
                    hosted=",".join(str(i) for i in info.hosted_models) or "-",
                    tokens_served=snapshot.reputation[ident].tokens_served,
                    slashes=snapshot.reputation[ident].slash_count,
                    block=at,
                    cause=event.event,
                )
            )
        self._notify(snapshot)
        return True


def _key(event: ChainEvent) -> tuple[str, int | str] | None:
    """("model", id) or ("node", operator) for an event that names one, else None."""
    if event.contract == MODELS and "modelId" in event.args:
        return "model", int(event.args["modelId"])
    if event.contract == NODES and "operator" in event.args:
        return "node", to_checksum_address(event.args["operator"])
    return None
