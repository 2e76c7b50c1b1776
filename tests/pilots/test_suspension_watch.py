"""One suspension observer per pilot process: runs suspended from outside are still noticed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from tests.conftest import Stack
from tests.pilots.conftest import wait_for


async def _running_flow_run() -> Any:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name="suspension-watch")
    def nothing() -> None:
        return None

    async with get_client() as client:
        run = await client.create_flow_run(nothing)
        await client.set_flow_run_state(run.id, Running(), force=True)
    return run


async def _suspend(flow_run_id: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Suspended

    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Suspended(), force=True)


def _observer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "p3s-suspension"]


def test_runs_of_one_process_share_one_observer_that_notices_a_suspension(stack: Stack) -> None:
    from prefect._flow_run_suspension import FlowRunSuspensionRequest

    from p3s.pilots.run_process import _SuspensionWatcher

    watcher = _SuspensionWatcher()
    before = len(_observer_threads())
    for _ in range(2):  # one run after the other, as a reused child takes them
        run = asyncio.run(_running_flow_run())
        request = FlowRunSuspensionRequest()
        with watcher.watching(run.id, request):
            assert len(_observer_threads()) == before + 1
            asyncio.run(_suspend(run.id))
            state = wait_for(request.get_state, 60, "the suspension noticed", interval_s=0.2)
        assert state.name == "Suspended", state

    unwatched = asyncio.run(_running_flow_run())  # suspended while no run of ours watches it
    request = FlowRunSuspensionRequest()
    with watcher.watching(asyncio.run(_running_flow_run()).id, request):
        asyncio.run(_suspend(unwatched.id))
        with contextlib.suppress(TimeoutError):
            wait_for(request.get_state, 5, "a foreign suspension", interval_s=0.2)
        assert request.get_state() is None
    assert len(_observer_threads()) == before + 1
