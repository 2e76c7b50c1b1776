"""API latency with a long run history: 500,000 flow runs in PostgreSQL beside an empty database.

A DQM system that runs around the clock makes tens of thousands of flow runs a day. This
benchmark starts a Prefect server on a fresh PostgreSQL database (the p3s production backend),
creates the p3s work pool, its flows and deployments through the API, then:

1. measures the calls that the Prefect UI, the p3s content pages and the workers make on the
   database as it is (no runs: the baseline);
2. bulk-loads ``--runs`` flow runs straight into Prefect's tables with SQL (far faster than the
   API): ``--days`` of history, a DQM-like mix of flows and deployments (the four DQM flows, the
   file life cycle and transport flows, p3s jobs with ``jobtype:`` tags), final states with a
   realistic share of failures (Failed, Corrupt, TimeLimit, Crashed, Cancelled), a live head of
   Scheduled, Late, Pending and Running runs, a Running and a final state row per run
   (``state_id`` pointing at the final one), ``--task-runs`` task runs per finished run and one
   state event per run of the last ``--event-days`` days; then ``ANALYZE``;
3. measures the same calls again, then once more after ``p3s.system.history.ensure_indexes`` added
   the p3s indexes to Prefect's tables.

Each call is made ``--repeat`` times one after another (after one warm-up); p50 and p95 of the
wall-clock latency seen by an HTTP client on the same host. The last line is a ``BENCH`` JSON
summary for ``bench/run_all.py``.

    .venv/bin/python bench/history.py [--runs 500000] [--repeat 10] [--task-runs 1] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from benchlib import free_port, pct

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from p3s import system  # noqa: E402
from p3s.system.history import INDEXES, ensure_indexes  # noqa: E402
from p3s.system.settings import Settings  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
#: (flow, deployment, deployment tags, p3s job types): the flows a DQM day runs.
FLOWS = [
    ("dqm-tpc-monitor", "inbox", ["p3s", "dqm"], []),
    ("dqm-purity", "inbox", ["p3s", "dqm"], []),
    ("dqm-evdisplay", "inbox", ["p3s", "dqm"], []),
    ("dqm-beam", "inbox", ["p3s", "dqm"], []),
    ("p3s-job", "adhoc", ["p3s", "p3s-job"], ["evdisp", "purity", "monitor", "reco", "test"]),
]
#: The calls whose p95 goes into bench/RESULTS.md (every call is printed).
HEADLINE = (
    "flow_runs/filter newest 50",
    "flow_runs/filter jobtype tag",
    "flow_runs/paginate page 200",
    "flow_runs/count failed 24h",
    "ui/flow_runs/history 24h",
    "flow_runs/history 2h/1min",
    "work_pools/get_scheduled_flow_runs",
    "events/filter 24h",
    "content /api/summary.json",
    "content /dashboard, pages every 1 s",
    "content /api/jobs.json",
)
#: Refresh period of the content app for "pages every 1 s" (s): its shared summary is then
#: recomputed in the background about every 2 s, as often as this host can.
SHIFTER_REFRESH_S = 4
#: The tables the bulk load writes.
LOADED_TABLES = (
    "flow_run",
    "flow_run_state",
    "task_run",
    "task_run_state",
    "events",
    "event_resources",
)
#: The live head of the history: runs not finished yet, by kind.
LIVE = {"scheduled": 300, "late": 50, "pending": 50, "running": 100}


# -- fixtures through the API ----------------------------------------------------------------


async def create_fixtures(api: str) -> list[dict]:
    """The p3s flows and their deployments on the pool's queues; one row per deployment."""
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        pool = "p3s"
        queues = {
            q["name"]: q["id"]
            for q in (await client.post(f"/work_pools/{pool}/queues/filter", json={})).json()
        }
        rows = []
        for k, (flow, deployment, tags, jobtypes) in enumerate(FLOWS):
            flow_id = (await client.post("/flows/", json={"name": flow})).json()["id"]
            queue = "priority-3" if flow == "p3s-job" else "priority-5"
            body = {
                "name": deployment,
                "flow_id": flow_id,
                "work_pool_name": pool,
                "work_queue_name": queue,
                "tags": tags,
                "entrypoint": "flows/x.py:x",
                "enforce_parameter_schema": False,
            }
            response = await client.post("/deployments/", json=body)
            response.raise_for_status()
            rows.append(
                {
                    "k": k,
                    "flow_id": uuid.UUID(flow_id),
                    "deployment_id": uuid.UUID(response.json()["id"]),
                    "queue_id": uuid.UUID(queues[queue]),
                    "queue_name": queue,
                    "tags": json.dumps(tags),
                    "jobtypes": jobtypes,
                    "flow": flow,
                }
            )
        return rows


