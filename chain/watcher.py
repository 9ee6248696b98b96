"""Follow the events of our contracts: confirmations, batched getLogs, durable resume, reorgs.

`EventWatcher.poll()` reads the logs of all watched contracts from the block after the last
processed one up to `head - confirmations`, one `eth_getLogs` per batch of blocks, decodes them
with the contracts' ABIs and returns them in chain order. After each batch it persists, atomically
(write a temporary file, fsync, rename), the last processed block and the hashes of the most
recent `history` processed blocks. Before reading forward it checks that the last processed block
is still on the chain; if not, it walks back through the stored hashes to the fork point, calls
`on_reorg(fork_block)` and replays the new branch.

Delivery is at least once: `run()` hands a batch's events to the handler *before* that batch is
persisted, so a crash re-delivers at most the last batch and never skips one. Handlers (and
`on_reorg`) must therefore be idempotent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi.exceptions import DecodingError
from eth_utils import event_abi_to_log_topic, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractEvent
from web3.exceptions import (
    BadResponseFormat,
    BlockNotFound,
    ProviderConnectionError,
    TimeExhausted,
    TooManyRequests,
    Web3Exception,
    Web3RPCError,
)

from chain.errors import ChainError, redact

log = logging.getLogger(__name__)

STATE_VERSION = 1
# What a flaky or restarting RPC endpoint raises. OSError covers the HTTP client's connection
# errors and timeouts (requests' exceptions derive from it), a refused socket, and a state file
# that could not be written (a full disk): all worth retrying rather than ending the loop.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    Web3RPCError,
    ProviderConnectionError,
    TimeExhausted,
    TooManyRequests,
    BadResponseFormat,
)
_FIX_STATE = "delete it to rescan from start_block, or point state_path elsewhere"


@dataclass(frozen=True)
class ChainEvent:
    """One decoded contract event, positioned on the chain."""

    contract: str
    event: str
    args: dict[str, Any]
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class _State:
    """What the watcher persists: where it is, on which chain, for which contracts."""

    chain_id: int | None
    addresses: tuple[str, ...]
    last_processed: int
    hashes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Batch:
    """The decoded events of a block range and the hashes to remember from it."""

    events: list[ChainEvent]
    hashes: dict[int, str]


class _ChainMovedError(Exception):
    """The chain reorganised while a batch was being read; the next poll handles it."""


class _HandlerFailedError(Exception):
    """Carries a handler's exception out of poll() past the RPC retry logic."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def _kv(event: str, **fields: Any) -> str:
    """A structured log line: `event=name key=value ...`, values with spaces JSON-quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _plain(value: Any) -> Any:
    """web3's AttributeDicts (also nested in structs and arrays) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _noop_reorg(fork_block: int) -> None:
    """Default on_reorg: nothing derived from the chain to undo."""


