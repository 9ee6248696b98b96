"""From the chain to verified model files the node serves, without restarts: the chain view
(RegistryView fed by an EventWatcher) and the model manager, against a real Anvil (contracts
deployed per test) and real kubo daemons (models added to one, fetched through the other)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD

from chain.chainview import ChainView, dev_confirmations
from chain.errors import ChainError, WrongNetwork
from chain.registry import APPROVED, MODELS, NODES, RegistryView
from chain.tx import TxSender
from chain.views import MODEL_STATUS
from chain.watcher import ChainEvent
from node.chainview import NodeChainView
from node.config import HostedModel, NodeConfig
from node.models import ModelManager, ServableModel
from protocol.service import Service, ServiceError, run_services
from storage.blocks import KuboBlocks
from storage.cache import ModelCache
from storage.cid import Cid
from storage.kubo import KuboClient
from storage.publish import PublishedFile
from storage.unixfs import hash_bytes
from tests.conftest import Marketplace, free_port
from tests.market_fixtures import OPERATOR, STRANGER, Net, keystore_files, node_config, tiny

pytestmark = pytest.mark.anyio


def crafted_gguf(path: Path, flaw: str) -> Path:
    """A file with the GGUF magic and version whose header lies: llama.cpp would allocate for it."""
    if flaw == "tensor_count":
        header = b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0)
    else:  # a key/value pair whose key claims 2^60 bytes
        header = b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 60)
    path.write_bytes(header + bytes(64 << 10))
    return path


# ---------------------------------------------------------------- the node side of a test


class OnChange:
    """Records every served set the manager hands over (the callback the workers would be)."""

    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache
        self.calls: list[dict[str, ServableModel]] = []
        self.in_use_seen: list[dict[str, int]] = []

    def __call__(self, served: dict[str, ServableModel]) -> None:
        self.calls.append(served)
        # While the callback runs, every file it is handed is held in the cache.
        entries = {str(e.cid): e.in_use for e in self.cache.entries()}
        self.in_use_seen.append({name: entries.get(m.cid, 0) for name, m in served.items()})

    @property
    def now(self) -> dict[str, ServableModel]:
        return self.calls[-1] if self.calls else {}

    def ids(self) -> dict[str, int]:
        return {name: m.model_id for name, m in self.now.items()}


@dataclass
class Node:
    chain: ChainView
    manager: ModelManager
    cache: ModelCache
    served: OnChange
    task: asyncio.Task[None]

    async def until(
        self, predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition"
    ) -> Any:
        """Poll `predicate` until it is truthy; fail at once if the services ended."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.task.done():
                self.task.result()  # raises the service failure
                raise AssertionError(f"the services stopped while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.02)

    def in_use(self, cid: str) -> int:
        return {str(e.cid): e.in_use for e in self.cache.entries()}.get(cid, 0)


def chain_view(config: NodeConfig, tmp: Path) -> ChainView:
    """A chain view that notices events within a tenth of a second (Anvil mines each transaction)."""
    return NodeChainView(
        config,
        state_dir=tmp / "state",
        confirmations=0,
        poll_interval=0.05,
        initial_backoff=0.05,
        max_backoff=0.5,
    )


@asynccontextmanager
async def running_node(
    net: Net, config: NodeConfig, *, account: LocalAccount | None = None
) -> AsyncIterator[Node]:
    """Chain view and model manager run as the daemon runs them; stopped (and checked) at the end."""
    cache = ModelCache(net.tmp / "cache", 1 << 30, min_free_bytes=0)
    kubo = KuboClient(net.fetcher.api_url)
    served = OnChange(cache)
    chain = chain_view(config, net.tmp)
    manager = ModelManager(
        config,
        chain,
        served,
        cache=cache,
        source=KuboBlocks(kubo),
        account=account,
        initial_backoff=0.1,
        max_backoff=0.4,
        tx_initial_backoff=0.1,
        tx_max_backoff=0.4,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_services([chain, manager], stop))
    node = Node(chain, manager, cache, served, task)
    try:
        await node.until(lambda: _started(chain) and manager.started, what="the services started")
        yield node
    finally:
        stop.set()
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        finally:
            await kubo.aclose()
            cache.close()
        assert time.monotonic() - started < 10, "the services took too long to stop"
    assert not [t for t in threading.enumerate() if t.name == "chainview-watcher"], (
        "the watcher outlived stop()"
    )


def _started(chain: ChainView) -> bool:
    try:
        return chain.registry.version >= 1
    except RuntimeError:
        return False


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"event={event} ")]