# -- the bulk load -----------------------------------------------------------------------------

RUNS_SQL = """
CREATE TEMP TABLE bench_runs AS
SELECT i, id, state_id, running_state_id, kind, r, t0, dur, k,
       CASE kind
           WHEN 'scheduled' THEN 'SCHEDULED' WHEN 'late' THEN 'SCHEDULED'
           WHEN 'pending' THEN 'PENDING' WHEN 'running' THEN 'RUNNING'
           ELSE CASE WHEN r < 0.93 THEN 'COMPLETED' WHEN r < 0.975 THEN 'FAILED'
                     WHEN r < 0.99 THEN 'CRASHED' ELSE 'CANCELLED' END END AS type,
       CASE kind
           WHEN 'scheduled' THEN 'Scheduled' WHEN 'late' THEN 'Late'
           WHEN 'pending' THEN 'Pending' WHEN 'running' THEN 'Running'
           ELSE CASE WHEN r < 0.93 THEN 'Completed' WHEN r < 0.955 THEN 'Failed'
                     WHEN r < 0.97 THEN 'Corrupt' WHEN r < 0.975 THEN 'TimeLimit'
                     WHEN r < 0.99 THEN 'Crashed' ELSE 'Cancelled' END END AS name,
       CASE WHEN kind IN ('final', 'running') THEN t0 + delay END AS started,
       CASE WHEN kind = 'final' THEN t0 + delay + dur END AS ended
FROM (
    SELECT i, kind, r, dur, delay, i % 7 AS k,
           gen_random_uuid() AS id,
           gen_random_uuid() AS state_id,
           gen_random_uuid() AS running_state_id,
           CASE kind
               WHEN 'scheduled' THEN now() + (i * 10) * interval '1 second'
               WHEN 'late' THEN now() - (5 + random() * 30) * interval '1 minute'
               WHEN 'pending' THEN now() - random() * interval '1 minute'
               WHEN 'running' THEN now() - random() * interval '5 minutes'
               -- a file every few tens of seconds, its flow runs spread over --days days
               ELSE now() - (random() * {days}) * interval '1 day' - interval '15 minutes'
           END AS t0
    FROM (
        SELECT i, random() AS r,
               (5 + random() * 120) * interval '1 second' AS dur,
               (0.5 + random() * 8) * interval '1 second' AS delay,
               CASE WHEN i <= {b0} THEN 'scheduled' WHEN i <= {b1} THEN 'late'
                    WHEN i <= {b2} THEN 'pending' WHEN i <= {b3} THEN 'running'
                    ELSE 'final' END AS kind
        FROM generate_series(1, {runs}) AS i
    ) AS raw
) AS timed;
CREATE INDEX ON bench_runs (k);
ANALYZE bench_runs;
"""

