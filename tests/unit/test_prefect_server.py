"""The Prefect server launcher: SQLite databases seeded from a migrated template."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from p3s.system.prefect_server import SQLITE_PREFIX, seed_sqlite


def test_a_new_sqlite_database_is_a_migrated_copy_and_an_old_one_is_left(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    target = tmp_path / "home" / "prefect.db"
    assert seed_sqlite(SQLITE_PREFIX + str(target), env)
    with sqlite3.connect(target) as db:
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert version and {"flow_run", "deployment", "work_pool", "events"} <= tables

    target.write_bytes(b"an existing database")
    assert not seed_sqlite(SQLITE_PREFIX + str(target), env)
    assert target.read_bytes() == b"an existing database"
    assert not seed_sqlite("postgresql+asyncpg://postgres@127.0.0.1:5432/x", env)


def test_a_request_that_finds_no_free_database_connection_is_answered_503() -> None:
    """Prefect's clients retry a 503 with backoff; the 500 Prefect gives a pool timeout they
    do not retry (flow runs and the pilot worker then failed under load)."""
    import asyncio

    import sqlalchemy.exc
    from prefect.server.api import server
    from starlette.requests import Request

    from p3s.system.prefect_server import pool_timeouts_retryable

    request = Request({"type": "http", "method": "GET", "path": "/api/flow_runs/x", "headers": []})
    timeout = sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")

    def status(exc: Exception) -> int:
        return asyncio.run(server.custom_internal_exception_handler(request, exc)).status_code

    assert status(timeout) == 500  # Prefect's own answer
    original = server.is_client_retryable_exception
    try:
        pool_timeouts_retryable()
        pool_timeouts_retryable()  # once is enough; again changes nothing
        assert status(timeout) == 503
        assert status(RuntimeError("a bug")) == 500  # other errors stay what they were
    finally:
        server.is_client_retryable_exception = original


def test_the_server_records_task_run_states_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect reads the recorder's batch from the variables the server is started with (one
    transaction per state made the recorder half the server's CPU of a DQM run)."""
    from prefect.settings import Settings as PrefectSettings

    from p3s.system.prefect_env import server_environment
    from p3s.system.settings import Settings

    settings = Settings(home=tmp_path, server={"task_run_batch": 64, "task_run_flush_seconds": 2})
    for key, value in server_environment(settings).items():
        if "TASK_RUN_RECORDER" in key:
            monkeypatch.setenv(key, value)
    recorder = PrefectSettings().server.services.task_run_recorder
    assert (recorder.batch_size, recorder.read_batch_size, recorder.flush_interval) == (64, 64, 2)


def test_runs_are_late_after_the_missions_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect reads the late-runs threshold from the variables the server is started with:
    a minute by default (the mission's latency target), not Prefect's 15 s."""
    from datetime import timedelta

    from prefect.settings import Settings as PrefectSettings

    from p3s.system.prefect_env import server_environment
    from p3s.system.settings import Settings

    for server, expected in (({}, 60), ({"late_after_seconds": 90}, 90)):
        env = server_environment(Settings(home=tmp_path, server=server))
        monkeypatch.setenv(
            "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS",
            env["PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS"],
        )
        late_runs = PrefectSettings().server.services.late_runs
        assert late_runs.after_seconds == timedelta(seconds=expected)
