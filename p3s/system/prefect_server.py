"""``python -m p3s.system.prefect_server start ...``: ``prefect server start`` with writers
that queue on SQLite instead of failing.

Prefect opens its SQLite write transactions as ``BEGIN DEFERRED``: such a transaction reads,
then asks for the write lock, and when another connection committed in between SQLite answers
``database is locked`` at once, without waiting for its busy timeout (WAL "busy snapshot").
The API turns that into a 503, the client retries after 2, 4, 8... seconds, and a flow-run
creation or state change takes seconds to minutes whenever two writes meet (Prefect issue
#18934; measured here: creations of 2 to 121 s beside a busy pilot pool). ``BEGIN IMMEDIATE``
takes the write lock first, so a second writer waits (milliseconds) for the first.

A request that found no free database connection within the pool's timeout (the server
overloaded: 400 flow runs starting at once on two cores, measured) is answered 503, which
Prefect's clients retry with backoff, instead of 500, which they do not
(:func:`pool_timeouts_retryable`; Prefect issue #6492 reports the 500s).

Its API requests are counted by route (:mod:`p3s.system.request_counts`; ``kill -USR1`` the
server to have them written to ``$PREFECT_HOME/server-requests.json``).

Everything else is Prefect's own CLI.

A new SQLite database starts as a copy of a migrated template (:func:`seed_sqlite`), made once
per Prefect version: Prefect's ~200 migrations take 15 to 45 s on two cores, at every start of
a new home (each test server, each benchmark).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

SQLITE_PREFIX = "sqlite+aiosqlite:///"


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


def pool_timeouts_retryable() -> None:
    """Answer 503 (retry) rather than 500 when the database pool has no free connection."""
    import sqlalchemy.exc
    from prefect.server.api import server

    original = server.is_client_retryable_exception
    if getattr(original, "_p3s_pool_timeouts", False):
        return

    def is_client_retryable_exception(exc: Exception) -> bool:
        return isinstance(exc, sqlalchemy.exc.TimeoutError) or original(exc)

    is_client_retryable_exception._p3s_pool_timeouts = True  # type: ignore[attr-defined]
    server.is_client_retryable_exception = is_client_retryable_exception


def template_cache() -> Path:
    """Where migrated SQLite templates are kept (``$XDG_CACHE_HOME/p3s``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p3s"


def seed_sqlite(database_url: str, env: dict[str, str]) -> bool:
    """Copy a migrated template to a SQLite database that does not exist yet; the template is
    made first if this Prefect version has none. Returns whether a copy was made."""
    if not database_url.startswith(SQLITE_PREFIX):
        return False
    target = Path(database_url.removeprefix(SQLITE_PREFIX))
    if target.exists():
        return False
    import prefect

    template = template_cache() / f"prefect-{prefect.__version__}.db"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        result = subprocess.run(
            [sys.executable, "-m", "p3s.system.prefect_server", "database", "upgrade", "-y"],
            env={**env, "PREFECT_API_DATABASE_CONNECTION_URL": SQLITE_PREFIX + str(partial)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:  # the server will migrate its own database instead
            partial.unlink(missing_ok=True)
            return False
        os.replace(partial, template)  # whole, or not there: concurrent makers are safe
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(template, partial)
    os.replace(partial, target)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run Prefect's CLI (``server ...``) in this process with the SQLite fix applied."""
    from p3s.system.request_counts import count_requests

    sqlite_immediate_transactions()
    pool_timeouts_retryable()
    count_requests()
    from prefect.cli import app

    sys.argv = ["prefect", "server", *(sys.argv[1:] if argv is None else argv)]
    result = app()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