FLOW_RUN_SQL = """
INSERT INTO flow_run (
    id, created, updated, name, state_type, state_name, state_timestamp, run_count,
    expected_start_time, next_scheduled_start_time, start_time, end_time, total_run_time,
    flow_id, deployment_id, work_queue_name, work_queue_id, parameters, tags,
    empirical_policy, state_id, idempotency_key, created_by, job_variables, context)
SELECT b.id, b.t0 - interval '1 second', coalesce(b.ended, b.started, b.t0),
       'np04-' || to_char(b.i, 'FM0000000'),
       b.type::state_type, b.name, coalesce(b.ended, b.started, b.t0),
       CASE WHEN b.started IS NULL THEN 0 ELSE 1 END,
       b.t0, CASE WHEN b.type = 'SCHEDULED' THEN b.t0 END, b.started, b.ended,
       CASE WHEN b.ended IS NULL THEN interval '0' ELSE b.dur END,
       d.flow_id, d.deployment_id, d.queue_name, d.queue_id,
       CASE WHEN d.jobtypes = '{}' THEN jsonb_build_object(
                'file_url', 'root://eospublic.cern.ch//eos/np04/claimed/np04_raw_run'
                || to_char(4000 + b.i / 4000, 'FM000000') || '_'
                || to_char(b.i % 4000, 'FM0000') || '_dl1.h5')
            ELSE jsonb_build_object('job', jsonb_build_object(
                'name', 'job-' || b.i, 'timeout', 600,
                'jobtype', d.jobtypes[1 + b.i % cardinality(d.jobtypes)],
                'payload', '/opt/p3s/payloads/run.sh', 'priority', 3, 'env', '{}'::jsonb))
       END,
       CASE WHEN d.jobtypes = '{}' THEN d.tags
            ELSE d.tags || jsonb_build_array(
                'jobtype:' || d.jobtypes[1 + b.i % cardinality(d.jobtypes)]) END,
       '{"retries": 0, "retry_delay": 0}'::jsonb, b.state_id,
       'bench-' || b.i,
       jsonb_build_object('id', d.deployment_id, 'type', 'DEPLOYMENT',
                          'display_value', d.deployment_name),
       '{}'::jsonb, '{}'::jsonb
FROM bench_runs b JOIN bench_dep d ON d.k = b.k
"""

FLOW_RUN_STATE_SQL = """
INSERT INTO flow_run_state (id, created, updated, type, timestamp, name, message,
                            state_details, flow_run_id)
SELECT state_id, coalesce(ended, started, t0), coalesce(ended, started, t0), type::state_type,
       coalesce(ended, started, t0), name,
       CASE WHEN type = 'FAILED' THEN name || ': payload exited with code 3' END,
       jsonb_build_object('flow_run_id', id), id
FROM bench_runs;
INSERT INTO flow_run_state (id, created, updated, type, timestamp, name, state_details,
                            flow_run_id)
SELECT running_state_id, started, started, 'RUNNING', started, 'Running',
       jsonb_build_object('flow_run_id', id), id
FROM bench_runs WHERE kind = 'final';
"""

TASK_RUN_SQL = """
WITH inserted AS (
    INSERT INTO task_run (
        id, created, updated, name, state_type, state_name, state_timestamp, run_count,
        expected_start_time, start_time, end_time, total_run_time, task_key, dynamic_key,
        flow_run_id, state_id, tags, empirical_policy, task_inputs, flow_run_run_count)
    SELECT gen_random_uuid(), b.started, b.ended, t.task || '-' || j, 'COMPLETED',
           'Completed', b.ended, 1, b.started, b.started, b.ended, b.dur / {task_runs},
           t.task, '0', b.id, gen_random_uuid(), '[]', '{}', '{}', 1
    FROM bench_runs b
    CROSS JOIN generate_series(1, {task_runs}) AS j
    CROSS JOIN LATERAL (
        SELECT (ARRAY['stage_in', 'payload', 'stage_out', 'catalog'])[1 + (j - 1) % 4]
               || CASE WHEN j > 4 THEN '-' || j ELSE '' END AS task) AS t
    WHERE b.kind = 'final'
    RETURNING id, state_id, end_time
)
INSERT INTO task_run_state (id, created, updated, type, timestamp, name, state_details,
                            task_run_id)
SELECT state_id, end_time, end_time, 'COMPLETED', end_time, 'Completed',
       jsonb_build_object('task_run_id', id), id
FROM inserted
"""

