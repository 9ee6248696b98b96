"""Follow the events of our contracts: confirmations, batched getLogs, durable resume, reorgs.

`EventWatcher.poll()` reads the logs of all watched contracts from the block after the last
processed one up to `head - confirmations`, one `eth_getLogs` per batch of blocks, decodes them
with the contracts' ABIs and returns them in chain order. After each batch it persists, atomically
(write a temporary file, fsync, rename), the last processed block and the hashes of the most
recent `history` processed blocks. Before reading forward it checks that the last processed block
is still on the chain; if not, it walks back through the stored hashes to the fork point, calls
`on_reorg(fork_block)` and replays the new branch. A fork older than every stored hash, a chain
reset (another genesis block) or another chain id behind the same RPC URL stop the watcher with a
ChainError instead: it cannot tell what to replay, and guessing would skip or mix events.

Hosted providers cap `eth_getLogs` (block range, result count) and some truncate answers without
saying so: a capped or suspiciously full answer (`max_logs_per_query`) is never trusted; the range is
halved and read again, and grows back after successes. A lagging backend that answers `null` for a
block we were told exists is asked again (bounded, with backoff) rather than taken for a reorg.

Delivery is at least once: `run()` hands a batch's events to the handler *before* that batch is
persisted, so a crash re-delivers at most the last batch and never skips one. Handlers (and
`on_reorg`) must therefore be idempotent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
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
from web3.types import BlockData

from chain.errors import ChainError, WrongNetwork
from chain.files import write_atomic
from chain.logs import kv as _kv
from chain.redact import redact

log = logging.getLogger(__name__)

STATE_VERSION = 1
_FIX_STATE = "delete it to rescan from start_block, or point state_path elsewhere"


class BlockUnavailableError(ChainError):
    """A block at or below the chain head stayed `null` after the bounded retries (a lagging backend).

    Retryable (in `RETRYABLE_ERRORS`): `run()` backs off and polls again; nothing is rewound.
    """

    def __init__(self, number: int, head: int, attempts: int) -> None:
        super().__init__(
            f"the RPC reports head {head} but answered null for block {number} {attempts} times: "
            "a lagging or inconsistent backend; retrying later"
        )
        self.number = number
        self.head = head
        self.attempts = attempts


class LogQueryUnsplittable(ChainError):  # noqa: N818 - named for what the operator has to change
    """Even a single block's `eth_getLogs` is refused or reaches the result bound; nothing was delivered.

    `reason` is "provider_cap" (the RPC refused, `detail` quotes its error) or "result_bound" (the
    answer held `limit` = max_logs_per_query logs, so it may be truncated).
    """

    def __init__(self, block: int, reason: str, limit: int | None, detail: str) -> None:
        if reason == "result_bound":
            fix = (
                f"raise max_logs_per_query above {limit} if the RPC provider returns more logs per "
                "query than that, or use a provider that does"
            )
        else:
            fix = "use an RPC provider (or plan) whose eth_getLogs limits allow one block's logs"
        super().__init__(f"eth_getLogs for block {block} cannot be read completely ({detail}): {fix}")
        self.block = block
        self.reason = reason
        self.limit = limit
        self.detail = detail


class ChainIdentityError(WrongNetwork):
    """The RPC serves another chain (chain id or genesis block) than the one the state was written for."""

    def __init__(
        self,
        state_path: Path,
        expected_chain_id: int,
        actual_chain_id: int,
        expected_genesis: str | None,
        actual_genesis: str | None,
    ) -> None:
        if expected_chain_id != actual_chain_id:
            what = f"chain id {expected_chain_id}, but the RPC serves chain id {actual_chain_id}"
        else:
            what = (
                f"the chain whose genesis block is {expected_genesis}, but the RPC serves chain id "
                f"{actual_chain_id} with genesis block {actual_genesis} (the chain was reset or "
                "replaced)"
            )
        super().__init__(
            f"watcher state {state_path} was written for {what}: check the RPC URL; to follow this "
            f"chain instead, {_FIX_STATE} (and rebuild what was derived from the old chain's events)"
        )
        self.state_path = state_path
        self.expected_chain_id = expected_chain_id
        self.actual_chain_id = actual_chain_id
        self.expected_genesis = expected_genesis
        self.actual_genesis = actual_genesis


class ReorgTooDeepError(ChainError):
    """No stored block hash is on the chain any more: the fork point, and so what to replay, is unknown."""

    def __init__(self, state_path: Path, last_processed: int, oldest_known: int, history: int) -> None:
        super().__init__(
            f"none of the blocks {oldest_known}..{last_processed} remembered in {state_path} is on "
            f"the chain any more: it reorganised deeper than history={history} blocks, or was reset "
            "with the same chain id and genesis. Delete the state file to resync from the deployment "
            "block (start_block) and rebuild what was derived from the events; raise history (and "
            "confirmations) if reorgs this deep are expected"
        )
        self.state_path = state_path
        self.last_processed = last_processed
        self.oldest_known = oldest_known
        self.history = history


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
    BlockUnavailableError,
)
# How hosted providers and clients (geth, erigon, reth, Infura, Alchemy, QuickNode, Ankr, ...) word
# an eth_getLogs refusal for too wide a block range or too many results. Searched in the JSON-RPC
# error's `message` and `data` fields only: the text of the whole exception quotes URLs and requests.
_LOG_CAP_PATTERN = re.compile(
    r"block range|blocks range|range (?:is )?too (?:large|wide|big)|range limit"
    r"|max(?:imum)? (?:block )?range|limited to [\d,_]+ ?(?:blocks?|range)"
    r"|more than [\d,_]+ (?:results|logs)|too many (?:results|logs)|max(?:imum)? (?:results|logs)"
    r"|response size|results? (?:limit|cap)",
    re.IGNORECASE,
)


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
    # None: not known yet (a fresh state before the RPC answered, or a file from before it was kept).
    genesis_hash: str | None = None


@dataclass(frozen=True)
class _Batch:
    """The decoded events of a block range and the hashes to remember from it."""

    events: list[ChainEvent]
    hashes: dict[int, str]


class _ChainMovedError(Exception):
    """The chain reorganised while a batch was being read; the next poll handles it."""


class _SplitRangeError(Exception):
    """A getLogs answer for a range cannot be trusted or was refused: read a smaller range."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _HandlerFailedError(Exception):
    """Carries a handler's (or on_reorg's) exception out of poll() past the RPC retry logic."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


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
        max_logs_per_query: int = 10_000,
        regrow_after: int = 4,
        missing_block_retries: int = 5,
        missing_block_backoff: float = 0.2,
    ) -> None:
        """Load the persisted state (or start at `start_block`) and check it fits this chain.

        `on_reorg(fork_block)` is called when blocks above `fork_block` that were already delivered
        left the chain; it must undo what was derived from them and be idempotent (a crash right
        after it runs makes the watcher call it again). The chain id and genesis block are checked
        here when the RPC answers, else on the first poll, and again after every RPC failure.

        `max_logs_per_query`: a getLogs answer with this many logs is taken as possibly truncated
        and its range is read again in halves; keep it at or below the provider's result cap
        (10,000 at the common hosted providers). `regrow_after`: successful getLogs queries at a
        reduced range before the range doubles again (up to `batch_size`).
        `missing_block_retries` / `missing_block_backoff`: how often, and after how long (doubling,
        at most `max_backoff`), a block at or below the head that comes back `null` is asked again.
        """
        _check_limits(
            start_block=start_block,
            confirmations=confirmations,
            batch_size=batch_size,
            poll_interval=poll_interval,
            max_backoff=max_backoff,
            history=history,
            max_logs_per_query=max_logs_per_query,
            regrow_after=regrow_after,
            missing_block_retries=missing_block_retries,
            missing_block_backoff=missing_block_backoff,
        )
        self._w3 = w3
        self._state_path = Path(state_path)
        self._confirmations = confirmations
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._initial_backoff = max(initial_backoff, 0.001)
        self._max_backoff = max_backoff
        self._history = history
        self._on_reorg = on_reorg
        self._max_logs = max_logs_per_query
        self._regrow_after = regrow_after
        self._missing_block_retries = missing_block_retries
        self._missing_block_backoff = missing_block_backoff
        # The getLogs range in use: batch_size until a provider cap or a full answer halves it.
        self._span = batch_size
        self._span_successes = 0
        # The head reported at the start of the current poll: a block at or below it must exist.
        self._head: int | None = None
        # The current poll's stop event (a never-set one for poll()), so retry waits end on shutdown.
        self._stop = threading.Event()
        self._decoders = _build_decoders(contracts)
        self._addresses = tuple(sorted({address for address, _ in self._decoders}))
        self._state = self._load_state(start_block)
        self._chain_checked = False
        try:
            self._check_chain()
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
        RPC errors propagate (`RETRYABLE_ERRORS`); progress made before them is kept. An exception
        of `on_reorg` is logged and propagates unchanged. ChainError (another chain, a reorg deeper
        than `history`, an unreadable getLogs answer) means retrying cannot help.
        """
        delivered: list[ChainEvent] = []

        def collect(event: ChainEvent) -> None:
            if handler is not None:
                handler(event)
            delivered.append(event)

        try:
            self._poll(collect, None)
        except _HandlerFailedError as exc:
            raise exc.original from None
        return delivered

    def _poll(self, handler: Callable[[ChainEvent], None], stop: threading.Event | None) -> None:
        """One step: chain check, reorg check, then each confirmed batch read, handed over, persisted."""
        self._stop = stop if stop is not None else threading.Event()
        try:
            self._check_chain()
            head = self._head = self._w3.eth.block_number
            self._handle_reorg()
            target = head - self._confirmations
            while self._state.last_processed < target and not (stop and stop.is_set()):
                first = self._state.last_processed + 1
                last = min(target, first + self._span - 1)
                try:
                    batch = self._read_batch(first, last, target)
                except _ChainMovedError as exc:
                    detail = redact(str(exc))
                    log.info(_kv("watcher.chain_moved", from_block=first, to_block=last, detail=detail))
                    return
                except _SplitRangeError as exc:
                    self._split(first, last, exc)
                    continue  # bounded: every split halves the range, and a single block raises
                for event in batch.events:
                    handler(event)
                self._advance(last, batch.hashes)
                self._regrow()
                log.debug(_kv("watcher.batch", from_block=first, to_block=last, events=len(batch.events)))
        except RETRYABLE_ERRORS:
            # The endpoint failed; what answers next may be another chain (a restarted devnet, a
            # re-pointed load balancer), so verify chain id and genesis before trusting it again.
            self._chain_checked = False
            raise

    # ---------------------------------------------------------------- the loop

    def run(self, handler: Callable[[ChainEvent], None], stop: threading.Event) -> None:
        """Poll until `stop` is set, handing each event to `handler` in chain order.

        RPC and connection errors are logged and retried with exponential backoff (from
        `initial_backoff` up to `max_backoff`); they never end the loop, and after them the chain id
        and genesis block are checked again before anything is read. A handler or `on_reorg`
        exception is logged and re-raised, ending the loop: skipping the event would silently lose
        state (an escrow unlock, a settled receipt), and retrying it forever would hide the bug. The
        failed event's batch is not persisted, so a restarted watcher delivers it again. A
        ChainError (another chain, a reorg deeper than `history`) is logged and raised too.
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
            except ChainError as exc:
                log.error(_kv("watcher.stopped", error=type(exc).__name__, detail=redact(str(exc))[:500]))
                raise
            if failures:
                log.info(
                    _kv(
                        "watcher.recovered",
                        attempts=failures,
                        block=self.last_processed,
                        chain_id=self._state.chain_id,
                    )
                )
                failures = 0
            stop.wait(self._poll_interval)

    def _backoff(self, failures: int) -> float:
        """Seconds to wait after the given number of consecutive failures."""
        return min(self._max_backoff, self._initial_backoff * 2 ** min(failures - 1, 32))

    # ---------------------------------------------------------------- reading

    def _read_batch(self, first: int, last: int, target: int) -> _Batch:
        """Events of blocks first..last, checked to come from one chain that extends ours."""
        hash_before = self._block_hash(last)
        try:
            logs = self._w3.eth.get_logs(
                {"fromBlock": first, "toBlock": last, "address": list(self._addresses)}
            )
        except RETRYABLE_ERRORS as exc:
            cap = _log_cap_message(exc)
            if cap is None:
                raise
            raise _SplitRangeError("provider_cap", cap) from exc
        if len(logs) >= self._max_logs:
            # Some providers cut an answer at their cap without an error: a full answer may be a
            # truncated one, and trusting it would mark the missing events as processed forever.
            raise _SplitRangeError("result_bound", f"{len(logs)} logs, max_logs_per_query={self._max_logs}")
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

    def _split(self, first: int, last: int, exc: _SplitRangeError) -> None:
        """Halve the getLogs range after a refused or untrustworthy answer for first..last."""
        if first == last:
            limit = self._max_logs if exc.reason == "result_bound" else None
            raise LogQueryUnsplittable(first, exc.reason, limit, redact(exc.detail)[:300]) from exc
        self._span = max(1, (last - first + 1) // 2)
        self._span_successes = 0
        log.warning(
            _kv(
                "watcher.range_split",
                from_block=first,
                to_block=last,
                span=self._span,
                reason=exc.reason,
                detail=redact(exc.detail)[:300],
            )
        )

    def _regrow(self) -> None:
        """After enough successes at a reduced range, double it (a cap may be lifted, or was a blip)."""
        if self._span >= self._batch_size:
            return
        self._span_successes += 1
        if self._span_successes >= self._regrow_after:
            self._span = min(self._batch_size, self._span * 2)
            self._span_successes = 0
            log.debug(_kv("watcher.range_grown", span=self._span))

    def _linked_hashes(self, first: int, last: int) -> dict[int, str]:
        """Hashes of blocks first..last, checked to form a chain on top of the stored hashes."""
        hashes: dict[int, str] = {}
        parent = self._state.hashes.get(first - 1)
        for number in range(first, last + 1):
            block = self._get_block(number)
            if block is None:
                raise _ChainMovedError(f"block {number} is no longer on the chain")
            if parent is not None and Web3.to_hex(block["parentHash"]) != parent:
                raise _ChainMovedError(f"block {number} no longer extends {parent}")
            parent = hashes[number] = Web3.to_hex(block["hash"])
        return hashes

    def _block_hash(self, number: int) -> str | None:
        """The chain's hash of a block, None when the chain has no such block (any more)."""
        block = self._get_block(number)
        return None if block is None else Web3.to_hex(block["hash"])

    def _get_block(self, number: int) -> BlockData | None:
        """A block, or None when it is above the chain's head (the chain is shorter than that).

        A load-balanced provider may route this call to a backend a few blocks behind the one that
        reported the head: `null` for a block at or below the head is asked again (bounded, with
        backoff) instead of being taken for a reorg, and raises BlockUnavailableError (retryable)
        if the head still covers it afterwards.
        """
        head = 0 if number == 0 else self._head
        attempts = 0
        while True:
            try:
                return self._w3.eth.get_block(number)
            except BlockNotFound:
                attempts += 1
            if head is None or number > head:
                return None
            if attempts > self._missing_block_retries:
                break
            delay = min(self._max_backoff, self._missing_block_backoff * 2 ** (attempts - 1))
            log.info(
                _kv(
                    "watcher.block_missing",
                    block=number,
                    head=head,
                    attempt=attempts,
                    retry_in=f"{delay:.2f}",
                )
            )
            if self._stop.wait(delay):
                break
        head_now = self._w3.eth.block_number
        if number > head_now:
            return None  # the chain really is shorter now: a reorg for the caller to handle
        raise BlockUnavailableError(number, head_now, attempts)

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
        # Another chain behind the same URL also looks like a reorg: rule that out first, so the
        # operator is told the right story (and no on_reorg runs for a chain that is not ours).
        self._chain_checked = False
        self._check_chain()
        fork = self._find_fork(last)
        self._call_on_reorg(fork, last)
        self._save(
            dataclasses.replace(
                self._state,
                addresses=self._addresses,
                last_processed=fork,
                hashes={n: h for n, h in self._state.hashes.items() if n <= fork},
            )
        )

    def _find_fork(self, last: int) -> int:
        """The newest stored block still on the chain; ReorgTooDeepError when none is.

        Below the oldest stored hash nothing says where the branches meet: rewinding to a guess
        would skip the new branch's events under it, so the watcher stops instead.
        """
        for number in sorted(self._state.hashes, reverse=True):
            if number != last and self._block_hash(number) == self._state.hashes[number]:
                log.warning(_kv("watcher.reorg", fork_block=number, depth=last - number))
                return number
        oldest = min(self._state.hashes)
        log.error(
            _kv(
                "watcher.deep_reorg",
                last_processed=last,
                oldest_known=oldest,
                history=self._history,
                detail="no remembered block is on the chain; stopping",
            )
        )
        raise ReorgTooDeepError(self._state_path, last, oldest, self._history)

    def _call_on_reorg(self, fork: int, last: int) -> None:
        """on_reorg, with its failures logged and wrapped so they are never retried as RPC errors."""
        try:
            self._on_reorg(fork)
        except Exception as exc:
            log.exception(
                _kv("watcher.on_reorg_failed", fork_block=fork, last_processed=last, error=type(exc).__name__)
            )
            raise _HandlerFailedError(exc) from exc

    # ---------------------------------------------------------------- state

    def _advance(self, last: int, hashes: dict[int, str]) -> None:
        """Record that blocks up to `last` are processed, keeping the newest `history` hashes."""
        merged = {**self._state.hashes, **hashes}
        keep = {n: h for n, h in merged.items() if n > last - self._history}
        self._save(
            dataclasses.replace(self._state, addresses=self._addresses, last_processed=last, hashes=keep)
        )

    def _save(self, state: _State) -> None:
        """Persist atomically, then adopt: memory never runs ahead of the file."""
        document = {
            "version": STATE_VERSION,
            "chain_id": state.chain_id,
            "genesis_hash": state.genesis_hash,
            "addresses": list(state.addresses),
            "last_processed": state.last_processed,
            "block_hashes": {str(n): h for n, h in sorted(state.hashes.items())},
        }
        write_atomic(self._state_path, json.dumps(document, indent=1))
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

    def _check_chain(self) -> None:
        """Refuse another chain (chain id or genesis block); adopt what a fresh state lacks.

        The chain id is read on every poll: a load-balanced provider can come back as another chain
        without a single failed request in between (a restart between two polls). The genesis hash
        is compared on first use, after RPC errors and whenever the chain id changes; a reset that
        keeps the chain id is caught by the block hashes too (ReorgTooDeepError).

        A state file written before the genesis hash was kept has none: it is read as unknown and
        the RPC's genesis is recorded (with the next save). Such a file from a chain since reset
        still fails safe: its block hashes match nothing, which is a ReorgTooDeepError.
        """
        chain_id = self._w3.eth.chain_id
        if self._chain_checked and chain_id == self._state.chain_id:
            return
        genesis = self._block_hash(0)
        state = self._state
        if state.chain_id is not None and (
            state.chain_id != chain_id or (state.genesis_hash is not None and state.genesis_hash != genesis)
        ):
            raise ChainIdentityError(self._state_path, state.chain_id, chain_id, state.genesis_hash, genesis)
        if state.chain_id is not None and state.genesis_hash is None:
            log.info(
                _kv("watcher.genesis_recorded", path=self._state_path, chain_id=chain_id, genesis=genesis)
            )
        self._state = dataclasses.replace(state, chain_id=chain_id, genesis_hash=genesis)
        self._chain_checked = True


