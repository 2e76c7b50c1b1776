"""Bring the embedded system up and down: Prefect server, work pool, deployments, worker.

Every step is idempotent: ``up`` on a running system checks each piece and starts only what is
missing; ``down`` stops exactly the processes that ``up`` recorded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from p3s.system import backends, history
from p3s.system.prefect_env import client_environment, server_environment
from p3s.system.prefect_server import seed_sqlite
from p3s.system.services import ManagedProcess
from p3s.system.settings import PROJECT_DIR, Settings

BIN = Path(sys.executable).parent
Report = Callable[[str], None]


def prefect_cli() -> str:
    return str(BIN / "prefect")


def server_process(settings: Settings) -> ManagedProcess:
    return ManagedProcess("prefect-server", settings.run_dir)


def worker_process(settings: Settings, index: int = 0) -> ManagedProcess:
    # `prefect worker start` ignores the first SIGTERM; SIGINT asks it to stop.
    return ManagedProcess(f"worker-{index}", settings.run_dir, stop_signal=signal.SIGINT)


def api_healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_api(api_url: str, timeout_s: float, process: ManagedProcess | None = None) -> None:
    """Wait until the API answers; fail early, with the log's tail, if its process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api_healthy(api_url):
            return
        if process is not None and process.process() is None:
            tail = process.log.read_text(errors="replace")[-3000:] if process.log.exists() else ""
            raise RuntimeError(f"the Prefect server exited while starting; its log ends:\n{tail}")
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect API at {api_url} did not answer within {timeout_s:.0f} s")


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def start_server(settings: Settings, report: Report) -> None:
    """Start the embedded Prefect server unless an API already answers at the URL."""
    if settings.server.api_url:
        wait_for_api(settings.api_url, 60)
        report(f"using the Prefect API at {settings.api_url}")
        return
    backends.prepare(settings, report)  # PostgreSQL database created if missing; Redis checked
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    proc = server_process(settings)
    if proc.process() is None and api_healthy(settings.api_url):
        raise RuntimeError(
            f"another Prefect server already answers at {settings.api_url}: stop it, or set "
            "P3S_SERVER__PORT to a free port"
        )
    # Prefect's own `server start`, with SQLite writers that wait for each other rather than
    # fail (see p3s.system.prefect_server).
    argv = [
        sys.executable,
        "-m",
        "p3s.system.prefect_server",
        "start",
        "--host",
        settings.server.host,
        "--port",
        str(settings.server.port),
        "--analytics-off",
    ]
    env = _env(server_environment(settings))
    if proc.process() is None:
        seed_sqlite(settings.prefect_database_url, env)
    _, new = proc.start(argv, env, cwd=settings.home)
    wait_for_api(settings.api_url, 300, proc)  # migrations of a new database
    history.apply(settings.prefect_database_url, report)  # p3s indexes, on Prefect's schema
    state = "started" if new else "already running"
    report(
        f"Prefect server {state} at {settings.api_url.removesuffix('/api')} "
        f"(database {settings.prefect_database_url.split('://')[0]})"
    )


def setup_work_pool(settings: Settings, report: Report) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from p3s.deployments.work_pool import ensure_work_pool

    pool_type = "p3s-pilot" if settings.pool.worker == "pilots" else "process"

    async def _ensure() -> list[str]:
        async with get_client() as client:
            return await ensure_work_pool(
                client,
                settings.pool.name,
                pool_type=pool_type,
                concurrency=settings.pool.concurrency,
            )

    # This process may have read another API URL when it imported Prefect: use this home's.
    with temporary_settings(updates={PREFECT_API_URL: settings.api_url}):
        changes = asyncio.run(_ensure())
    report(f"work pool {settings.pool.name!r}: " + ("; ".join(changes) or "up to date"))