EVENTS_SQL = """
CREATE TEMP TABLE bench_events AS
SELECT gen_random_uuid() AS event_id, b.id AS run_id, b.name AS state_name, b.type AS state_type,
       coalesce(b.ended, b.started, b.t0) AS occurred, b.i, d.flow_id, d.flow,
       d.deployment_id, d.deployment_name, d.queue_id, d.queue_name
FROM bench_runs b JOIN bench_dep d ON d.k = b.k
WHERE coalesce(b.ended, b.started, b.t0) > now() - {event_days} * interval '1 day';
INSERT INTO events (occurred, event, resource_id, resource, related_resource_ids, related,
                    payload, received, recorded, id)
SELECT occurred, 'prefect.flow-run.' || state_name, 'prefect.flow-run.' || run_id,
       jsonb_build_object('prefect.resource.id', 'prefect.flow-run.' || run_id,
                          'prefect.resource.name', 'np04-' || to_char(i, 'FM0000000'),
                          'prefect.state-name', state_name, 'prefect.state-type', state_type),
       jsonb_build_array('prefect.flow.' || flow_id, 'prefect.deployment.' || deployment_id,
                         'prefect.work-queue.' || queue_id),
       jsonb_build_array(
           jsonb_build_object('prefect.resource.id', 'prefect.flow.' || flow_id,
                              'prefect.resource.role', 'flow', 'prefect.resource.name', flow),
           jsonb_build_object('prefect.resource.id', 'prefect.deployment.' || deployment_id,
                              'prefect.resource.role', 'deployment',
                              'prefect.resource.name', deployment_name),
           jsonb_build_object('prefect.resource.id', 'prefect.work-queue.' || queue_id,
                              'prefect.resource.role', 'work-queue',
                              'prefect.resource.name', queue_name)),
       jsonb_build_object('intended', jsonb_build_object('to', state_type)),
       occurred, occurred, event_id
FROM bench_events;
INSERT INTO event_resources (occurred, resource_id, resource_role, resource, event_id)
SELECT occurred, 'prefect.flow-run.' || run_id, '',
       json_build_object('prefect.resource.id', 'prefect.flow-run.' || run_id), event_id
FROM bench_events
UNION ALL
SELECT occurred, 'prefect.flow.' || flow_id, 'flow',
       json_build_object('prefect.resource.id', 'prefect.flow.' || flow_id), event_id
FROM bench_events
UNION ALL
SELECT occurred, 'prefect.deployment.' || deployment_id, 'deployment',
       json_build_object('prefect.resource.id', 'prefect.deployment.' || deployment_id), event_id
FROM bench_events;
"""


async def bulk_load(
    dsn: str, deps: list[dict], runs: int, days: float, task_runs: int, event_days: float
) -> dict[str, float]:
    """Insert the history; returns seconds per step."""
    steps: dict[str, float] = {}
    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        # flow_run.state_id and flow_run_state.flow_run_id point at each other: load both
        # with the foreign-key triggers off (as a restore does), consistent by construction.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SELECT setseed(0.42)")
        await conn.execute(
            "CREATE TEMP TABLE bench_dep (k int, flow_id uuid, deployment_id uuid, "
            "queue_id uuid, queue_name text, tags jsonb, jobtypes text[], flow text, "
            "deployment_name text)"
        )
        await conn.executemany(
            "INSERT INTO bench_dep VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)",
            [
                (
                    d["k"],
                    d["flow_id"],
                    d["deployment_id"],
                    d["queue_id"],
                    d["queue_name"],
                    d["tags"],
                    d["jobtypes"],
                    d["flow"],
                    f"{d['flow']}/{FLOWS[d['k']][1]}",
                )
                for d in deps
            ],
        )
        live = list(LIVE.values())
        bounds = [sum(live[: n + 1]) for n in range(len(live))]
        # Numbers only (ints and floats parsed by argparse) are formatted into the SQL.
        numbers = {
            "days": float(days),
            "runs": int(runs),
            "task_runs": int(task_runs),
            "event_days": float(event_days),
            **{f"b{n}": int(b) for n, b in enumerate(bounds)},
        }
        timed = [
            ("runs", RUNS_SQL),
            ("flow_run", FLOW_RUN_SQL),
            ("flow_run_state", FLOW_RUN_STATE_SQL),
        ]
        if task_runs > 0:
            timed += [("task_run", TASK_RUN_SQL)]
        if event_days > 0:
            timed += [("events", EVENTS_SQL)]
        # Building an index once over the loaded rows is far faster than updating it per row:
        # Prefect's secondary indexes are dropped, then rebuilt from their own definitions.
        indexes = await conn.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public'"
            " AND i.tablename = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM pg_constraint c"
            " WHERE c.conname = i.indexname)",
            list(LOADED_TABLES),
        )
        await conn.execute("SET maintenance_work_mem = '256MB'; SET synchronous_commit = off")
        for row in indexes:
            await conn.execute(f'DROP INDEX "{row["indexname"]}"')
        for name, sql in timed:
            t0 = time.perf_counter()
            for key, value in numbers.items():
                sql = sql.replace("{" + key + "}", str(value))
            await conn.execute(sql)
            steps[name] = time.perf_counter() - t0
            print(f"  loaded {name:<15} {steps[name]:7.1f} s", flush=True)
        t0 = time.perf_counter()
        for row in indexes:
            await conn.execute(row["indexdef"])
        steps["indexes"] = time.perf_counter() - t0
        print(f"  rebuilt {len(indexes)} indexes in {steps['indexes']:.1f} s", flush=True)
        await conn.execute("SET session_replication_role = origin")
        # As autovacuum would have left a long-lived database: statistics and visibility map.
        t0 = time.perf_counter()
        for table in LOADED_TABLES:
            await conn.execute(f"VACUUM ANALYZE {table}")
        steps["vacuum"] = time.perf_counter() - t0
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM flow_run) AS flow_runs,"
            " (SELECT count(*) FROM flow_run_state) AS states,"
            " (SELECT count(*) FROM task_run) AS task_runs,"
            " (SELECT count(*) FROM events) AS events,"
            " (SELECT count(*) FROM flow_run f JOIN flow_run_state s ON s.id = f.state_id"
            "  AND s.flow_run_id = f.id) AS consistent,"
            " pg_size_pretty(pg_database_size(current_database())) AS size"
        )
        print(f"  database now: {dict(counts)}", flush=True)
        if counts["consistent"] != counts["flow_runs"]:
            raise RuntimeError("some flow runs' state_id does not point at their own state")
    finally:
        await conn.close()
    return steps


