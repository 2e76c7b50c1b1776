"""The pilot worker's runs in flight whose Dask task this worker does not hear of (issue 20):
followed after their future was lost, and reconciled with the server (no server, no Dask:
the worker's parts around :class:`p3s.pilots.outcomes.Outcomes` are stand-ins)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest
from distributed.client import FutureCancelledError
from prefect.client.schemas.objects import StateType

from p3s.pilots import outcomes
from p3s.pilots.dispatch import InFlight, task_key
from p3s.pilots.outcomes import GONE_LOOKS, RECONCILE_GRACE_S, Outcomes


class Server:
    """The Prefect client calls the outcomes make: runs' states, and the states set."""

    def __init__(self) -> None:
        self.states: dict[UUID, StateType] = {}
        self.set: list[tuple[UUID, str]] = []

    async def read_flow_runs(self, flow_run_filter: Any, limit: int) -> list[Any]:
        wanted = set(flow_run_filter.state.type.any_)
        return [
            SimpleNamespace(id=run_id)
            for run_id in flow_run_filter.id.any_
            if self.states.get(run_id) in wanted
        ]

    async def read_flow_run(self, run_id: UUID) -> Any:
        state = SimpleNamespace(
            id=(run_id, self.states[run_id]),  # the same state, read again, the same id
            type=self.states[run_id],
            is_final=lambda: (
                self.states[run_id]
                in {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
            ),
        )
        return SimpleNamespace(id=run_id, state=state)

    async def set_flow_run_state(self, run_id: UUID, state: Any, force: bool) -> None:
        self.set.append((run_id, state.name))


class Pilots:
    """``Client.run`` of the pilot worker's Dask client: one pilot and its tasks' states."""

    def __init__(self) -> None:
        self.tasks: dict[str, str] = {}
        self.fails = False

    async def run(self, function: Any, on_error: str) -> dict[str, Any]:
        if self.fails:
            return {"pilot-0": OSError("no answer")}
        tasks = {key: SimpleNamespace(state=state) for key, state in self.tasks.items()}
        return {"pilot-0": function(SimpleNamespace(state=SimpleNamespace(tasks=tasks)))}


class Worker:
    """What :class:`Outcomes` uses of the pilot worker."""

    def __init__(self) -> None:
        self.in_flight: dict[UUID, InFlight] = {}
        self.client = Server()
        self.dask = Pilots()
        self.freed = 0
        self.dispatch = SimpleNamespace(slot_freed=self._slot_freed)
        self.cancellation = SimpleNamespace(forget=lambda run_id: None)
        self._cancelling_observer = None
        self._logger = logging.getLogger("test-in-flight")
        self._work_pool_name = "test"
        self.settings = SimpleNamespace(
            pilots=SimpleNamespace(api_patience_seconds=0.0, query_seconds=1.0)
        )
        self.pilot_pool = SimpleNamespace(lost_grace_s=0.0)
        self.stop = False

    def _slot_freed(self) -> None:
        self.freed += 1

    def stopping(self) -> bool:
        return self.stop


class Future:
    """A Dask future as the watch awaits it: its key, and an outcome set by the test."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def __await__(self) -> Any:
        return self.outcome.__await__()


async def watched(worker: Worker, state: StateType) -> tuple[InFlight, asyncio.Task[int]]:
    """A run in flight in ``state`` on the server, its watch started."""
    run_id = uuid.uuid4()
    worker.client.states[run_id] = state
    entry = InFlight(run_id, "run", None, Future(task_key(run_id)))
    worker.in_flight[run_id] = entry
    task = asyncio.create_task(worker.outcomes.watch(entry))  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    return entry, task


def lose_future(entry: InFlight) -> None:
    """What distributed does to a client's futures when it reconnects to its scheduler."""
    entry.future.outcome.set_exception(
        FutureCancelledError(entry.future.key, "scheduler-connection-lost")
    )


@pytest.fixture
def worker() -> Worker:
    w = Worker()
    w.outcomes = Outcomes(w)  # type: ignore[attr-defined]
    return w


async def settled(task: asyncio.Task[int]) -> int:
    return await asyncio.wait_for(task, 5)


async def stop(worker: Worker, *tasks: asyncio.Task[int]) -> None:
    """The worker stops: the watches left end (without any state set)."""
    worker.stop = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_reconcile_frees_the_slot_of_a_run_final_on_the_server_after_the_grace(
    worker: Worker,
) -> None:
    async def scenario() -> None:
        o: Outcomes = worker.outcomes  # type: ignore[attr-defined]
        final, final_task = await watched(worker, StateType.COMPLETED)
        running, running_task = await watched(worker, StateType.RUNNING)
        assert await o.reconcile(now=100.0) == []  # first seen final: the grace starts
        assert await o.reconcile(now=100.0 + RECONCILE_GRACE_S - 1) == []
        assert await o.reconcile(now=100.0 + RECONCILE_GRACE_S) == [final.run_id]
        assert await settled(final_task) == 0
        assert list(worker.in_flight) == [running.run_id]
        assert worker.freed == 1  # freed once, by the reconciliation or the watch
        assert not running_task.done()
        assert worker.client.set == []  # the run's own final state stands
        await stop(worker, running_task)

    asyncio.run(scenario())


def test_reconcile_starts_the_grace_again_for_a_run_no_longer_final(worker: Worker) -> None:
    async def scenario() -> None:
        o: Outcomes = worker.outcomes  # type: ignore[attr-defined]
        entry, task = await watched(worker, StateType.COMPLETED)
        await o.reconcile(now=0.0)
        worker.client.states[entry.run_id] = StateType.SCHEDULED  # put back meanwhile
        await o.reconcile(now=RECONCILE_GRACE_S)
        worker.client.states[entry.run_id] = StateType.COMPLETED
        assert await o.reconcile(now=RECONCILE_GRACE_S + 1) == []
        assert entry.run_id in worker.in_flight
        await stop(worker, task)

    asyncio.run(scenario())


def test_a_run_whose_future_is_lost_is_followed_until_final_and_not_run_again(
    worker: Worker,
) -> None:
    async def scenario() -> None:
        o: Outcomes = worker.outcomes  # type: ignore[attr-defined]
        entry, task = await watched(worker, StateType.RUNNING)
        # The scheduler released the task, the pilot's thread still runs it.
        worker.dask.tasks[entry.future.key] = "cancelled"
        lose_future(entry)
        await asyncio.sleep(0.01)
        assert entry.run_id in o.followed
        for _ in range(GONE_LOOKS + 2):
            await o.look_at_followed()
        assert not task.done(), "still executing on its pilot: followed, slot kept"
        assert entry.run_id in worker.in_flight
        worker.client.states[entry.run_id] = StateType.COMPLETED  # its engine finished it
        await o.look_at_followed()
        assert await settled(task) == 0
        assert worker.in_flight == {} and worker.freed == 1
        assert o.followed == {}
        assert worker.client.set == [], "a run final on the server is left as it is"

    asyncio.run(scenario())


def test_a_followed_run_no_pilot_executes_is_put_back_once(worker: Worker) -> None:
    async def scenario() -> None:
        o: Outcomes = worker.outcomes  # type: ignore[attr-defined]
        entry, task = await watched(worker, StateType.RUNNING)
        lose_future(entry)
        await asyncio.sleep(0.01)
        for _ in range(GONE_LOOKS - 1):
            await o.look_at_followed()
        assert not task.done(), "one look is not enough: the task may not show yet"
        await o.look_at_followed()
        assert await settled(task) == 1
        assert worker.client.set == [(entry.run_id, "AwaitingRetry")]
        assert worker.in_flight == {} and worker.freed == 1

    asyncio.run(scenario())


def test_a_followed_run_stays_while_a_pilot_cannot_say_what_it_executes(worker: Worker) -> None:
    async def scenario() -> None:
        o: Outcomes = worker.outcomes  # type: ignore[attr-defined]
        entry, task = await watched(worker, StateType.RUNNING)
        lose_future(entry)
        await asyncio.sleep(0.01)
        worker.dask.fails = True
        for _ in range(GONE_LOOKS + 2):
            await o.look_at_followed()
        assert not task.done() and worker.client.set == []
        await stop(worker, task)

    asyncio.run(scenario())


def test_executing_tasks_counts_the_tasks_a_scheduler_released() -> None:
    tasks = {
        "run-a": SimpleNamespace(state="executing"),
        "run-b": SimpleNamespace(state="cancelled"),
        "run-c": SimpleNamespace(state="ready"),
        "run-d": SimpleNamespace(state="memory"),
    }
    pilot = SimpleNamespace(state=SimpleNamespace(tasks=tasks))
    assert sorted(outcomes.executing_tasks(pilot)) == ["run-a", "run-b"]
