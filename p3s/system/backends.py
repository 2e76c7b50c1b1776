"""The production backends of the Prefect server: its PostgreSQL database and Redis.

``p3s up --production`` (or ``P3S_SERVER__PRODUCTION=true``) points the server at both; this
module makes sure they are there before the server starts: the database is created if missing
and Redis must answer a ping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy.engine import make_url

from p3s.system.settings import Settings

Report = Callable[[str], None]


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


async def _ensure_database(url: str) -> bool:
    """Create the database of ``url`` unless it exists; True when it was created."""
    import asyncpg

    target = make_url(url)
    admin = target.set(drivername="postgresql", database="postgres")
    dsn = admin.render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL at {target.host}:{target.port or 5432} refused a connection as "
            f"{target.username!r} ({exc}); start it, or set P3S_SERVER__DATABASE_URL"
        ) from exc
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", target.database
        )
        if exists:
            return False
        # CREATE DATABASE takes no bind parameters: quote the name as an identifier.
        quoted = '"' + str(target.database).replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await conn.close()


def ensure_postgres_database(url: str) -> bool:
    """Create the PostgreSQL database named by a SQLAlchemy ``url`` if it is missing."""
    return asyncio.run(_ensure_database(url))


def check_redis(url: str) -> None:
    """Fail with the URL and the fix unless Redis answers a ping."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(
            f"Redis at {url} does not answer ({exc}); start it, or set P3S_SERVER__REDIS_URL"
        ) from exc
    finally:
        client.close()


def prepare(settings: Settings, report: Report) -> None:
    """Create the server's PostgreSQL database if missing and check Redis; no-op on SQLite."""
    url = settings.prefect_database_url
    if is_postgres(url):
        created = ensure_postgres_database(url)
        name = make_url(url).database
        report(f"PostgreSQL database {name!r} {'created' if created else 'exists'}")
    redis_url = settings.prefect_redis_url
    if redis_url:
        check_redis(redis_url)
        report(f"Redis at {redis_url} answers (messaging, event ordering, leases, docket)")
