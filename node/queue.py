"""The bounded, fair queue in front of a model's slots.

A model's worker decodes up to `slots` requests together; the rest wait here. Waiters are served
round-robin across clients (the payer once requests are paid, else the `user` field or the remote
address), so one client sending a hundred requests cannot starve another sending one. The number
of waiters over all models is bounded: past it a request is refused at once with 503 and a
Retry-After, and a wait that outlasts its deadline ends with 503 too, never a hung connection.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from protocol.errors import ApiError


class WaitBudget:
    """How many requests may wait for a slot, over every model of the node."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.waiting = 0

    def take(self, retry_after: float) -> None:
        if self.waiting >= self.limit:
            raise ApiError(
                503,
                f"the node is busy: {self.waiting} requests are already waiting; "
                "retry later or use another node",
                code="queue_full",
                retry_after=retry_after,
            )
        self.waiting += 1

    def give(self) -> None:
        self.waiting -= 1


class FairGate:
    """Up to `capacity` holders at once; waiters admitted round-robin over clients."""

    def __init__(self, capacity: int, budget: WaitBudget, retry_after: float = 1.0) -> None:
        self.capacity = capacity
        self.active = 0
        self._budget = budget
        self._retry_after = retry_after
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @asynccontextmanager
    async def slot(self, client: str, timeout: float) -> AsyncIterator[None]:
        """Hold one slot for the block; 503 when the queue is full or `timeout` passes first."""
        await self._acquire(client, timeout)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, client: str, timeout: float) -> None:
        if self.active < self.capacity and not self._waiting:
            self.active += 1
            return
        self._budget.take(self._retry_after)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():  # admitted just as the wait ended
                self._release()
            else:
                waiter.cancel()
                self._forget(client, waiter)
            if isinstance(exc, TimeoutError):
                raise ApiError(
                    503,
                    f"no slot became free within {timeout:g} s; retry later or use another node",
                    code="queue_timeout",
                    retry_after=self._retry_after,
                ) from None
            raise
        finally:
            self._budget.give()

    def _release(self) -> None:
        self.active -= 1
        while self._waiting and self.active < self.capacity:
            client, waiters = next(iter(self._waiting.items()))
            waiter = waiters.popleft()
            # The client goes to the back of the round, with or without more waiters.
            del self._waiting[client]
            if waiters:
                self._waiting[client] = waiters
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)

    def _forget(self, client: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(client)
        if waiters is None:
            return
        with suppress(ValueError):
            waiters.remove(waiter)
        if not waiters:
            del self._waiting[client]
