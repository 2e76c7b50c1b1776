"""Shared fixtures: a real Prefect server (SQLite, then PostgreSQL) with the p3s pool and worker.

The server, the work pool, the deployments and the worker are brought up by the same code as
``p3s up`` (``p3s.stack.control``), under a temporary home and a free port.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p3s.system.ports import free_port
from p3s.system.prefect_env import client_environment
from p3s.system.settings import PACKAGED_PAYLOADS, Settings

TESTS = Path(__file__).resolve().parent
SCRIPTS = TESTS / "payload_scripts"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Stack:
    """A running p3s system for tests: its settings, environment and backend name."""

    settings: Settings
    env: dict[str, str]
    backend: str

    @property
    def api_url(self) -> str:
        return self.settings.api_url


def _noop(_: str) -> None:
    pass


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A real Prefect server with the p3s work pool, its deployments and its pilots."""
    from p3s.stack import control

    backend = request.param
    home = tmp_path_factory.mktemp(f"p3s-{backend}")
    database_url = None
    dbname = f"p3s_test_{uuid.uuid4().hex[:12]}"
    if backend == "postgresql":
        asyncio.run(_pg(f'CREATE DATABASE "{dbname}"'))
        database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    port = free_port()
    env = {
        "P3S_HOME": str(home),
        "P3S_SERVER__PORT": str(port),
        "P3S_UI__PORT": str(free_port()),
        "P3S_PAYLOAD_ROOTS": os.pathsep.join(
            [str(PACKAGED_PAYLOADS), str(SCRIPTS), "/usr/bin", "/bin"]
        ),
        "P3S_KILL_GRACE_SECONDS": "1",
        "P3S_POOL__CONCURRENCY": "4",
        # The pool's pilots (the default worker): two kept warm, up to four with a backlog.
        "P3S_PILOTS__MIN_PILOTS": "2",
        "P3S_PILOTS__MAX_PILOTS": "4",
        "P3S_PILOTS__IDLE_SECONDS": "120",
    }
    if database_url:
        env["P3S_SERVER__DATABASE_URL"] = database_url
    saved = dict(os.environ)
    os.environ.update(env)
    settings = Settings()
    env.update(client_environment(settings))
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        control.up(settings, _noop)
        # Prefect read its settings when it was first imported: point this process's client
        # at the stack explicitly.
        with temporary_settings(updates={PREFECT_API_URL: settings.api_url}):
            yield Stack(settings=settings, env=env, backend=backend)
    finally:
        control.down(settings, _noop)
        os.environ.clear()
        os.environ.update(saved)
        if backend == "postgresql":
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


async def wait_for_runs(run_ids: list, timeout_s: float = 240.0) -> list:
    """Poll until every flow run is in a final state; returns the runs."""
    from p3s.jobs.client import wait_for_jobs

    return await wait_for_jobs(run_ids, timeout_s)


async def final_task_runs(flow_run_ids: list, timeout_s: float = 15.0) -> list:
    """The task runs of finished flow runs, once the server has recorded their final states
    (it records task-run states in batches, a second or so after the run's own)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = asyncio.get_running_loop().time() + timeout_s
    async with get_client() as client:
        while True:
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
            )
            settled = all(t.state is not None and t.state.is_final() for t in tasks)
            if settled or asyncio.get_running_loop().time() > deadline:
                return tasks
            await asyncio.sleep(0.25)
