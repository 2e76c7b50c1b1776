"""Fixtures of the inbox tests: life-cycle folders on local disk and on a real XRootD server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p3s.files.lifecycle import Layout
from p3s.system.datatypes import default_datatypes
from tests.xrootd_server import (
    XRootDServer,
    xrootd_server,  # noqa: F401 - a fixture, used by name
)


def raw_name(run: int, subrun: int = 1) -> str:
    return f"np04_raw_run{run:06d}_{subrun:04d}_dl1.h5"


class Recorder:
    """An event sink that keeps every event it accepts; ``down`` makes it refuse them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.down = False
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        from p3s.files.inbox import EmitError

        if self.down:
            raise EmitError("the recorder is down")
        with self._lock:
            self.events.append(event)

    def names(self) -> list[str]:
        return [e["resource"]["p3s.file.name"] for e in self.events]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(params=["local", "xrootd"])
def layout(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Layout, XRootDServer | None]]:
    """Life-cycle folders on local disk, then in a fresh folder of a real XRootD server."""
    if request.param == "local":
        yield Layout(f"file://{tmp_path / 'data'}"), None
        return
    server: XRootDServer = request.getfixturevalue("xrootd_server")
    folder = f"inbox-tests-{uuid.uuid4().hex[:8]}"
    yield Layout(server.url(folder)), server


def put(layout: Layout, name: str, data: bytes = b"raw data", stage: str = "inbox") -> None:
    """Write a file into a life-cycle folder through fsspec (as a transfer would)."""
    area = layout.area(stage)
    area.ensure()
    fs, path = area.fs()
    with fs.open(f"{path}/{name}", "wb") as handle:
        handle.write(data)


def datatypes():
    return default_datatypes()
