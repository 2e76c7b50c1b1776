"""The Prefect server is down while 20 files arrive: after it returns each is announced once.

A separate, small Prefect server (SQLite, its own home and port) is started and stopped here
with the code of ``p3s up``; the session's shared stack is never touched.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from p3s.files.inbox import InboxScanner, prefect_emitter
from p3s.files.lifecycle import Layout
from p3s.stack import control
from p3s.system.settings import ServerSettings, Settings
from tests.conftest import free_port
from tests.inbox.conftest import datatypes, put, raw_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _arrivals(api_url: str) -> list[dict[str, Any]]:
    answer = httpx.post(
        f"{api_url}/events/filter",
        json={"filter": {"event": {"name": ["p3s.file.arrived"]}}, "limit": 50},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()["events"]


def test_files_arriving_while_the_server_is_down_are_announced_once_after_it_returns(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home", server=ServerSettings(port=free_port()))
    server = control.server_process(settings)
    accepted: list[str] = []
    post = prefect_emitter(settings.api_url, timeout_s=2.0)

    def emit(event: dict[str, Any]) -> None:
        post(event)  # raises EmitError unless the server took it
        accepted.append(event["resource"]["p3s.file.name"])

    layout = Layout(f"file://{tmp_path / 'site'}")
    scanner = InboxScanner(layout, datatypes(), emit, settle_seconds=0.0, retry_seconds=0.5)
    names = [raw_name(run) for run in range(300, 320)]
    try:
        control.start_server(settings, lambda _: None)
        server.stop()
        assert not control.api_healthy(settings.api_url)
        for name in names:
            put(layout, name)
            scanner.scan()
        for _ in range(4):
            time.sleep(0.5)
            scanner.scan()
        assert accepted == []
        assert len(layout.claimed.names()) <= 1  # at most the one whose event failed first
        assert layout.announced.names() == set()

        control.start_server(settings, lambda _: None)
        deadline = time.monotonic() + 60
        while layout.announced.names() != set(names) and time.monotonic() < deadline:
            scanner.scan()
            time.sleep(0.2)
        for _ in range(3):  # later passes owe nothing
            scanner.scan()
        assert Counter(accepted) == Counter(names)
        assert layout.inbox.names() == set() and layout.claimed.names() == set(names)

        deadline = time.monotonic() + 60
        while len(_arrivals(settings.api_url)) < len(names) and time.monotonic() < deadline:
            time.sleep(1)  # the server persists events in batches
        stored = Counter(e["resource"]["p3s.file.name"] for e in _arrivals(settings.api_url))
        assert stored == Counter(names)
    finally:
        server.stop()
