"""Calls to the Prefect API that ride out a busy or restarting server.

Prefect's client retries a few answers itself (429, 502, 503) but not a 500, which an
overloaded server gives when its database pool runs dry, nor a connection refused while it
restarts for longer than its retries last. The pilot worker must still settle every run it
holds (Crashed, Cancelled, back to Scheduled): a state it fails to set leaves a run Pending or
Running with nobody to finish it. So those calls go through :func:`patiently`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import httpx

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """An error that a later try may not meet: no answer, or the server's own 5xx/429."""
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code >= 500 or code == 429
    return False


async def patiently(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    patience_s: float,
    logger: logging.Logger | logging.LoggerAdapter,
    first_wait_s: float = 1.0,
    max_wait_s: float = 30.0,
) -> T:
    """``await call()``, tried again after transient errors (waits doubling from
    ``first_wait_s`` to ``max_wait_s``) for up to ``patience_s`` seconds; the last error is
    raised after that, and any other error at once. ``what`` names the call in the log."""
    deadline = anyio.current_time() + patience_s
    wait = first_wait_s
    tries = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            tries += 1
            left = deadline - anyio.current_time()
            if not is_transient(exc) or left <= 0:
                raise
            if tries == 1:
                logger.warning("%s failed (%s); trying again for up to %.0f s", what, exc, left)
            await anyio.sleep(min(wait, left))
            wait = min(wait * 2, max_wait_s)
