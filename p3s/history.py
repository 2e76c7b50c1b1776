"""Run history that stays fast: the indexes p3s adds to Prefect's PostgreSQL tables.

Prefect indexes flow runs by time, state and deployment, but not by tag; p3s lists its jobs by
tags (``p3s-job``, ``jobtype:<type>``), which on a long history scans every run. The indexes
here are created ``CONCURRENTLY`` (no lock on the live tables) and ``IF NOT EXISTS``, so
applying them again is a no-op; their names start with ``ix_p3s_`` so that they are easy to
tell from Prefect's own (a Prefect migration never drops an index it does not know).
"""

from __future__ import annotations

import asyncpg

#: name -> CREATE INDEX statement (without CONCURRENTLY / IF NOT EXISTS).
INDEXES: dict[str, str] = {
    # `tags ?& array[...]` (FlowRunFilterTags.all_) and `?|` (any_): jsonb_ops GIN.
    "ix_p3s_flow_run__tags": "ON flow_run USING gin (tags)",
}


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy URL (postgresql+asyncpg://...) as a plain libpq/asyncpg DSN."""
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgresql") else url


async def ensure_indexes(url: str) -> list[str]:
    """Create the p3s indexes that are missing in the Prefect database at ``url``."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        present = {
            r["indexname"]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_p3s_%'"
            )
        }
        created = []
        for name, definition in INDEXES.items():
            if name in present:
                continue
            await conn.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}")
            created.append(name)
        return created
    finally:
        await conn.close()
