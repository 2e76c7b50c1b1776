"""Pilot fixtures: a ``p3s-pilot`` worker (local Dask or real Slurm pilots) beside the stack.

The stack (tests/conftest.py) gives the Prefect server; each pilot fixture adds a pilot work
pool of its own, the ``p3s-job/pilots``-style deployment on it, and a pilot worker started by
the same code as ``p3s up`` (:func:`p3s.stack.control.start_pilot_worker`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest

from p3s.system.settings import PACKAGED_PAYLOADS, PROJECT_DIR, Settings
from tests.conftest import SCRIPTS, Stack

HERE = Path(__file__).resolve().parent
PILOT_PAYLOADS = HERE / "payloads"


@dataclass
class Pilots:
    """A running pilot pool: its settings (pool name, cluster) and its worker's environment."""

    settings: Settings
    env: dict[str, str]
    deployment: str

    @property
    def pool(self) -> str:
        return self.settings.pilots.pool_name

    def counts(self) -> dict:
        path = self.settings.run_dir / f"pilot-counts-{self.pool}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        path = self.settings.run_dir / f"pilots-{self.pool}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def ensure_slurm() -> None:
    """The project's script installs and starts Slurm if it is not running (idempotent)."""
    subprocess.run([str(PROJECT_DIR / "scripts" / "slurm.sh")], check=True, timeout=600)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not within {timeout_s:.0f} s")


def start_pilots(stack: Stack, cluster: str, **overrides: str) -> Pilots:
    from p3s.stack import control

    pool = f"pilots-{cluster}"
    env = {
        **stack.env,
        "P3S_PILOTS__POOL_NAME": pool,
        "P3S_PILOTS__CLUSTER": cluster,
        "P3S_PILOTS__MIN_PILOTS": "1",
        "P3S_PILOTS__MAX_PILOTS": "2",
        "P3S_PILOTS__IDLE_SECONDS": "5",
        "P3S_PILOTS__SCALE_SECONDS": "1",
        "P3S_PILOTS__WALLTIME": "00:30:00",
        "P3S_PILOTS__MEMORY": "1GiB",
        # A lost batch pilot's runs wait death timeout + 30 s before they run again.
        "P3S_PILOTS__DEATH_TIMEOUT": "15",
        "P3S_PAYLOAD_ROOTS": os.pathsep.join(
            [str(PACKAGED_PAYLOADS), str(SCRIPTS), str(PILOT_PAYLOADS), "/usr/bin", "/bin"]
        ),
        **overrides,
    }
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    control.setup_pilot_pool(settings, lambda _: None)
    control.start_pilot_worker(settings, lambda _: None, extra_env=env)
    pool = settings.pilots.pool_name or pool  # an override may name another pool
    pilots = Pilots(settings=settings, env=env, deployment=f"p3s-job/{pool}")
    wait_for(
        lambda: pilots.counts().get("idle", 0) >= 1,
        240,
        f"a warm {cluster} pilot (worker log:\n{pilots.log()[-3000:]})",
    )
    return pilots


def stop_pilots(pilots: Pilots) -> None:
    from p3s.stack import control

    control.pilot_worker_process(pilots.settings).stop()


@pytest.fixture(scope="module")
def local_pilots(stack: Stack) -> Iterator[Pilots]:
    # A fallback poll far slower than the tests: the runs here are dispatched by the server's
    # events (scheduled, rescheduled) and by freed slots, as in production.
    pilots = start_pilots(stack, "local", P3S_PILOTS__QUERY_SECONDS="30")
    try:
        yield pilots
    finally:
        stop_pilots(pilots)


@pytest.fixture(scope="module")
def slurm_pilots(stack: Stack) -> Iterator[Pilots]:
    ensure_slurm()
    pilots = start_pilots(stack, "slurm")
    try:
        yield pilots
    finally:
        stop_pilots(pilots)
        # Nothing of ours may stay queued or running on the batch system.
        subprocess.run(["scancel", "--name", "p3s-pilot"], check=False)


def run(coro):
    return asyncio.run(coro)


def cancel(run_id: UUID) -> None:
    """Cancel a flow run as the UI does (``Cancelling``); the pilot worker takes it from there."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async def cancelling() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Cancelling(), force=True)

    run(cancelling())
