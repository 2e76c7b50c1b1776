"""``python -m p3s.prefect_server start ...``: ``prefect server start`` with writers that queue
on SQLite instead of failing.

Prefect opens its SQLite write transactions as ``BEGIN DEFERRED``: such a transaction reads,
then asks for the write lock, and when another connection committed in between SQLite answers
``database is locked`` at once, without waiting for its busy timeout (WAL "busy snapshot").
The API turns that into a 503, the client retries after 2, 4, 8... seconds, and a flow-run
creation or state change takes seconds to minutes whenever two writes meet (Prefect issue
#18934; measured here: creations of 2 to 121 s beside a busy pilot pool). ``BEGIN IMMEDIATE``
takes the write lock first, so a second writer waits (milliseconds) for the first.

On PostgreSQL nothing changes. Everything else is Prefect's own CLI.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any


def sqlite_immediate_transactions() -> None:
    """Open every SQLite transaction of Prefect's server with ``BEGIN IMMEDIATE``."""
    from prefect.server.database import configurations

    config = configurations.AioSqliteConfiguration
    if getattr(config, "_p3s_immediate", False):
        return

    @asynccontextmanager
    async def begin_transaction(
        self: Any, session: Any, with_for_update: bool = False
    ) -> AsyncGenerator[Any, None]:
        token = configurations.SQLITE_BEGIN_MODE.set("IMMEDIATE")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            configurations.SQLITE_BEGIN_MODE.reset(token)

    config.begin_transaction = begin_transaction  # type: ignore[method-assign]
    config._p3s_immediate = True  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    """Run Prefect's CLI (``server ...``) in this process with the SQLite fix applied."""
    sqlite_immediate_transactions()
    from prefect.cli import app

    sys.argv = ["prefect", "server", *(sys.argv[1:] if argv is None else argv)]
    result = app()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
