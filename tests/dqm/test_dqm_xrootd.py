"""A DQM flow reading its raw file from XRootD and writing its products back to XRootD, while
the XRootD server is restarted during the stage-in: the stage-in task is retried and the run
completes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from p3s.payloads.rawformat import Geometry, raw_filename
from p3s.payloads.simulate import simulate_file

from p3s.dqm.catalog import Catalog
from p3s.files import storage
from tests.conftest import Stack, final_task_runs
from tests.dqm.conftest import drain_prefect_clients
from tests.xrootd_server import XRootDServer

# The Prefect database does not change this path: it runs on the SQLite stack only (the
# PostgreSQL stack runs tests/integration/test_jobs_on_server.py, the catalog is tested on
# PostgreSQL in test_catalog.py); this keeps the suite within its time budget.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]


@pytest.fixture
def eos_settings(xrootd_server: XRootDServer) -> Iterator[None]:
    """This process's settings with the outbox on XRootD and five tries per transfer."""
    from p3s.system.settings import get_settings

    saved = dict(os.environ)
    os.environ["P3S_STORAGE__OUTBOX_URL"] = xrootd_server.url("outbox")
    os.environ["P3S_STORAGE__ATTEMPTS"] = "5"
    get_settings.cache_clear()
    try:
        yield
    finally:
        drain_prefect_clients()
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def test_restart_during_stage_in_is_retried_and_products_land_on_xrootd(
    stack: Stack, xrootd_server: XRootDServer, eos_settings: None, tmp_path: Path
) -> None:
    from p3s.flows.dqm import dqm_beam

    name = raw_filename(51, 2)
    local = xrootd_server.local(f"claimed/{name}")
    local.parent.mkdir(parents=True, exist_ok=True)
    simulate_file(
        local, run=51, subrun=2, n_events=2, n_ticks=1000, seed=51,
        geometry=Geometry.reduced(n_apas=1, fibers_per_apa=1),
    )  # fmt: skip
    xrootd_server.chown(local.parent)
    assert xrootd_server.process is not None
    os.kill(xrootd_server.process.pid, signal.SIGSTOP)  # the stage-in starts on a hung server

    def restart_soon() -> None:
        time.sleep(1.0)
        xrootd_server.restart(down_s=3.0)

    restarter = threading.Thread(target=restart_soon)
    restarter.start()
    try:
        state = dqm_beam(file_url=xrootd_server.url(f"claimed/{name}"), return_state=True)
    finally:
        restarter.join()
    assert state.is_completed(), state.message

    stage_in = [
        t
        for t in asyncio.run(final_task_runs([state.state_details.flow_run_id]))
        if t.name.startswith("stage-in")
    ]
    assert len(stage_in) == 1, stage_in
    assert stage_in[0].run_count >= 2, f"the stage-in was not retried: {stage_in[0].state}"

    outbox = xrootd_server.url("outbox/run000051/0002/beam")
    names = {entry["name"] for entry in storage.listdir(outbox)}
    assert "summary.json" in names and "particles.csv" in names
    catalog = Catalog(stack.settings.catalog)
    try:
        products = {p["name"]: p for p in catalog.products(51)}
        assert products["summary.json"]["url"] == f"{outbox}/summary.json"
        assert (
            storage.remote_checksum(f"{outbox}/summary.json") == products["summary.json"]["adler32"]
        )
    finally:
        catalog.dispose()