# -- the calls ---------------------------------------------------------------------------------


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def calls(deps: list[dict]) -> dict[str, tuple[str, str, Callable[[], dict | None]]]:
    """Name -> (method, path, body factory): what the UI, the content pages and workers ask."""
    now = datetime.now(UTC)
    day, week = now - timedelta(days=1), now - timedelta(days=7)
    job_deployment = str(next(d["deployment_id"] for d in deps if d["flow"] == "p3s-job"))
    failed = {"state": {"type": {"any_": ["FAILED", "CRASHED"]}}}
    return {
        # Prefect UI, runs page: newest first, a page of 50, its count and the scatter plot.
        "flow_runs/filter newest 50": (
            "POST",
            "/flow_runs/filter",
            lambda: {"sort": "START_TIME_DESC", "limit": 50},
        ),
        "flow_runs/filter failed 24h": (
            "POST",
            "/flow_runs/filter",
            lambda: {
                "sort": "START_TIME_DESC",
                "limit": 50,
                "flow_runs": {**failed, "start_time": {"after_": iso(day)}},
            },
        ),
        "flow_runs/filter jobtype tag": (
            "POST",
            "/flow_runs/filter",
            lambda: {
                "sort": "EXPECTED_START_TIME_DESC",
                "limit": 50,
                "flow_runs": {"tags": {"all_": ["p3s-job", "jobtype:evdisp"]}},
            },
        ),
        "flow_runs/paginate page 1": (
            "POST",
            "/flow_runs/paginate",
            lambda: {"sort": "START_TIME_DESC", "limit": 10, "page": 1},
        ),
        "flow_runs/paginate page 200": (
            "POST",
            "/flow_runs/paginate",
            lambda: {"sort": "START_TIME_DESC", "limit": 10, "page": 200},
        ),
        "flow_runs/count all": ("POST", "/flow_runs/count", lambda: {}),
        "flow_runs/count failed 24h": (
            "POST",
            "/flow_runs/count",
            lambda: {"flow_runs": {**failed, "start_time": {"after_": iso(day)}}},
        ),
        "flow_runs/count completed 7d": (
            "POST",
            "/flow_runs/count",
            lambda: {
                "flow_runs": {
                    "state": {"type": {"any_": ["COMPLETED"]}},
                    "expected_start_time": {"after_": iso(week)},
                }
            },
        ),
        "ui/flow_runs/history 24h": (
            "POST",
            "/ui/flow_runs/history",
            lambda: {
                "sort": "EXPECTED_START_TIME_DESC",
                "limit": 1000,
                "flow_runs": {"expected_start_time": {"after_": iso(day), "before_": iso(now)}},
            },
        ),
        # Prefect UI dashboard and the p3s content dashboard: runs by state in buckets.
        "flow_runs/history 24h/1h": (
            "POST",
            "/flow_runs/history",
            lambda: {
                "history_start": iso(day),
                "history_end": iso(now),
                "history_interval_seconds": 3600,
            },
        ),
        "flow_runs/history 2h/1min": (
            "POST",
            "/flow_runs/history",
            lambda: {
                "history_start": iso(now - timedelta(hours=2)),
                "history_end": iso(now),
                "history_interval_seconds": 60,
            },
        ),
        "ui/task_runs/dashboard/counts": (
            "POST",
            "/ui/task_runs/dashboard/counts",
            lambda: {"task_runs": {"start_time": {"after_": iso(day)}}},
        ),
        "task_runs/count 24h": (
            "POST",
            "/task_runs/count",
            lambda: {"task_runs": {"start_time": {"after_": iso(day)}}},
        ),
        # Workers: the pool's next runs (every poll of every worker).
        "work_pools/get_scheduled_flow_runs": (
            "POST",
            "/work_pools/p3s/get_scheduled_flow_runs",
            lambda: {"scheduled_before": iso(datetime.now(UTC) + timedelta(seconds=10))},
        ),
        "deployments/filter": ("POST", "/deployments/filter", lambda: {"limit": 50}),
        "deployment runs newest 10": (
            "POST",
            "/flow_runs/filter",
            lambda: {
                "sort": "START_TIME_DESC",
                "limit": 10,
                "deployments": {"id": {"any_": [job_deployment]}},
            },
        ),
        "flows/filter": ("POST", "/flows/filter", lambda: {"limit": 50}),
        "events/filter 24h": (
            "POST",
            "/events/filter",
            lambda: {
                "filter": {"occurred": {"since": iso(day), "until": iso(now)}, "order": "DESC"},
                "limit": 50,
            },
        ),
        "events/filter p3s.* 24h": (
            "POST",
            "/events/filter",
            lambda: {
                "filter": {
                    "occurred": {"since": iso(day), "until": iso(now)},
                    "event": {"prefix": ["p3s."]},
                    "order": "DESC",
                },
                "limit": 50,
            },
        ),
    }


