"""Services with one lifecycle: start in order, run together, stop in reverse order.

Each service prepares in `start` (a failure there stops the ones already started), works in `run`
(returning early is fine: a service with nothing to watch just waits), and releases in `stop`.
`run_services` ends when a stop is requested or when any service's `run` fails; the first failure
is the reason the daemon reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A service failed; `service` names it, the cause is chained."""

    def __init__(self, service: str, cause: BaseException) -> None:
        super().__init__(f"service {service} failed: {type(cause).__name__}: {cause}")
        self.service = service
        self.cause = cause


class Service:
    """Base: override what the service needs. `name` is for logs and errors."""

    name = "service"

    async def start(self) -> None:
        """Prepare (bind, load, connect). Raise to refuse to start."""

    async def run(self) -> None:
        """Work until cancelled. Returning ends only this service's run."""

    async def stop(self) -> None:
        """Make `run` return and release everything (called while `run` may still be running);
        must not raise for a service that is half started."""


async def run_services(services: Sequence[Service], stop: asyncio.Event) -> None:
    """Start `services` in order, run them until `stop` is set or one fails, then stop all in
    reverse order (each `stop` makes its `run` return; what still runs after is cancelled).
    Raises ServiceError for the first service that failed."""
    started: list[Service] = []
    runs: dict[asyncio.Task[None], Service] = {}
    failure: ServiceError | None = None
    try:
        for service in services:
            log.info("event=service_starting service=%s", service.name)
            try:
                await service.start()
            except Exception as exc:
                raise ServiceError(service.name, exc) from exc
            started.append(service)
        runs = {asyncio.create_task(s.run(), name=f"run:{s.name}"): s for s in started}
        failure = await _wait_for_stop(runs, stop)
    finally:
        await _stop_all(started)
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    if failure is not None:
        raise failure


async def _wait_for_stop(runs: dict[asyncio.Task[None], Service], stop: asyncio.Event) -> ServiceError | None:
    stopper = asyncio.create_task(stop.wait(), name="stop")
    pending: set[asyncio.Task[Any]] = set(runs) | {stopper}
    try:
        while pending != {stopper}:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                return None
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    assert exc is not None
                    log.error("event=service_failed service=%s error=%r", runs[task].name, exc)
                    return ServiceError(runs[task].name, exc)
        await stopper  # every run returned normally: wait for the stop
        return None
    finally:
        stopper.cancel()


async def _stop_all(services: list[Service]) -> None:
    for service in reversed(services):
        log.info("event=service_stopping service=%s", service.name)
        try:
            await service.stop()
        except Exception as exc:  # one service failing to stop must not keep the others running
            log.error("event=service_stop_failed service=%s error=%r", service.name, exc)