def _check_limits(**settings: float) -> None:
    """Refuse settings the watcher cannot work with, naming each one and its rule."""
    rules: dict[str, tuple[str, Callable[[float], bool]]] = {
        "start_block": (">= 0", lambda v: v >= 0),
        "confirmations": (">= 0", lambda v: v >= 0),
        "batch_size": (">= 1", lambda v: v >= 1),
        "poll_interval": (">= 0", lambda v: v >= 0),
        "max_backoff": ("> 0", lambda v: v > 0),
        "history": (">= 1", lambda v: v >= 1),
        "max_logs_per_query": (">= 1", lambda v: v >= 1),
        "regrow_after": (">= 1", lambda v: v >= 1),
        "missing_block_retries": (">= 0", lambda v: v >= 0),
        "missing_block_backoff": (">= 0", lambda v: v >= 0),
    }
    problems = [
        f"{name} must be {rules[name][0]} (got {value})"
        for name, value in settings.items()
        if not rules[name][1](value)
    ]
    if problems:
        raise ChainError("invalid watcher settings: " + "; ".join(problems))


def _log_cap_message(exc: BaseException) -> str | None:
    """The provider's message when `exc` is an eth_getLogs range or result-count refusal, else None.

    The JSON-RPC error arrives in a Web3RPCError (HTTP 200) or, from providers that answer the
    refusal with an HTTP error status, in the body of requests' HTTPError.
    """
    response: Any = None
    if isinstance(exc, Web3RPCError):
        response = exc.rpc_response
    elif isinstance(exc, requests.HTTPError) and exc.response is not None:
        try:
            response = exc.response.json()
        except ValueError:
            return None
    error = response.get("error") if isinstance(response, Mapping) else None
    if not isinstance(error, Mapping):
        return None
    data = error.get("data")
    texts = [error.get("message"), *(data.values() if isinstance(data, Mapping) else [data])]
    for text in texts:
        if isinstance(text, str) and _LOG_CAP_PATTERN.search(text):
            return str(error.get("message") or text)
    return None


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
        # Absent in files written before it was kept: unknown, recorded at the next chain check.
        genesis = document.get("genesis_hash")
        if genesis is not None and not isinstance(genesis, str):
            raise ValueError("genesis_hash must be a hex string")
        return _State(
            chain_id=chain_id,
            addresses=tuple(to_checksum_address(a) for a in addresses),
            last_processed=last,
            hashes={int(n): str(h) for n, h in hashes.items()},
            genesis_hash=genesis,
        )
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise ChainError(f"watcher state {path} is unreadable ({exc}): {_FIX_STATE}") from exc