async def time_call(
    fn: Callable[[], Awaitable[httpx.Response]], repeat: int, gap_s: float = 0.0
) -> list[float]:
    response = await fn()  # warm-up: connection, plan cache
    response.raise_for_status()
    latencies = []
    for _ in range(repeat):
        await asyncio.sleep(gap_s)
        t0 = time.perf_counter()
        response = await fn()
        latencies.append(time.perf_counter() - t0)
        response.raise_for_status()
    return latencies


async def measure(
    settings: Settings, deps: list[dict], repeat: int, content_repeat: int
) -> dict[str, list[float]]:
    """Latencies of every call, API and content pages."""
    from p3s.ui_extensions.app import create_app

    found: dict[str, list[float]] = {}
    async with httpx.AsyncClient(base_url=settings.api_url, timeout=300) as client:
        for name, (method, path, body) in calls(deps).items():
            found[name] = await time_call(
                lambda m=method, p=path, b=body: client.request(m, p, json=b()), repeat
            )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://content") as content:
        pages = {
            "content /api/summary.json": lambda: (
                "/api/summary.json?at=" + datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
            "content /api/jobs.json": lambda: "/api/jobs.json",
            "content /api/jobs.json failed p20": lambda: "/api/jobs.json?state=failed&page=20",
        }
        for name, url in pages.items():
            found[name] = await time_call(lambda u=url: content.get(u()), content_repeat)
    # What shifters see: the dashboard (shared summary, refreshed in the background) asked
    # for every second while the app recomputes its summary as often as it may.
    ui = settings.ui.model_copy(update={"refresh_seconds": SHIFTER_REFRESH_S})
    app = create_app(settings.model_copy(update={"ui": ui}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://content") as content:
        found["content /dashboard, pages every 1 s"] = await time_call(
            lambda: content.get("/dashboard"), 4 * content_repeat, gap_s=1.0
        )
    return found


# -- the run -----------------------------------------------------------------------------------


def report(phases: dict[str, dict[str, list[float]]]) -> list[dict]:
    names = list(next(iter(phases.values())))
    labels = list(phases)
    header = f"{'call':<38}" + "".join(f"{label + ' p50/p95 ms':>26}" for label in labels)
    print("\n" + header + f"{'ratio p95':>11}")
    rows = []
    for name in names:
        cells, row = "", {"call": name}
        for label in labels:
            values = phases[label][name]
            p50, p95 = pct(values, 0.5) * 1000, pct(values, 0.95) * 1000
            cells += f"{p50:>15.1f} /{p95:>8.1f}"
            row[label] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1)}
        ratio = row[labels[-1]]["p95_ms"] / max(row[labels[0]]["p95_ms"], 0.1)
        row["ratio_p95"] = round(ratio, 1)
        print(f"{name:<38}{cells}{ratio:>10.1f}x")
        rows.append(row)
    return rows


def figures(rows: list[dict], runs: int) -> list[dict]:
    """The headline calls' p50 and p95 with the p3s indexes, beside the empty database."""
    found = []
    for row in rows:
        if row["call"] not in HEADLINE:
            continue
        for q in ("p50", "p95"):
            found.append(
                {
                    "figure": f"{row['call']} {q} (ms, {runs} runs)",
                    "value": row["loaded+p3s"][f"{q}_ms"],
                    "baseline": row["empty"][f"{q}_ms"],
                    "baseline_label": "empty database",
                }
            )
    return found


async def drop_p3s_indexes(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name in INDEXES:
            await conn.execute(f"DROP INDEX IF EXISTS {name}")
    finally:
        await conn.close()


async def drop(dbname: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=500_000, help="flow runs to load")
    parser.add_argument("--days", type=float, default=35.0, help="history they span (days)")
    parser.add_argument("--task-runs", type=int, default=1, help="task runs per finished run")
    parser.add_argument("--event-days", type=float, default=7.0, help="days of state events")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per API call")
    parser.add_argument(
        "--content-repeat", type=int, default=5, help="timed calls per content page (slower)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if args.runs < sum(LIVE.values()) + 1000:
        parser.error(f"--runs must be at least {sum(LIVE.values()) + 1000}")

    dbname = f"p3s_bench_history_{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix="p3s-bench-history-"))
    settings = Settings(
        home=home,
        server={
            "port": free_port(),
            "database_url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}",
            # Keep the loaded history: the server's vacuum must not delete it meanwhile.
            "flow_run_retention_days": 3650,
            "event_retention_days": 3650,
        },
    )
    os.environ["PREFECT_API_URL"] = settings.api_url
    load = os.getloadavg()[0]
    print(f"database {dbname}; Prefect server on {settings.api_url}; load {load:.1f}", flush=True)
    phases: dict[str, dict[str, list[float]]] = {}
    steps: dict[str, float] = {}
    try:
        system.start_server(settings, lambda line: print("  " + line, flush=True))
        system.setup_work_pool(settings, lambda line: print("  " + line, flush=True))
        deps = asyncio.run(create_fixtures(settings.api_url))
        # start_server added the p3s indexes: measure Prefect's own first, then with them.
        asyncio.run(drop_p3s_indexes(f"{PG}/{dbname}"))
        print("measuring on the empty database ...", flush=True)
        phases["empty"] = asyncio.run(measure(settings, deps, args.repeat, args.content_repeat))
        print(f"loading {args.runs} flow runs over {args.days:g} days ...", flush=True)
        t0 = time.perf_counter()
        steps = asyncio.run(
            bulk_load(f"{PG}/{dbname}", deps, args.runs, args.days, args.task_runs, args.event_days)
        )
        print(f"  loaded in {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"measuring with {args.runs} runs (Prefect's indexes only) ...", flush=True)
        phases["loaded"] = asyncio.run(measure(settings, deps, args.repeat, args.content_repeat))
        created = asyncio.run(ensure_indexes(f"{PG}/{dbname}"))
        print(f"p3s indexes: {', '.join(created) or 'none new'}", flush=True)
        print(f"measuring with {args.runs} runs and the p3s indexes ...", flush=True)
        phases["loaded+p3s"] = asyncio.run(
            measure(settings, deps, args.repeat, args.content_repeat)
        )
    finally:
        system.server_process(settings).stop()
        if not args.keep:
            asyncio.run(drop(dbname))
    rows = report(phases)
    summary = {
        "bench": "history",
        "runs": args.runs,
        "load_avg": round(load, 1),
        "load_seconds": round(sum(steps.values()), 1),
        "calls": rows,
        "figures": figures(rows, args.runs),
    }
    print("BENCH " + json.dumps(summary))


if __name__ == "__main__":
    main()