class EventWatcher:
    """Deliver the events of a set of contracts once confirmed, surviving restarts and reorgs."""

    def __init__(
        self,
        w3: Web3,
        contracts: dict[str, Contract],
        state_path: Path,
        *,
        start_block: int = 0,
        confirmations: int = 2,
        batch_size: int = 2_000,
        poll_interval: float = 1.0,
        max_backoff: float = 30.0,
        history: int = 128,
        initial_backoff: float = 1.0,
        on_reorg: Callable[[int], None] = _noop_reorg,
    ) -> None:
        """Load the persisted state (or start at `start_block`) and check it fits this chain.

        `on_reorg(fork_block)` is called when blocks above `fork_block` that were already delivered
        left the chain; it must undo what was derived from them and be idempotent (a crash right
        after it runs makes the watcher call it again). The chain id is checked here when the RPC
        answers, else on the first poll.
        """
        _check_limits(start_block, confirmations, batch_size, poll_interval, max_backoff, history)
        self._w3 = w3
        self._state_path = Path(state_path)
        self._confirmations = confirmations
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._initial_backoff = max(initial_backoff, 0.001)
        self._max_backoff = max_backoff
        self._history = history
        self._on_reorg = on_reorg
        self._decoders = _build_decoders(contracts)
        self._addresses = tuple(sorted({address for address, _ in self._decoders}))
        self._state = self._load_state(start_block)
        self._chain_checked = False
        try:
            self._check_chain_id()
        except RETRYABLE_ERRORS as exc:
            detail = redact(str(exc))
            log.warning(_kv("watcher.chain_check_deferred", error=type(exc).__name__, detail=detail))

    @property
    def last_processed(self) -> int:
        """The last block whose events were delivered and persisted (start_block - 1 at first)."""
        return self._state.last_processed

    @property
    def state_path(self) -> Path:
        """Where the progress is persisted."""
        return self._state_path

    # ---------------------------------------------------------------- the step

    def poll(self, handler: Callable[[ChainEvent], None] | None = None) -> list[ChainEvent]:
        """Handle a reorg if one happened, then read every confirmed block not yet processed.

        Returns the new events in chain order. With `handler`, each event is also handed to it
        before its batch is persisted (at-least-once delivery); without one, the batches are
        persisted as they are read, so events the caller has not acted on when it crashes are lost.
        RPC errors propagate (`RETRYABLE_ERRORS`); progress made before them is kept.
        """
        delivered: list[ChainEvent] = []

        def collect(event: ChainEvent) -> None:
            if handler is not None:
                handler(event)
            delivered.append(event)

        self._poll(collect, None)
        return delivered

    def _poll(self, handler: Callable[[ChainEvent], None], stop: threading.Event | None) -> None:
        """One step: reorg check, then each confirmed batch read, handed over and persisted."""
        self._check_chain_id()
        head = self._w3.eth.block_number
        self._handle_reorg()
        target = head - self._confirmations
        while self._state.last_processed < target and not (stop and stop.is_set()):
            first = self._state.last_processed + 1
            last = min(target, first + self._batch_size - 1)
            try:
                batch = self._read_batch(first, last, target)
            except _ChainMovedError as exc:
                log.info(_kv("watcher.chain_moved", from_block=first, to_block=last, detail=redact(str(exc))))
                return
            for event in batch.events:
                handler(event)
            self._advance(last, batch.hashes)
            log.debug(_kv("watcher.batch", from_block=first, to_block=last, events=len(batch.events)))

    # ---------------------------------------------------------------- the loop

    def run(self, handler: Callable[[ChainEvent], None], stop: threading.Event) -> None:
        """Poll until `stop` is set, handing each event to `handler` in chain order.

        RPC and connection errors are logged and retried with exponential backoff (from
        `initial_backoff` up to `max_backoff`); they never end the loop. A handler exception is
        logged and re-raised, ending the loop: skipping the event would silently lose state
        (an escrow unlock, a settled receipt), and retrying it forever would hide the bug. The
        failed event's batch is not persisted, so a restarted watcher delivers it again.
        """
        failures = 0
        guarded = _guard(handler)
        while not stop.is_set():
            try:
                self._poll(guarded, stop)
            except _HandlerFailedError as exc:
                raise exc.original from None
            except RETRYABLE_ERRORS as exc:
                failures += 1
                delay = self._backoff(failures)
                log.warning(
                    _kv(
                        "watcher.rpc_error",
                        error=type(exc).__name__,
                        detail=redact(str(exc))[:300],
                        attempt=failures,
                        retry_in=f"{delay:.2f}",
                    )
                )
                stop.wait(delay)
                continue
            if failures:
                log.info(_kv("watcher.recovered", attempts=failures, block=self.last_processed))
                failures = 0
            stop.wait(self._poll_interval)

    def _backoff(self, failures: int) -> float:
        """Seconds to wait after the given number of consecutive failures."""
        return min(self._max_backoff, self._initial_backoff * 2 ** min(failures - 1, 32))

    # ---------------------------------------------------------------- reading

    def _read_batch(self, first: int, last: int, target: int) -> _Batch:
        """Events of blocks first..last, checked to come from one chain that extends ours."""
        hash_before = self._block_hash(last)
        logs = self._w3.eth.get_logs({"fromBlock": first, "toBlock": last, "address": list(self._addresses)})
        # Only blocks that can still be among the newest `history` need a hash; `last` always does.
        hashes = self._linked_hashes(min(max(first, target - self._history + 1), last), last)
        if hashes[last] != hash_before:
            raise _ChainMovedError(f"block {last} changed from {hash_before} to {hashes[last]}")
        events = self._decode_all(logs)
        for event in events:
            known = hashes.get(event.block_number)
            if known is not None and known != event.block_hash:
                raise _ChainMovedError(f"log of block {event.block_number} is from {event.block_hash}")
        return _Batch(events=events, hashes=hashes)

    def _linked_hashes(self, first: int, last: int) -> dict[int, str]:
        """Hashes of blocks first..last, checked to form a chain on top of the stored hashes."""
        hashes: dict[int, str] = {}
        parent = self._state.hashes.get(first - 1)
        for number in range(first, last + 1):
            block = self._w3.eth.get_block(number)
            if parent is not None and Web3.to_hex(block["parentHash"]) != parent:
                raise _ChainMovedError(f"block {number} no longer extends {parent}")
            parent = hashes[number] = Web3.to_hex(block["hash"])
        return hashes

    def _block_hash(self, number: int) -> str | None:
        """The chain's hash of a block, None when the chain has no such block (any more)."""
        try:
            return Web3.to_hex(self._w3.eth.get_block(number)["hash"])
        except BlockNotFound:
            return None

    def _decode_all(self, logs: Iterable[Any]) -> list[ChainEvent]:
        ordered = sorted(logs, key=lambda entry: (entry["blockNumber"], entry["logIndex"]))
        return [event for entry in ordered if (event := self._decode(entry)) is not None]

    def _decode(self, entry: Any) -> ChainEvent | None:
        """Decode one log by (address, topic0); None for an event our ABIs do not know."""
        address = to_checksum_address(entry["address"])
        topic0 = Web3.to_hex(entry["topics"][0]) if entry["topics"] else None
        decoder = self._decoders.get((address, topic0))
        if decoder is None:
            log.debug(
                _kv(
                    "watcher.unknown_log",
                    address=address,
                    topic0=topic0,
                    block=entry["blockNumber"],
                    log_index=entry["logIndex"],
                )
            )
            return None
        name, event = decoder
        try:
            data = event.process_log(entry)
        except (Web3Exception, DecodingError) as exc:
            raise ChainError(
                f"cannot decode {name}.{event.event_name} at block {entry['blockNumber']} log "
                f"{entry['logIndex']} ({exc}): does the ABI match the deployed contract "
                "(make contracts, redeploy)?"
            ) from exc
        return ChainEvent(
            contract=name,
            event=data["event"],
            args=_plain(data["args"]),
            block_number=data["blockNumber"],
            block_hash=Web3.to_hex(data["blockHash"]),
            tx_hash=Web3.to_hex(data["transactionHash"]),
            log_index=data["logIndex"],
        )

    # ---------------------------------------------------------------- reorgs

    def _handle_reorg(self) -> None:
        """If the last processed block left the chain, rewind to the fork point."""
        last = self._state.last_processed
        stored = self._state.hashes.get(last)
        if stored is None or self._block_hash(last) == stored:
            return
        fork = self._find_fork(last)
        self._on_reorg(fork)
        self._save(
            _State(
                self._state.chain_id,
                self._addresses,
                fork,
                {n: h for n, h in self._state.hashes.items() if n <= fork},
            )
        )

    def _find_fork(self, last: int) -> int:
        """The newest stored block still on the chain, or (oldest stored - 1) when none is."""
        for number in sorted(self._state.hashes, reverse=True):
            if number != last and self._block_hash(number) == self._state.hashes[number]:
                log.warning(_kv("watcher.reorg", fork_block=number, depth=last - number))
                return number
        fork = min(self._state.hashes) - 1
        log.warning(
            _kv(
                "watcher.deep_reorg",
                fork_block=fork,
                last_processed=last,
                history=self._history,
                detail="no remembered block is on the chain; replaying from before the oldest",
            )
        )
        return fork

    # ---------------------------------------------------------------- state

    def _advance(self, last: int, hashes: dict[int, str]) -> None:
        """Record that blocks up to `last` are processed, keeping the newest `history` hashes."""
        merged = {**self._state.hashes, **hashes}
        keep = {n: h for n, h in merged.items() if n > last - self._history}
        self._save(_State(self._state.chain_id, self._addresses, last, keep))

    def _save(self, state: _State) -> None:
        """Persist atomically, then adopt: memory never runs ahead of the file."""
        document = {
            "version": STATE_VERSION,
            "chain_id": state.chain_id,
            "addresses": list(state.addresses),
            "last_processed": state.last_processed,
            "block_hashes": {str(n): h for n, h in sorted(state.hashes.items())},
        }
        _atomic_write(self._state_path, json.dumps(document, indent=1))
        self._state = state

    def _load_state(self, start_block: int) -> _State:
        """The persisted state, or a fresh one at start_block; refuses another contract set."""
        if not self._state_path.exists():
            return _State(None, self._addresses, start_block - 1)
        state = _parse_state(self._state_path)
        if set(state.addresses) != set(self._addresses):
            raise ChainError(
                f"watcher state {self._state_path} was written for contracts "
                f"{', '.join(state.addresses)}, not {', '.join(self._addresses)}: {_FIX_STATE}"
            )
        log.info(_kv("watcher.resumed", path=self._state_path, last_processed=state.last_processed))
        return state

    def _check_chain_id(self) -> None:
        """Refuse a state file from another chain; adopt the chain id of a fresh state."""
        if self._chain_checked:
            return
        chain_id = self._w3.eth.chain_id
        if self._state.chain_id is None:
            self._state = _State(
                chain_id, self._state.addresses, self._state.last_processed, self._state.hashes
            )
        elif self._state.chain_id != chain_id:
            raise ChainError(
                f"watcher state {self._state_path} was written for chain id {self._state.chain_id}, "
                f"but the RPC serves chain id {chain_id}: {_FIX_STATE}"
            )
        self._chain_checked = True


