"""The pilot worker's Dask client dropped by its scheduler while runs are in flight (issue 20).

On a reconnection, distributed cancels every future of the client (``FutureCancelledError``,
reason ``scheduler-connection-lost``) and the scheduler releases the client's tasks, but a
pilot's thread cannot be stopped: each flow run goes on executing there, unseen by Dask. Every
run must still execute exactly once and end final, and its slot must be freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Stack, wait_for_runs
from tests.pilots.conftest import Pilots, run, start_pilots, stop_pilots, wait_for
from tests.pilots.test_local_pilots import job, records, submit

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
SLOTS = 4
#: Longer than a local pilot's lost grace (6 s): a run put back while its first execution
#: still runs would execute twice at once.
SLEEP_S = 40


@pytest.fixture(
    scope="module", params=["shared", pytest.param("fork", marks=pytest.mark.fork_engine)]
)
def reconnect_pilots(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Pilots]:
    """One local pilot of ``SLOTS`` slots, in a pool of its own, with a child per run or one
    shared engine (where the 1000-job run stalled)."""
    pilots = start_pilots(
        stack,
        "local",
        P3S_PILOTS__POOL_NAME=f"pilots-reconnect-{request.param}",
        P3S_PILOTS__ENGINE=request.param,
        P3S_PILOTS__SLOTS=str(SLOTS),
        P3S_PILOTS__MAX_PILOTS="1",
        P3S_PILOTS__QUERY_SECONDS="5",
    )
    try:
        yield pilots
    finally:
        stop_pilots(pilots)


async def scheduler_address(pilots: Pilots) -> str:
    """The Dask scheduler of the pilot worker, which runs in the worker's process: the port
    of that process that answers as a scheduler."""
    from distributed.core import rpc

    from p3s.stack import control

    proc = control.pilot_worker_process(pilots.settings).process()
    assert proc is not None
    ports = [
        c.laddr.port
        for c in psutil.Process(proc.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    errors = []
    for port in ports:
        address = f"tcp://127.0.0.1:{port}"
        try:
            async with rpc(address, timeout=10) as server:
                identity = await asyncio.wait_for(server.identity(), 10)
        except Exception as exc:  # another kind of server: not a Dask comm
            errors.append(f"{port}: {exc!r}")
            continue
        if identity.get("type") == "Scheduler":
            return address
    raise AssertionError(f"no Dask scheduler among the pilot worker's ports: {errors}")


async def drop_worker_client(pilots: Pilots) -> list[str]:
    """Drop, on the scheduler, the connection of every client but this one (the pilot
    worker's), as a scheduler does with a client it lost: its tasks are released, the client
    reconnects."""
    from distributed import Client

    def abort_other_clients(keep: str, dask_scheduler: Any = None) -> list[str]:
        # Defined here: Dask sends it by value (the scheduler cannot import the tests).
        dropped = []
        for client_id, stream in list(dask_scheduler.client_comms.items()):
            if client_id != keep:
                stream.abort()
                dropped.append(client_id)
        return dropped

    async with Client(await scheduler_address(pilots), asynchronous=True, timeout=30) as client:
        return await client.run_on_scheduler(abort_other_clients, client.id)


def test_runs_in_flight_when_the_dask_client_drops_complete_once_and_free_their_slots(
    reconnect_pilots: Pilots, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    # Half the slots: a run put back while it executes would find a free thread at once.
    jobs = [job(f"drop-{i}", log, sleep=SLEEP_S) for i in range(SLOTS // 2)]
    runs = run(submit(reconnect_pilots, jobs))
    wait_for(
        lambda: len([r for r in records(log) if r[1] == "start"]) == len(jobs),
        180,
        "the runs started",
    )
    dropped = run(drop_worker_client(reconnect_pilots))
    assert dropped, "the pilot worker's client was connected"
    done = run(wait_for_runs([r.id for r in runs], 300))
    assert [r.state.type.value for r in done] == ["COMPLETED"] * len(jobs), [r.state for r in done]
    starts = sorted(r[0] for r in records(log) if r[1] == "start")
    ends = sorted(r[0] for r in records(log) if r[1] == "end")
    expected = sorted(j.name for j in jobs)
    assert starts == expected, f"each run executes exactly once: {starts}"
    assert ends == expected
    assert all(r.run_count == 1 for r in done), [r.run_count for r in done]
    # No slot leaks: the worker holds no run, and a full set of runs fits at once.
    wait_for(
        lambda: reconnect_pilots.counts().get("runs_in_flight") == 0,
        60,
        f"no run left in flight (counts {reconnect_pilots.counts()})",
    )
    log2 = tmp_path / "after.log"
    again = run(submit(reconnect_pilots, [job(f"after-{i}", log2, sleep=8) for i in range(SLOTS)]))
    done = run(wait_for_runs([r.id for r in again], 180))
    assert [r.state.type.value for r in done] == ["COMPLETED"] * SLOTS
    starts2 = [float(r[2]) for r in records(log2) if r[1] == "start"]
    ends2 = [float(r[2]) for r in records(log2) if r[1] == "end"]
    assert max(starts2) < min(ends2), "all slots were free: the runs ran at once"