# ---------------------------------------------------------------- the chain view


async def test_chainView_initialLoadSeesModelsApprovedBeforeStartThenFollowsEvents(net: Net) -> None:
    facts = [PublishedFile(h.cid, h.sha256, h.size) for h in (hash_bytes(b"one"), hash_bytes(b"two"))]
    first = await asyncio.to_thread(net.propose, "coder", facts[0])
    await asyncio.to_thread(net.approve, first)
    await asyncio.to_thread(net.register, OPERATOR, [first])
    config = node_config(net, [])
    chain = chain_view(config, net.tmp)
    await chain.start()
    registry = chain.registry
    assert registry.latest_approved("coder") == first and registry.model(first).status == APPROVED
    assert registry.model(first).specialties == ["python", "debugging"]
    assert list(registry.registered_nodes()) == [OPERATOR.address]
    assert registry.node(OPERATOR.address).hosted_models == [first]
    assert chain.state_path.parent == net.tmp / "state"
    seen: list[int] = []
    remove = chain.add_listener(lambda snapshot: seen.append(snapshot.version))
    stop = asyncio.Event()
    task = asyncio.create_task(run_services([_Started(chain)], stop))
    try:
        second = await asyncio.to_thread(net.propose, "coder", facts[1])
        await asyncio.to_thread(net.approve, second)
        deadline = time.monotonic() + 30
        while registry.latest_approved("coder") != second:
            assert time.monotonic() < deadline and not task.done(), "the approval never reached the view"
            await asyncio.sleep(0.02)
        assert registry.snapshot().versions("coder") == [first, second]
        assert seen and seen == sorted(seen)  # the listener saw every change, in order
    finally:
        remove()
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 30)
        assert time.monotonic() - started < 5
    assert json.loads(chain.state_path.read_text())["last_processed"] >= net.w3.eth.block_number - 1


async def test_chainView_withConfirmations_showsOnlyConfirmedState(net: Net) -> None:
    """One confirmation: an approval mined at the head is not visible until a block covers it."""
    facts = hash_bytes(b"confirmed")
    config = node_config(net, [])
    chain = NodeChainView(config, state_dir=net.tmp / "state", confirmations=1, poll_interval=0.05)
    async with running(chain) as until:
        await until(lambda: _started(chain), "the initial load")
        model_id = await asyncio.to_thread(
            net.propose, "coder", PublishedFile(facts.cid, facts.sha256, facts.size)
        )
        await asyncio.to_thread(net.approve, model_id)
        proposed = await until(lambda: chain.registry.model(model_id), "the proposal")
        assert proposed.status == MODEL_STATUS.index("Proposed")  # the chain's head says Approved
        net.w3.provider.make_request("evm_mine", [])
        await until(lambda: chain.registry.latest_approved("coder") == model_id, "the confirmed approval")


class _Started(Service):
    """Runs an already started service (so a test can look at it between start and run)."""

    def __init__(self, inner: Service) -> None:
        self.inner, self.name = inner, inner.name

    async def run(self) -> None:
        await self.inner.run()

    async def stop(self) -> None:
        await self.inner.stop()


async def test_chainView_start_refusesAWrongRpcOrDeploymentWithTheFix(net: Net) -> None:
    unreachable = node_config(net, [], rpc_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ChainError, match="cannot reach the RPC"):
        await chain_view(unreachable, net.tmp).start()

    other_chain = net.tmp / "mainnet.json"
    other_chain.write_text(json.dumps(net.deployment.to_dict() | {"chain_id": 1}))
    config = node_config(net, [], deployment=other_chain)
    with pytest.raises(WrongNetwork, match="is for chain 1 but the RPC is chain 31337"):
        await chain_view(config, net.tmp).start()

    elsewhere = net.tmp / "elsewhere.json"
    nobody = "0x" + "12" * 20
    elsewhere.write_text(
        json.dumps(net.deployment.to_dict() | {"model_registry": Web3.to_checksum_address(nobody)})
    )
    config = node_config(net, [], deployment=elsewhere)
    with pytest.raises(ChainError, match=r"no ModelRegistry contract at .* redeploy .*chain.deployment"):
        await chain_view(config, net.tmp).start()