def _check_limits(
    start_block: int,
    confirmations: int,
    batch_size: int,
    poll_interval: float,
    max_backoff: float,
    history: int,
) -> None:
    problems = [
        f"{name} must be {rule} (got {value})"
        for name, value, ok, rule in (
            ("start_block", start_block, start_block >= 0, ">= 0"),
            ("confirmations", confirmations, confirmations >= 0, ">= 0"),
            ("batch_size", batch_size, batch_size >= 1, ">= 1"),
            ("poll_interval", poll_interval, poll_interval >= 0, ">= 0"),
            ("max_backoff", max_backoff, max_backoff > 0, "> 0"),
            ("history", history, history >= 1, ">= 1"),
        )
        if not ok
    ]
    if problems:
        raise ChainError("invalid watcher settings: " + "; ".join(problems))


def _build_decoders(contracts: dict[str, Contract]) -> dict[tuple[str, str], tuple[str, ContractEvent]]:
    """(checksum address, topic0 hex) -> (contract name, web3 event) for every ABI event."""
    if not contracts:
        raise ChainError("EventWatcher needs at least one contract to watch")
    decoders: dict[tuple[str, str], tuple[str, ContractEvent]] = {}
    seen: dict[str, str] = {}
    for name, contract in contracts.items():
        if contract.address is None:
            raise ChainError(f"contract {name} has no address: build it with w3.eth.contract(address=...)")
        address = to_checksum_address(contract.address)
        if address in seen:
            raise ChainError(f"contracts {seen[address]} and {name} share the address {address}")
        seen[address] = name
        for entry in contract.abi:
            if entry.get("type") == "event" and not entry.get("anonymous"):
                topic = Web3.to_hex(event_abi_to_log_topic(entry))
                decoders[(address, topic)] = (name, contract.get_event_by_topic(topic))
    return decoders