def deploy(settings: Settings, report: Report) -> None:
    """Apply prefect.yaml (deployments and their triggers) with ``prefect deploy --all``."""
    result = subprocess.run(
        [prefect_cli(), "--no-prompt", "deploy", "--all"],
        cwd=PROJECT_DIR,
        env=_env({**client_environment(settings), "P3S_WORK_POOL": settings.pool.name}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(
            "prefect deploy --all failed\n"
            f"exit code: {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from p3s.deployments.retired import remove_retired_deployments

    async def _remove() -> list[str]:
        async with get_client() as client:
            return await remove_retired_deployments(client)

    with temporary_settings(updates={PREFECT_API_URL: settings.api_url}):
        removed = asyncio.run(_remove())
    retired = f"; retired {', '.join(removed)}" if removed else ""
    report(f"deployments applied from prefect.yaml{retired}")


def start_worker(settings: Settings, report: Report) -> None:
    """Start what serves the p3s pool: its pilots (default) or a process worker."""
    if settings.pool.worker == "pilots":
        start_pilot_worker(settings, report, pool=settings.pool.name)
        return
    proc = worker_process(settings)
    argv = [
        prefect_cli(),
        "worker",
        "start",
        "--pool",
        settings.pool.name,
        "--type",
        "process",
        "--limit",
        str(settings.pool.concurrency),
        "--name",
        f"p3s-{socket.gethostname()}",
    ]
    env = {
        **client_environment(settings),
        "PREFECT_WORKER_QUERY_SECONDS": str(settings.pool.query_seconds),
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    process, new = proc.start(argv, _env(env), cwd=settings.home)
    report(
        f"worker {'started' if new else 'already running'} (pid {process.pid}) "
        f"on pool {settings.pool.name!r}, at most {settings.pool.concurrency} runs at once"
    )


def inbox_watcher_process(settings: Settings) -> ManagedProcess:
    return ManagedProcess("inbox-watch", settings.run_dir)


def start_inbox_watcher(settings: Settings, report: Report) -> None:
    """Start ``p3s inbox watch``: it claims complete inbox files and emits p3s.file.arrived."""
    from p3s.files.lifecycle import Layout

    layout = Layout.of(settings)
    layout.ensure()
    argv = [str(BIN / "p3s"), "inbox", "watch"]
    process, new = inbox_watcher_process(settings).start(
        argv, _env(client_environment(settings)), cwd=settings.home
    )
    report(
        f"inbox watcher {'started' if new else 'already running'} (pid {process.pid}) "
        f"on {layout.inbox.url}"
    )


def pilot_worker_process(settings: Settings, pool: str | None = None) -> ManagedProcess:
    """The ``p3s-pilot`` worker of a pilots' pool (SIGINT asks it to stop, like any worker)."""
    name = f"pilots-{pool or settings.pilots.pool_name}"
    return ManagedProcess(name, settings.run_dir, stop_signal=signal.SIGINT)


def setup_pilot_pool(settings: Settings, report: Report) -> None:
    """Create the pilots' work pool (type ``p3s-pilot``) and its deployments."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from p3s.deployments.pilot_pool import ensure_pilot_deployments, ensure_pilot_pool

    async def _ensure() -> tuple[list[str], list[str]]:
        async with get_client() as client:
            changes = await ensure_pilot_pool(client, settings.pilots.pool_name)
            return changes, await ensure_pilot_deployments(client, settings.pilots.pool_name)

    with temporary_settings(updates={PREFECT_API_URL: settings.api_url}):
        changes, deployments = asyncio.run(_ensure())
    report(
        f"pilot pool {settings.pilots.pool_name!r}: "
        + ("; ".join(changes) or "up to date")
        + f"; deployments {', '.join(deployments)}"
    )


def start_pilot_worker(
    settings: Settings,
    report: Report,
    extra_env: dict[str, str] | None = None,
    pool: str | None = None,
) -> None:
    """Start the ``p3s-pilot`` worker of ``pool`` (the pilots' pool by default), which holds
    the pool's Dask cluster."""
    pool = pool or settings.pilots.pool_name
    assert pool is not None
    proc = pilot_worker_process(settings, pool)
    argv = [
        prefect_cli(),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "p3s-pilot",
        "--name",
        f"p3s-pilots-{socket.gethostname()}",
    ]
    env = {
        **client_environment(settings),
        "PREFECT_WORKER_QUERY_SECONDS": str(settings.pilots.query_seconds),
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",
        # Cancelling a run (UI, API) reaches the pilot worker as an event at once.
        "PREFECT_WORKER_ENABLE_CANCELLATION": "true",
        "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "10",
        **(extra_env or {}),
    }
    process, new = proc.start(argv, _env(env), cwd=settings.home)
    report(
        f"pilot worker {'started' if new else 'already running'} (pid {process.pid}) on pool "
        f"{pool!r}: {settings.pilots.cluster} pilots, "
        f"{settings.pilots.min_pilots}..{settings.pilots.max_pilots}"
    )


def apply_alarms(settings: Settings, report: Report) -> None:
    """Apply the alarms of ``automations/`` (``p3s alarms apply``): idempotent."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from p3s.alarms.apply import apply

    with temporary_settings(updates={PREFECT_API_URL: settings.api_url}):
        changes = asyncio.run(apply(settings))
    done = sum(c.action != "unchanged" for c in changes)
    targets = settings.alarms.webhook_url or settings.alarms.chat_url or settings.alarms.smtp_host
    report(
        f"alarms: {len(changes)} applied ({done} created or updated)"
        + ("" if targets else "; no target configured: they show in the UI and notify nobody")
    )


def start_content_app(settings: Settings, report: Report) -> None:
    from p3s.ui_extensions.service import start_content_app as start

    start(settings, report)


#: What ``up`` does, in order: (what the operator is told, the step).
UP_STEPS: list[tuple[str, Callable[[Settings, Report], None]]] = [
    ("starting the Prefect server", start_server),
    ("creating the work pool and its priority queues", setup_work_pool),
    ("applying the deployments of prefect.yaml", deploy),
    ("starting the pool's pilots (or worker)", start_worker),
    ("starting the inbox watcher", start_inbox_watcher),
    ("applying the alarms", apply_alarms),
    ("starting the content app", start_content_app),
]


def up(settings: Settings, report: Report) -> None:
    """Bring the whole embedded system up, step by step."""
    for folder in (settings.home, settings.run_dir, settings.job_logs, settings.data):
        folder.mkdir(parents=True, exist_ok=True)
    for _, step in UP_STEPS:
        step(settings, report)


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    log: Path


def managed(settings: Settings) -> list[ManagedProcess]:
    """Everything ``up`` may have started, in the order ``down`` stops it."""
    found = sorted(settings.run_dir.glob("worker-*.json")) if settings.run_dir.exists() else []
    workers = [worker_process(settings, int(p.stem.split("-")[1])) for p in found]
    pilot_workers = (
        sorted(settings.run_dir.glob("pilots-*.json")) if settings.run_dir.exists() else []
    )
    workers += [ManagedProcess(p.stem, settings.run_dir, signal.SIGINT) for p in pilot_workers]
    from p3s.ui_extensions.service import content_app_process

    return [
        content_app_process(settings),
        inbox_watcher_process(settings),
        *workers,
        server_process(settings),
    ]


def status(settings: Settings) -> list[ServiceStatus]:
    rows = []
    for proc in managed(settings):
        live = proc.process()
        rows.append(ServiceStatus(proc.name, live.pid if live else None, proc.log))
    return rows


def down(settings: Settings, report: Report) -> None:
    """Stop what ``up`` started: workers first (so no run starts), then the server."""
    for proc in managed(settings):
        stopped = proc.stop()
        report(f"{proc.name}: {'stopped' if stopped else 'not running'}")
