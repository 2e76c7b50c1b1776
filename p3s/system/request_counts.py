"""The Prefect server's API requests, counted by route: who keeps the server busy.

Installed by :mod:`p3s.system.prefect_server` around Prefect's own app (a plain ASGI wrapper:
one dictionary update per request). ``kill -USR1 <server pid>`` writes the counts so far to
``$PREFECT_HOME/server-requests.json``::

    {"since": "2026-12-07T13:00:00+00:00", "total": 1234,
     "routes": {"POST /api/flow_runs/{id}/set_state": 250, "WS /api/events/in": 12, ...}}

Ids in paths are folded into ``{id}``, so a route is one line however many runs it served.
``bench/orchestration.py`` reads them at the start and end of its feed: API requests per file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: UUIDs (flow runs, deployments...) in a path, folded so that a route counts as one.
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FILE_NAME = "server-requests.json"


def route_of(scope: dict[str, Any]) -> str:
    """``"POST /api/flow_runs/{id}/set_state"`` for an HTTP request, ``"WS /api/events/in"``
    for a websocket."""
    method = "WS" if scope["type"] == "websocket" else scope.get("method", "?")
    return f"{method} {_ID.sub('{id}', scope.get('path', ''))}"


class RequestCounts:
    """ASGI wrapper that counts every HTTP request and websocket by :func:`route_of` into
    ``counts`` (one per process: Prefect's CLI may create more than one app)."""

    counts: Counter[str] = Counter()
    since = datetime.now(UTC)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            self.counts[route_of(scope)] += 1
        await self.app(scope, receive, send)

    @classmethod
    def snapshot(cls) -> dict[str, Any]:
        return {
            "since": cls.since.isoformat(),
            "total": sum(cls.counts.values()),
            "routes": dict(cls.counts.most_common()),
        }

    @classmethod
    def write(cls, path: Path) -> None:
        """The counts so far, written whole (a reader never sees half a file)."""
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(cls.snapshot(), indent=1))
        os.replace(partial, path)


def counts_file() -> Path:
    """Where SIGUSR1 writes the counts: ``$PREFECT_HOME/server-requests.json``."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home) / FILE_NAME


def read_counts(home: Path) -> dict[str, Any] | None:
    """The counts last written under a Prefect home, or None if none were."""
    path = Path(home) / FILE_NAME
    return json.loads(path.read_text()) if path.exists() else None


def ask_for_counts(server_pid: int, home: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """Have the server (``server_pid``, Prefect home ``home``) write its counts now, and read
    them; TimeoutError if it wrote none within ``timeout_s``."""
    (Path(home) / FILE_NAME).unlink(missing_ok=True)
    os.kill(server_pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while (counts := read_counts(home)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Prefect server (pid {server_pid}) wrote no request counts")
        time.sleep(0.05)
    return counts


def count_requests() -> None:
    """Wrap every app Prefect's server creates in this process with :class:`RequestCounts`,
    and write the counts on SIGUSR1 (call from the main thread)."""
    from prefect.server.api import server

    original = server.create_app
    if getattr(original, "_p3s_counting", False):
        return

    def create_app(*args: Any, **kwargs: Any) -> Any:
        return RequestCounts(original(*args, **kwargs))

    def on_usr1(signum: int, frame: Any) -> None:
        RequestCounts.write(counts_file())

    create_app._p3s_counting = True  # type: ignore[attr-defined]
    server.create_app = create_app  # type: ignore[assignment]
    signal.signal(signal.SIGUSR1, on_usr1)