def _guard(handler: Callable[[ChainEvent], None]) -> Callable[[ChainEvent], None]:
    """The handler, with its failures logged and wrapped so they are never retried as RPC errors."""

    def guarded(event: ChainEvent) -> None:
        try:
            handler(event)
        except Exception as exc:
            log.exception(
                _kv(
                    "watcher.handler_failed",
                    contract=event.contract,
                    name=event.event,
                    block=event.block_number,
                    log_index=event.log_index,
                    tx=event.tx_hash,
                    error=type(exc).__name__,
                )
            )
            raise _HandlerFailedError(exc) from exc

    return guarded


def _parse_state(path: Path) -> _State:
    """Read a state file, with an actionable error for anything that is not one."""
    try:
        document = json.loads(path.read_bytes())
        if document.get("version") != STATE_VERSION:
            raise ValueError(f"version {document.get('version')!r}, expected {STATE_VERSION}")
        chain_id, addresses = document["chain_id"], document["addresses"]
        last, hashes = document["last_processed"], document["block_hashes"]
        if not isinstance(chain_id, int) or not isinstance(last, int) or last < -1:
            raise ValueError("chain_id and last_processed must be integers")
        if not isinstance(addresses, list) or not isinstance(hashes, dict):
            raise ValueError("addresses must be a list and block_hashes an object")
        return _State(
            chain_id=chain_id,
            addresses=tuple(to_checksum_address(a) for a in addresses),
            last_processed=last,
            hashes={int(n): str(h) for n, h in hashes.items()},
        )
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise ChainError(f"watcher state {path} is unreadable ({exc}): {_FIX_STATE}") from exc


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
