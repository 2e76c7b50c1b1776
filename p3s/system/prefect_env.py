"""The environment every Prefect process of this p3s home gets: one place derives it."""

from __future__ import annotations

import os

from p3s.system.backends import is_postgres
from p3s.system.settings import PROJECT_DIR, Settings


def client_environment(settings: Settings) -> dict[str, str]:
    """Variables that point Prefect clients (CLI, workers, flows) at this home's server."""
    return {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_API_URL": settings.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The server may answer 503 under bursts on SQLite: clients retry rather than fail.
        "PREFECT_CLIENT_MAX_RETRIES": "10",
        "P3S_PROJECT_DIR": str(PROJECT_DIR),
        "P3S_HOME": str(settings.home),
    }


def server_environment(settings: Settings) -> dict[str, str]:
    """Variables for ``prefect server start``."""
    return {
        **client_environment(settings),
        "PREFECT_API_DATABASE_CONNECTION_URL": settings.prefect_database_url,
        "PREFECT_SERVER_API_HOST": settings.server.host,
        "PREFECT_SERVER_API_PORT": str(settings.server.port),
        # SQLite on a shared disk: give writers time instead of failing at once.
        "PREFECT_API_DATABASE_TIMEOUT": "30",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": str(settings.server.late_after_seconds),
        **retention_environment(settings),
        **task_run_recorder_environment(settings),
        **redis_environment(settings.prefect_redis_url),
        **pool_environment(settings),
    }


def pool_environment(settings: Settings) -> dict[str, str]:
    """The server's connection pool to PostgreSQL (SQLite has no pool to size)."""
    if not is_postgres(settings.prefect_database_url):
        return {}
    return {
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": str(settings.server.database_pool_size),
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": str(
            settings.server.database_max_overflow
        ),
    }


def task_run_recorder_environment(settings: Settings) -> dict[str, str]:
    """Task-run states recorded in batches: one transaction per batch, not per state."""
    batch = str(settings.server.task_run_batch)
    return {
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": batch,
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": batch,
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": str(
            settings.server.task_run_flush_seconds
        ),
    }


def retention_environment(settings: Settings) -> dict[str, str]:
    """Prefect's own vacuum keeps the run history bounded (runs, logs, artifacts, events)."""
    server = settings.server
    env = {
        # ISO 8601: this timedelta setting refuses plain seconds.
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"PT{int(server.event_retention_days * 86400)}S",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS": str(server.vacuum_seconds),
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events",
    }
    if server.flow_run_retention_days > 0:
        days = server.flow_run_retention_days
        env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] = "events,flow_runs"
        env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] = str(int(days * 86400))
    return env


def redis_environment(redis_url: str | None) -> dict[str, str]:
    """Point the server's messaging, event ordering, leases and docket at Redis (prefect-redis).

    Without Redis these live in the server's memory: fine for one process, lost on restart.
    """
    if not redis_url:
        return {}
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": redis_url,
        "PREFECT_SERVER_DOCKET_URL": redis_url,
    }


def apply_client_environment(settings: Settings) -> None:
    """Point this process's Prefect client at the server (before Prefect reads its settings)."""
    os.environ.update(client_environment(settings))
