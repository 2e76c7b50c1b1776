"""`p3s up --production`: the Prefect server on PostgreSQL and Redis, with run-history retention.

One system for the module, brought up by the CLI itself under a temporary home, a free port, a
PostgreSQL database of its own (created by `p3s up`) and a Redis database number of its own; both
are dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import redis

from p3s.jobs.model import P3SJob
from p3s.system.history import INDEXES, ensure_indexes
from p3s.system.settings import PACKAGED_PAYLOADS, Settings
from tests.conftest import POSTGRES_ADMIN, SCRIPTS, free_port, wait_for_runs

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
P3S = str(Path(sys.executable).parent / "p3s")
REDIS = "redis://127.0.0.1:6379"


def p3s(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([P3S, *args], env=env, capture_output=True, text=True, timeout=300)


def free_redis_db() -> int:
    """A Redis database number that holds nothing now (0 is left to `p3s up --production`)."""
    for number in range(15, 0, -1):
        if redis.Redis.from_url(f"{REDIS}/{number}").dbsize() == 0:
            return number
    raise RuntimeError("every Redis database 1..15 holds keys: flush one for the tests")


async def apg(sql: str, database: str = "postgres", *args: object) -> list:
    conn = await asyncpg.connect(POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{database}")
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def pg(sql: str, database: str = "postgres", *args: object) -> list:
    return asyncio.run(apg(sql, database, *args))


class Production:
    def __init__(self, settings: Settings, dbname: str, redis_db: int, up_output: str) -> None:
        self.settings = settings
        self.dbname = dbname
        self.redis = redis.Redis.from_url(f"{REDIS}/{redis_db}")
        self.up_output = up_output


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("p3s-production")
    dbname = f"p3s_prod_{uuid.uuid4().hex[:12]}"
    redis_db = free_redis_db()
    # Nothing of another stack of this session (its database, home, ports) may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "P3S_"))}
    env.update(
        {
            "P3S_HOME": str(home),
            "P3S_SERVER__PORT": str(free_port()),
            "P3S_SERVER__PRODUCTION_DATABASE_URL": (
                f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
            ),
            "P3S_SERVER__PRODUCTION_REDIS_URL": f"{REDIS}/{redis_db}",
            # Retention just above Prefect's 1 h minimum, looked at every 2 s.
            "P3S_SERVER__FLOW_RUN_RETENTION_DAYS": "0.05",
            "P3S_SERVER__VACUUM_SECONDS": "2",
            # The server trims its event stream of what every consumer has read each second
            # (60 s by default): the tests must read it as a consumer does.
            "PREFECT_REDIS_MESSAGING_CONSUMER_TRIM_EVERY": "1",
            "P3S_PAYLOAD_ROOTS": os.pathsep.join([str(PACKAGED_PAYLOADS), str(SCRIPTS)]),
        }
    )
    saved = dict(os.environ)
    try:
        up = p3s("up", "--production", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        os.environ.clear()
        os.environ.update({**env, "P3S_SERVER__PRODUCTION": "true"})
        settings = Settings()
        with temporary_settings(updates={PREFECT_API_URL: settings.api_url}):
            yield Production(settings, dbname, redis_db, up.stdout)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        p3s("down", env=env)
        pg(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        redis.Redis.from_url(f"{REDIS}/{redis_db}").flushdb()


def job(name: str, record: Path) -> P3SJob:
    return P3SJob(
        name=name,
        timeout=60,
        jobtype="test",
        payload=f"{SCRIPTS}/record_uuid.sh",
        priority=3,
        env={"P3S_RECORD_FILE": str(record)},
    )


@contextmanager
def stream_reader(client: redis.Redis) -> Iterator[Callable[[], list[dict]]]:
    """Read the events the server publishes on its Redis stream ``events`` from now on.

    As a consumer group of its own, as the server's services read the stream: the server
    trims messages that every group has been given (every 60 s), so a plain read afterwards
    may find them gone; a group's position holds that trim back.
    """
    assert client.xlen("events") > 0, "the server has published events since it started"
    group = f"p3s-test-{uuid.uuid4().hex[:8]}"
    client.xgroup_create("events", group, id="$")
    seen: list[dict] = []

    def read() -> list[dict]:
        while answer := client.xreadgroup(group, "test", {"events": ">"}, count=1000):
            entries = answer[0][1]
            if not entries:
                break
            seen.extend(json.loads(fields[b"data"]) for _, fields in entries)
        return seen

    try:
        yield read
    finally:
        client.xgroup_destroy("events", group)


def test_up_creates_the_database_and_points_the_server_at_postgres_and_redis(
    production: Production,
) -> None:
    assert f"PostgreSQL database '{production.dbname}' created" in production.up_output
    assert "Redis at" in production.up_output
    # Prefect made its schema in that database.
    tables = {r["tablename"] for r in pg("SELECT tablename FROM pg_tables", production.dbname)}
    assert {"flow_run", "flow_run_state", "events"} <= tables
    # ... and p3s added its run-history indexes to it, valid (built to the end).
    indexes = pg(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname LIKE 'ix_p3s_%' AND i.indisvalid",
        production.dbname,
    )
    assert {r["relname"] for r in indexes} == set(INDEXES)
    url = f"postgresql://postgres@127.0.0.1:5432/{production.dbname}"
    assert asyncio.run(ensure_indexes(url)) == []  # applying them again changes nothing
    # The server's consumers (event persister, triggers, ...) read the Redis stream as groups.
    groups = {g["name"].decode() for g in production.redis.xinfo_groups("events")}
    assert groups, "no consumer group reads the events stream"
    # Its connection pool to PostgreSQL is the one p3s sizes, not Prefect's 5 + 10.
    from p3s.stack import control

    proc = control.server_process(production.settings).process()
    assert proc is not None, "the server is not running"
    server_env = proc.environ()
    server = production.settings.server
    assert server_env["PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE"] == str(
        server.database_pool_size
    )
    assert server_env["PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW"] == str(
        server.database_max_overflow
    )


def test_jobs_run_and_their_state_events_pass_through_redis(
    production: Production, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from p3s.jobs.client import submit_jobs

    record = tmp_path / "record"

    async def _go() -> list:
        runs = await submit_jobs([job(f"prod-{i}", record) for i in range(3)])
        return await wait_for_runs([r.id for r in runs], 180)

    with stream_reader(production.redis) as read_stream:
        runs = asyncio.run(_go())
        assert [r.state.type.value for r in runs] == ["COMPLETED"] * 3
        assert sorted(record.read_text().split()) == sorted(str(r.id) for r in runs)
        ids = {str(r.id) for r in runs}

        def _published() -> set[str]:
            # A state's event is published after the state is stored: a run reads as
            # Completed a moment before its event is on the stream.
            for _ in range(60):
                found = {
                    e["resource"]["prefect.resource.id"].removeprefix("prefect.flow-run.")
                    for e in read_stream()
                    if e["event"] == "prefect.flow-run.Completed"
                }
                if ids <= found:
                    return found
                time.sleep(0.5)
            return found

        assert ids <= _published()  # published on Redis ...

    async def _persisted() -> set[str]:
        # ... and read back from it by the event persister into PostgreSQL.
        for _ in range(60):
            rows = await apg(
                "SELECT resource_id FROM events WHERE event = 'prefect.flow-run.Completed'",
                production.dbname,
            )
            found = {r["resource_id"].removeprefix("prefect.flow-run.") for r in rows}
            if ids <= found:
                return found
            await asyncio.sleep(1)
        return found

    assert ids <= asyncio.run(_persisted())

    async def _read() -> list:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs]))
            )

    assert len(asyncio.run(_read())) == 3


def test_an_event_triggers_an_automation_through_redis(
    production: Production, tmp_path: Path
) -> None:
    """Event in, reactive trigger (a Redis consumer), run-deployment action, job run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.events import Event
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    from p3s.jobs.client import ADHOC_DEPLOYMENT

    record = tmp_path / "record"
    marker = f"ping-{uuid.uuid4().hex[:8]}"

    async def _go() -> list:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(ADHOC_DEPLOYMENT)
            await client.create_automation(
                AutomationCore(
                    name=marker,
                    trigger=EventTrigger(
                        expect={f"p3s.test.{marker}"},
                        posture=Posture.Reactive,
                        threshold=1,
                        within=timedelta(0),
                    ),
                    actions=[
                        RunDeployment(
                            source="selected",
                            deployment_id=deployment.id,
                            parameters={"job": job(marker, record).model_dump()},
                        )
                    ],
                )
            )
            # The trigger service reloads automations on an event of their change: give it time
            # (over a minute on a loaded 2-core host).
            for _ in range(150):
                await asyncio.sleep(1)
                event = Event(
                    event=f"p3s.test.{marker}",
                    resource={"prefect.resource.id": f"p3s.test.{marker}"},
                )
                await client.request("POST", "/events", json=[event.model_dump(mode="json")])
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["p3s-job"])),
                    limit=200,
                )
                runs = [r for r in runs if r.name == marker]
                if runs:
                    return await wait_for_runs([runs[0].id], 180)
            raise AssertionError("the automation never created a flow run")

    with stream_reader(production.redis) as read_stream:
        (run,) = asyncio.run(_go())
        assert run.state.type.value == "COMPLETED"
        # The event is posted each second until the first run shows, so on a slow host a second
        # event may fire the automation again: each run then records its own id, once.
        recorded = record.read_text().split()
        assert str(run.id) in recorded and len(set(recorded)) == len(recorded)
        assert any(e["event"] == f"p3s.test.{marker}" for e in read_stream())


def test_the_server_vacuum_deletes_finished_runs_past_their_retention(
    production: Production,
) -> None:
    """A run that ended 3 hours ago is deleted (retention 1.2 h); a fresh one is kept."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Completed

    from p3s.jobs.client import ADHOC_DEPLOYMENT

    async def _go() -> tuple[bool, bool]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(ADHOC_DEPLOYMENT)
            old, fresh = [
                await client.create_flow_run_from_deployment(
                    deployment.id,
                    name=name,
                    state=Completed(),
                    parameters={"job": job(name, Path("/nonexistent")).model_dump()},
                )
                for name in ("old-run", "fresh-run")
            ]
            await apg(
                "UPDATE flow_run SET end_time = now() - interval '3 hours' WHERE id = $1",
                production.dbname,
                old.id,
            )
            for _ in range(90):
                try:
                    await client.read_flow_run(old.id)
                except ObjectNotFound:
                    break
                await asyncio.sleep(1)
            else:
                return False, True
            try:
                await client.read_flow_run(fresh.id)
            except ObjectNotFound:
                return True, False
            return True, True

    old_deleted, fresh_kept = asyncio.run(_go())
    assert old_deleted, "the vacuum did not delete a run past its retention within 90 s"
    assert fresh_kept
