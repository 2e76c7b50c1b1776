"""A costly value (the dashboard's summary) computed once at a time and shared by every page."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class SharedRefresh(Generic[T]):
    """The latest value of a costly computation, refreshed at most once at a time.

    With a long run history the dashboard's summary takes seconds of database time (about
    5 s with 500,000 flow runs on 2 cores), and every shifter's page asks for it every refresh
    period. Here a value younger than ``fresh_s`` is served as it is; one younger than
    ``stale_s`` is served at once while its successor is computed in the background; an older
    one, or none, is waited for. However many pages ask, one computation runs at a time.

    Args:
        compute: makes a new value from the credentials of the request that asked for it
            (the middleware has checked them; every user of the app holds the same ones).
        fresh_s: seconds a value is served without starting a refresh.
        stale_s: seconds a value may still be served while its refresh runs.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        compute: Callable[[str | None], Awaitable[T]],
        fresh_s: float,
        stale_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._clock = clock
        self.fresh_s = fresh_s
        self.stale_s = max(stale_s, fresh_s)
        self._latest: tuple[float, T] | None = None
        self._task: asyncio.Task[T] | None = None

    async def get(self, credentials: str | None) -> T:
        latest = self._latest
        age = self._clock() - latest[0] if latest else float("inf")
        if latest is not None and age < self.fresh_s:
            return latest[1]
        task = self._refresh(credentials)
        if latest is not None and age < self.stale_s:
            return latest[1]
        return await asyncio.shield(task)  # a client that goes away does not cancel it

    def _refresh(self, credentials: str | None) -> asyncio.Task[T]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._compute_and_keep(credentials))
            self._task.add_done_callback(_log_failure)
        return self._task

    async def _compute_and_keep(self, credentials: str | None) -> T:
        started = self._clock()
        value = await self._compute(credentials)
        self._latest = (started, value)
        return value


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("the dashboard summary could not be refreshed: %s", exc)
