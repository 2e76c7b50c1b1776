"""Pilot counts for the dashboard (p3s's pilot table): total, starting, idle, running, stopped,
lost; published by the pilot worker, read by ``p3s pilots`` and the content app.

The worker writes ``RUN_DIR/pilot-counts-<pool>.json`` (atomically) whenever a count changes, and
the same record into the Prefect variable ``p3s-pilots-<pool>`` so that a content app on
another host can read it through the API: at once when pilots come or go, otherwise at most
every ``P3S_PILOTS__COUNTS_PUBLISH_SECONDS`` (idle and running change with every run).
``total`` counts the pilots held now (starting + idle + running); ``stopped`` (retired when
idle) and ``lost`` (killed, evicted, at walltime: p3s's pilotTO) count since the worker
started.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p3s.system.settings import Settings


@dataclass
class PilotCounts:
    """One snapshot of a pilot pool."""

    pool: str
    cluster: str
    total: int = 0
    starting: int = 0
    idle: int = 0
    running: int = 0
    stopped: int = 0
    lost: int = 0
    runs_in_flight: int = 0
    backlog: int = 0
    updated: float = field(default_factory=time.time)
    #: Dask worker name -> "starting" | "idle" | "running".
    pilots: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_counts(self, other: PilotCounts | None) -> bool:
        """Whether ``other`` shows the same numbers (the timestamp aside)."""
        if other is None:
            return False
        mine, theirs = self.as_dict(), other.as_dict()
        mine.pop("updated")
        theirs.pop("updated")
        return mine == theirs


def status_file(settings: Settings, pool: str) -> Path:
    return settings.run_dir / f"pilot-counts-{pool}.json"


def variable_name(pool: str) -> str:
    """Prefect variable names allow lower-case letters, digits, '-' and '_'."""
    return "p3s-pilots-" + re.sub(r"[^a-z0-9_-]", "-", pool.lower())


def write_status(settings: Settings, counts: PilotCounts) -> Path:
    path = status_file(settings, counts.pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(counts.as_dict(), indent=1))
    os.replace(tmp, path)
    return path


def read_status(settings: Settings, pool: str) -> PilotCounts | None:
    """The last counts the pool's worker wrote on this host, or None."""
    try:
        data = json.loads(status_file(settings, pool).read_text())
    except (OSError, ValueError):
        return None
    return PilotCounts(**data)


async def read_status_from_api(pool: str) -> PilotCounts | None:
    """The last counts the pool's worker published as a Prefect variable, or None."""
    from prefect.variables import Variable

    data = await Variable.aget(variable_name(pool), default=None)
    if not isinstance(data, dict):
        return None
    return PilotCounts(**data)


async def publish_variable(client: Any, counts: PilotCounts) -> None:
    """Set the Prefect variable ``p3s-pilots-<pool>`` to ``counts`` with the worker's own
    ``client``: one PATCH (a POST the first time), not the read, the write and the client
    handshake of ``Variable.aset``."""
    import httpx
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    name = variable_name(counts.pool)
    try:
        await client.update_variable(VariableUpdate(name=name, value=counts.as_dict()))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise
        await client.create_variable(VariableCreate(name=name, value=counts.as_dict()))