async def test_chainView_stateFileOfAnotherChain_isReplacedNotFatal(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """The registries are read in full at start, so a devnet reset costs the node nothing."""
    config = node_config(net, [])
    state = net.tmp / "state" / f"registry-31337-{net.deployment.model_registry.lower()}.json"

    def written() -> bool:
        return state.exists() and json.loads(state.read_text())["genesis_hash"] != "0x" + "ab" * 32

    for _ in range(2):
        chain = chain_view(config, net.tmp)
        async with running(chain) as until:
            await until(lambda: _started(chain), "the initial load")  # noqa: B023 - used at once
            net.w3.provider.make_request("evm_mine", [])
            await until(written, "the state file written")
        state.write_text(json.dumps(json.loads(state.read_text()) | {"genesis_hash": "0x" + "ab" * 32}))
        caplog.set_level(logging.WARNING, logger="chain.chainview")
    [line] = records(caplog, "chainview.state_replaced")
    assert "reason=another_chain" in line and str(state) in line


@asynccontextmanager
async def running(*services: Service) -> AsyncIterator[Callable[..., Any]]:
    """Run services as the daemon does; yields a poller that fails fast if they stop."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_services(list(services), stop))

    async def until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if task.done():
                task.result()
                raise AssertionError(f"the services stopped while waiting for {what}")
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            await asyncio.sleep(0.02)
        return value

    try:
        yield until
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_chainView_failureRetryingCannotFix_stopsTheServices(net: Net) -> None:
    config = node_config(net, [])
    chain = chain_view(config, net.tmp)
    await chain.start()

    def broken(event: Any) -> bool:
        raise ValueError("a bug in the fold")

    chain.registry.apply = broken  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(run_services([_Started(chain)], stop))
    facts = hash_bytes(b"three")
    await asyncio.to_thread(net.propose, "coder", PublishedFile(facts.cid, facts.sha256, facts.size))
    with pytest.raises(ServiceError, match="service chainview failed: ValueError: a bug in the fold"):
        await asyncio.wait_for(task, 30)


# ---------------------------------------------------------------- the model manager


async def test_manager_modelApprovedWhileRunning_isServedAndHostedThenDeprecatedIsRemoved(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node.models")
    await asyncio.to_thread(net.register, OPERATOR)
    config = node_config(
        net, [HostedModel(name="tiny-coder", threads=1, n_ctx=512)], **keystore_files(net.tmp, OPERATOR)
    )
    path = tiny(net.tmp, "tiny-coder", seed=0)
    async with running_node(net, config) as node:
        assert node.manager.operator == OPERATOR.address  # from the config's keystore
        await node.until(lambda: records(caplog, "models.not_approved"), what="the not-approved note")
        assert node.served.calls == []
        model_id = await net.publish("tiny-coder", path)
        model = await node.until(lambda: node.served.now.get("tiny-coder"), what="the approved model")
        assert model.model_id == model_id and model.cid == node.chain.registry.model(model_id).cid
        assert model.path.read_bytes() == path.read_bytes()
        assert (
            model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            and model.size == path.stat().st_size
        )
        assert (model.context_window, model.price_per_1k, model.quantization) == (512, 10**15, "F32")
        assert model.specialties == ("python", "debugging") and model.settings == config.models[0]
        assert model.header.architecture == "llama" and model.header.tensor_count > 0
        assert node.in_use(model.cid) == 1 and node.served.in_use_seen[-1] == {"tiny-coder": 1}
        assert any("percent=100" in line for line in records(caplog, "models.fetch_progress"))
        await node.until(lambda: net.hosted_on_chain() == [model_id], what="the hosted ids on chain")

        await asyncio.to_thread(net.deprecate, model_id)
        await node.until(lambda: "tiny-coder" not in node.served.now, what="the deprecated model removed")
        assert node.served.in_use_seen[-1] == {}
        await node.until(lambda: node.in_use(model.cid) == 0, what="the file released")
        await node.until(lambda: net.hosted_on_chain() == [], what="the hosted ids cleared on chain")
        assert len(node.served.calls) == 2
    updates = records(caplog, "models.hosted_updated")
    assert (
        f"model_ids={model_id} previous=-" in updates[0] and f"model_ids=- previous={model_id}" in updates[-1]
    )


async def test_manager_newerApprovedVersion_replacesTheOlderWithoutAGap(net: Net) -> None:
    config = node_config(net, [HostedModel(name="tiny", threads=1, n_ctx=512)])
    first = await net.publish("tiny", tiny(net.tmp, "tiny", seed=1))
    async with running_node(net, config) as node:
        old = await node.until(lambda: node.served.now.get("tiny"), what="version 1 served")
        assert old.model_id == first and old.version == 1
        second = await net.publish("tiny", tiny(net.tmp, "tiny", seed=2))
        new = await node.until(
            lambda: node.served.ids().get("tiny") == second and node.served.now["tiny"], what="version 2"
        )
        assert new.version == 2 and new.cid != old.cid
        assert [call["tiny"].model_id for call in node.served.calls] == [first, second]  # never without one
        await node.until(lambda: node.in_use(old.cid) == 0, what="version 1 released")
        assert node.in_use(new.cid) == 1


async def test_manager_pinnedModelId_isUsedAndABadPinIsRefusedWithTheFix(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node.models")
    first = await net.publish("tiny-a", tiny(net.tmp, "tiny-a", seed=3))
    second = await net.publish("tiny-a", tiny(net.tmp, "tiny-a", seed=4))
    config = node_config(
        net,
        [
            HostedModel(name="tiny-a", model_id=first, threads=1, n_ctx=512),
            HostedModel(name="tiny-b", model_id=second, threads=1, n_ctx=512),
            HostedModel(name="tiny-c", model_id=99, threads=1, n_ctx=512),
        ],
    )
    async with running_node(net, config, account=STRANGER) as node:
        await node.until(lambda: node.served.ids() == {"tiny-a": first}, what="the pinned version served")
        refused = {
            line.split(" model=")[1].split()[0]: line for line in records(caplog, "models.pinned_refused")
        }
        assert (
            "is 'tiny-a', not 'tiny-b'" in refused["tiny-b"] and "fix models[].model_id" in refused["tiny-b"]
        )
        assert "model 99 does not exist on chain" in refused["tiny-c"]
        # The account has no registered node: a warning that says what to run, and no transaction.
        [warning] = await node.until(
            lambda: records(caplog, "models.node_not_registered"), what="the warning"
        )
        assert "scripts/register_node.py" in warning and STRANGER.address in warning
        assert not records(caplog, "models.hosted_updated")
        # Deprecating a pinned version stops serving it; nothing newer replaces a pin.
        await asyncio.to_thread(net.deprecate, first)
        await node.until(lambda: node.served.ids() == {}, what="the deprecated pin removed")
        await node.until(
            lambda: [r for r in records(caplog, "models.pinned_refused") if "Deprecated" in r], what="note"
        )


@pytest.mark.parametrize("flaw", ["tensor_count", "string_length"])
async def test_manager_craftedGguf_isRefusedBeforeLoadAndTheOthersAreServed(
    net: Net, caplog: pytest.LogCaptureFixture, flaw: str
) -> None:
    caplog.set_level(logging.INFO, logger="node.models")
    await asyncio.to_thread(net.register, OPERATOR)
    good = await net.publish("tiny-good", tiny(net.tmp, "tiny-good", seed=5))
    config = node_config(
        net,
        [
            HostedModel(name="tiny-good", threads=1, n_ctx=512),
            HostedModel(name="crafted", threads=1, n_ctx=512),
        ],
    )
    async with running_node(net, config, account=OPERATOR) as node:
        await node.until(lambda: node.served.ids() == {"tiny-good": good}, what="the good model")
        bad = await net.publish("crafted", crafted_gguf(net.tmp / f"crafted-{flaw}.gguf", flaw))
        [line] = await node.until(lambda: records(caplog, "models.refused"), what="the refusal")
        assert f"model_id={bad} " in line and "crafted" in line
        assert ("the tensor count" if flaw == "tensor_count" else "the length of key 0") in line
        assert node.manager.refused.keys() == {bad}
        cid = node.chain.registry.model(bad).cid
        assert not node.cache.has(cid)  # evicted: nothing can load it later
        assert node.served.ids() == {"tiny-good": good} and not node.task.done()
        await node.until(lambda: net.hosted_on_chain() == [good], what="the good id on chain")
        # Still serving and still following the chain: a model approved now is added.
        later = await net.publish("crafted", tiny(net.tmp, "crafted", seed=6))
        await node.until(
            lambda: node.served.ids() == {"tiny-good": good, "crafted": later}, what="a real one"
        )
    assert len(records(caplog, "models.refused")) == 1  # refused once, never fetched again


async def test_manager_fetchFailure_isRetriedWithBackoffAndNeverStopsTheNode(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """The chain declares another sha256 than the file's: the cache refuses the bytes every time."""
    caplog.set_level(logging.INFO, logger="node.models")
    config = node_config(net, [HostedModel(name="tiny", threads=1, n_ctx=512)])
    path = tiny(net.tmp, "tiny", seed=7)
    wrong = hashlib.sha256(b"not the file").hexdigest()
    async with running_node(net, config) as node:
        bad = await net.publish("tiny", path, sha256=wrong)
        failures = await node.until(
            lambda: (
                len(records(caplog, "models.fetch_failed")) >= 3 and records(caplog, "models.fetch_failed")
            ),
            what="three attempts",
        )
        waits = [float(line.split("retry_in=")[1].split()[0]) for line in failures[:3]]
        assert waits == sorted(waits) and waits[0] < waits[-1]  # backing off
        assert all(f"model_id={bad} " in line and "IntegrityError" in line for line in failures)
        assert node.served.calls == [] and not node.task.done()
        fixed = await net.publish("tiny", tiny(net.tmp, "tiny", seed=8))
        await node.until(lambda: node.served.ids() == {"tiny": fixed}, what="the next version served")


def test_registryView_eventsItAlreadyReflectsChangeNothing(marketplace: Marketplace) -> None:
    """A watcher replaying history over a fresh load, or delivering an event twice, changes nothing."""
    models = marketplace.contract("ModelRegistry")
    view = RegistryView(models, marketplace.contract("NodeRegistry"))
    facts = hash_bytes(b"four")
    sender = TxSender(marketplace.w3, marketplace.admin)
    spec = ("coder", str(facts.cid), bytes.fromhex(facts.sha256), facts.size, "Q4", 512, 1, [])
    receipt = sender.send(models.functions.propose(spec))
    view.load()
    version = view.version
    event = ChainEvent(MODELS, "ModelProposed", {"modelId": 1}, receipt["blockNumber"], "0x", "0x", 0)
    assert view.apply(event) is False and view.version == version
    approve = sender.send(models.functions.approve(1))
    event = ChainEvent(MODELS, "ModelApproved", {"modelId": 1}, approve["blockNumber"], "0x", "0x", 0)
    assert view.apply(event) is True and view.version == version + 1
    assert view.apply(event) is False  # delivered twice: no second read, no second change
    assert view.latest_approved("coder") == 1
    unrelated = ChainEvent(
        MODELS,
        "RoleGranted",
        {"role": b"", "account": "0x"},
        approve["blockNumber"] + 1,
        "0x",
        "0x",
        0,
    )
    assert view.apply(unrelated) is False
    assert Cid.parse(view.model(1).cid) == facts.cid


def test_registryView_slashOrSettlementEventRereadsTheNodesReputation(net: Net) -> None:
    """Reputation counters change only through NodeRegistry events that name the operator."""
    net.register(OPERATOR)
    view = RegistryView(net.models, net.nodes)
    view.load()
    assert view.snapshot().reputation_of(OPERATOR.address).slash_count == 0
    stake = net.nodes.functions.minStake().call()
    receipt = net.admin.send(net.nodes.functions.slash(OPERATOR.address, stake // 10, "test"))
    [log] = net.nodes.events.NodeSlashed().process_receipt(receipt, errors=DISCARD)
    event = ChainEvent(NODES, "NodeSlashed", dict(log["args"]), receipt["blockNumber"], "0x", "0x", 0)
    assert view.apply(event) is True
    counters = view.snapshot().reputation_of(OPERATOR.address)
    assert counters.slash_count == 1 and counters.total_slashed == stake // 10
    assert view.snapshot().nodes[OPERATOR.address].stake == stake - stake // 10


def test_devConfirmations_noneOnALocalDevChainElseTwo() -> None:
    assert dev_confirmations(31337) == 0 and dev_confirmations(1) == 2 and dev_confirmations(8453) == 2
