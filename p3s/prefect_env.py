"""The environment every Prefect process of this p3s home gets: one place derives it."""

from __future__ import annotations

import os

from p3s.settings import PROJECT_DIR, Settings


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
    }


def apply_client_environment(settings: Settings) -> None:
    """Point this process's Prefect client at the server (before Prefect reads its settings)."""
    os.environ.update(client_environment(settings))
