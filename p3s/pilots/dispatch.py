"""Dispatch: claiming a pool's scheduled runs and handing them to the Dask pilots.

Whenever the server says a run of the pool was scheduled (a ``prefect.flow-run.Scheduled`` or
``AwaitingRetry`` event on the worker's events websocket), a pilot slot frees while runs may be
waiting, or ``P3S_PILOTS__QUERY_SECONDS`` have passed (the fallback poll), the dispatch:

1. asks the server for scheduled runs with a limit equal to its free pilot slots (queue
   priorities respected: priority-10 first; at most :data:`FETCH_LIMIT` per request), leaving
   runs whose jobtype is at its limit (:mod:`p3s.pilots.limits`);
2. claims each by proposing ``Pending`` with a claim that names its Dask task, and keeps it
   only if the server accepted;
3. submits :func:`p3s.pilots.execute.run_on_pilot` to Dask, which forks the run's child on a
   pilot (milliseconds on a warm pilot), and hands the run to :mod:`p3s.pilots.outcomes`.

It also puts back the runs an earlier process of the same worker left claimed
(:meth:`Dispatch.recover_orphans`).
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import anyio
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import WorkerFlowRunResponse
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Crashed, Pending
from prefect.types._datetime import now as prefect_now
from prefect.utilities.engine import propose_state

from p3s.pilots import execute, limits

#: Most runs one request to the server may ask for: the scheduled runs fetched per dispatch,
#: and the page of claimed runs read when looking for orphans. Prefect's API refuses a larger
#: limit (422): a pool with more free slots takes this many now and the rest at once after.
FETCH_LIMIT = 200
#: Seconds the runs' flows, deployments, work queues and pools are reused for their events.
RELATED_TTL_S = 300.0
#: Seconds the jobtype limits (global concurrency limits ``jobtype:*``) are reused.
LIMITS_TTL_S = 5.0


@dataclass
class InFlight:
    """A flow run claimed by this worker and handed to Dask."""

    run_id: UUID
    name: str
    jobtype: str | None
    future: Any
    submitted: float = field(default_factory=time.monotonic)
    #: The wait for the run's end (its task, or the run followed after its future was lost):
    #: cancelled by :meth:`stop_waiting`.
    waiting: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Why the run stopped being waited for without its task's result (None until then).
    ended: str | None = None
    #: Whether its execution is gone without a final state (it is then put back).
    lost: bool = False
    #: When the server was first seen to report the run final while it was still in flight.
    final_seen: float | None = None
    #: Consecutive looks at the pilots that found none executing it (a run followed after
    #: its future was lost).
    gone_seen: int = 0

    def stop_waiting(self, why: str, lost: bool = False) -> None:
        """End the wait for this run's task: it ended without a result this worker heard."""
        self.ended = why
        self.lost = lost
        self.waiting.cancel()


def task_key(run_id: UUID) -> str:
    """A fresh Dask key for one execution of a flow run (its claim names it)."""
    return f"p3s-run-{run_id}-{uuid.uuid4().hex[:8]}"


async def related_objects(
    client: Any, run: FlowRun, cache: dict[str, tuple[Any, float]]
) -> dict[str, Any]:
    """The run's flow, deployment, work queue and work pool, keyed as Prefect's events cache
    them, read at most once per ``RELATED_TTL_S`` into ``cache`` (the worker's, for all its
    runs): a flow-run child reads all four for its first event otherwise (4 requests per run).
    Best effort: what cannot be read is left to the child."""
    wanted = {
        f"flow.{run.flow_id}": (client.read_flow, run.flow_id),
        f"deployment.{run.deployment_id}": (client.read_deployment, run.deployment_id),
        f"work-queue.{run.work_queue_id}": (client.read_work_queue, run.work_queue_id),
        f"work-pool.{run.work_pool_name}": (client.read_work_pool, run.work_pool_name),
    }
    found: dict[str, Any] = {}
    for key, (read, obj_id) in wanted.items():
        if obj_id is None:
            continue
        cached = cache.get(key)
        if cached is None or time.monotonic() - cached[1] > RELATED_TTL_S:
            try:
                cached = (await read(obj_id), time.monotonic())
            except Exception:
                continue
            cache[key] = cached
        found[key] = cached[0]
    return found


class Dispatch:
    """The pilot worker's dispatch (see the module docstring).

    ``worker`` is the :class:`p3s.pilots.worker.PilotWorker` that composes this part: its
    Prefect client, logger, work pool, task group, Dask client and the table of runs in flight
    (``worker.in_flight``), shared with the other parts.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # Event-driven dispatch: set to fetch runs now rather than at the next fallback poll.
        self._wake = asyncio.Event()
        # Every reason given since the last fetch, in order: a freed slot that wakes the
        # dispatch just after an event must not hide the event from the log.
        self._wake_reasons: list[str] = []
        #: Runs may be waiting: the last fetch filled every free slot, or one was scheduled
        #: since. A freed slot then fetches at once.
        self.maybe_waiting = True
        self._fetching = asyncio.Lock()
        # Runs passed over for their jobtype's limit at the last fetch: the next asks for more.
        self._skipped = 0
        self._limits: dict[str, int] = {}
        self._limits_read = 0.0
        self._entrypoints: dict[UUID, str] = {}
        #: The runs' flows, deployments, work queues and pools for their children's events,
        #: by Prefect's cache key, with the time each was read.
        self.related: dict[str, tuple[Any, float]] = {}

    @property
    def _logger(self) -> Any:
        return self.worker._logger

    # -- slots and wake-ups -----------------------------------------------------------------

    def slots(self) -> int:
        """Flow-run slots of the connected pilots not being retired (within the worker's
        limit)."""
        w = self.worker
        workers = w.cluster.scheduler_info.get("workers", {}) if w.cluster else {}
        retiring = w.sizing.retiring
        slots = sum(x.get("nthreads", 0) for x in workers.values() if x["name"] not in retiring)
        if w._limit is not None:
            slots = min(slots, w._limit)
        return slots

    def free_slots(self) -> int:
        return self.slots() - len(self.worker.in_flight)

    def wake_for(self, reason: str) -> None:
        """Fetch runs now (see :meth:`dispatch_on_wake`); ``reason`` goes to its log line."""
        if reason not in self._wake_reasons:
            self._wake_reasons.append(reason)
        self._wake.set()

    def slot_freed(self) -> None:
        """A run left its slot: fetch at once if runs may be waiting for one."""
        if self.maybe_waiting:
            self.wake_for("a freed pilot slot")

    async def dispatch_on_wake(self) -> None:
        """Fetch and submit runs each time a wake-up is asked for (between fallback polls)."""
        with self.worker.service_scope():
            while True:
                await self._wake.wait()
                self._wake.clear()
                reasons, self._wake_reasons = self._wake_reasons, []
                try:
                    runs = await self.worker.get_and_submit_flow_runs()
                except Exception as exc:
                    self._logger.warning("dispatch failed: %s", exc, exc_info=True)
                    continue
                if runs:
                    self._logger.info(
                        "dispatched on %s: %s",
                        " and ".join(reasons),
                        ", ".join(str(r.id) for r in runs),
                    )

    def _scheduled_filter(self) -> Any:
        from prefect.events.filters import (
            EventFilter,
            EventNameFilter,
            EventOccurredFilter,
            EventRelatedFilter,
        )

        work_pool = self.worker._work_pool
        assert work_pool is not None
        return EventFilter(
            # No backfill of older events: the first fetch after connecting finds those runs.
            occurred=EventOccurredFilter(since=datetime.datetime.now(datetime.UTC)),
            # AwaitingRetry: a run put back after its pilot was lost (by any worker).
            event=EventNameFilter(
                name=["prefect.flow-run.Scheduled", "prefect.flow-run.AwaitingRetry"]
            ),
            related=EventRelatedFilter(id=[f"prefect.work-pool.{work_pool.id}"]),
        )

    async def watch_scheduled(self) -> None:
        """Wake the dispatch for every run of this pool that the server schedules.

        Polling the server often enough for sub-second dispatch cost it a third of a core on a
        2-core host with the pool idle (measured: 0.2 s polls); the event arrives within
        milliseconds and costs nothing while nothing happens. The fallback poll
        (``P3S_PILOTS__QUERY_SECONDS``) covers a lost websocket and runs scheduled for later.
        """
        from prefect.events.clients import get_events_subscriber

        query_seconds = self.worker.settings.pilots.query_seconds
        with self.worker.service_scope():
            while self.worker._work_pool is None:
                await anyio.sleep(0.1)
            while True:
                try:
                    async with get_events_subscriber(filter=self._scheduled_filter()) as events:
                        self.wake_for("the events websocket (re)connecting")
                        async for event in events:
                            self.maybe_waiting = True
                            self.wake_for(f"event {event.event}")
                except Exception as exc:
                    self._logger.warning(
                        "no events from the server (%s): runs are dispatched by the fallback "
                        "poll every %s s until it is back",
                        exc,
                        query_seconds,
                    )
                await anyio.sleep(query_seconds)

    # -- fetch, claim, submit ---------------------------------------------------------------

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """One dispatch (Prefect's fallback poll and every wake-up come here)."""
        w = self.worker
        w._last_polled_time = prefect_now("UTC")
        if not w._has_successfully_synced or w.dask is None:
            return []
        # The fallback poll and a wake may meet: one fetch at a time, or both would fill
        # the same free slots.
        async with self._fetching:
            return await self.fetch_and_submit()

    async def fetch_and_submit(self) -> list[FlowRun]:
        free = self.free_slots()
        if free <= 0:
            return []
        limit = min(free + self._skipped, FETCH_LIMIT)
        runs = await self.fetch(limit)
        self.maybe_waiting = len(runs) >= limit
        self._skipped = 0
        await self.refresh_limits()
        claimed_per_type: dict[str, int] = {}
        chosen: list[FlowRun] = []
        for run in runs:
            if len(chosen) >= free:
                break
            if run.id in self.worker.in_flight:
                continue
            jobtype = limits.jobtype_of(run.tags)
            if jobtype in self._limits:
                if jobtype not in claimed_per_type:
                    claimed_per_type[jobtype] = await limits.active_runs(
                        self.worker.client, jobtype
                    )
                if claimed_per_type[jobtype] >= self._limits[jobtype]:
                    self._skipped += 1
                    continue
                claimed_per_type[jobtype] += 1
            chosen.append(run)
        submitted = await asyncio.gather(*(self.claim_and_submit(run) for run in chosen))
        return [run for run, entry in zip(chosen, submitted, strict=True) if entry is not None]

    async def fetch(self, limit: int) -> list[FlowRun]:
        """The pool's scheduled runs due now (and within the prefetch), best first."""
        w = self.worker
        body: dict[str, Any] = {
            "limit": limit,
            "scheduled_before": (
                datetime.datetime.now(datetime.UTC)
                + datetime.timedelta(seconds=w._prefetch_seconds)
            ).isoformat(),
        }
        if w._work_queues:
            body["work_queue_names"] = sorted(w._work_queues)
        try:
            response = await w.client.request(
                "POST",
                "/work_pools/{name}/get_scheduled_flow_runs",
                path_params={"name": w._work_pool_name},
                json=body,
            )
        except Exception as exc:  # the server may be busy: try again at the next poll
            self._logger.warning("could not read scheduled runs: %s", exc)
            return []
        return [r.flow_run for r in WorkerFlowRunResponse.model_validate_list(response.json())]

    async def refresh_limits(self) -> None:
        if time.monotonic() - self._limits_read < LIMITS_TTL_S:
            return
        try:
            self._limits = await limits.read_limits(self.worker.client)
        except Exception as exc:
            self._logger.warning("could not read jobtype limits: %s", exc)
        self._limits_read = time.monotonic()

    async def claim_and_submit(self, run: FlowRun) -> InFlight | None:
        # The claim names the Dask task that is to execute the run: an execution of an older
        # claim (its pilot was lost, its worker closing) then declines to start it.
        w = self.worker
        key = task_key(run.id)
        try:
            state = await propose_state(
                w.client, Pending(message=self.claim_message(key)), flow_run_id=run.id
            )
        except Abort:
            return None
        except Exception as exc:
            self._logger.warning("could not claim flow run %s: %s", run.id, exc)
            return None
        if not state.is_pending():
            return None
        try:
            entry = await self.submit(run, key)
        except Exception as exc:
            self._logger.exception("could not hand flow run %s to a pilot", run.id)
            await w.outcomes.reschedule(run.id, f"it could not be handed to a pilot: {exc!r}")
            return None
        if entry is not None:
            assert w._runs_task_group is not None
            w._runs_task_group.start_soon(w.outcomes.watch, entry)
        return entry

    async def _entrypoint(self, run: FlowRun) -> str | None:
        if run.deployment_id is None:
            return None
        if run.deployment_id not in self._entrypoints:
            deployment = await self.worker.client.read_deployment(run.deployment_id)
            self._entrypoints[run.deployment_id] = deployment.entrypoint or ""
            self.related[f"deployment.{run.deployment_id}"] = (deployment, time.monotonic())
        return self._entrypoints[run.deployment_id] or None

    async def submit(self, run: FlowRun, key: str) -> InFlight | None:
        """Hand a claimed run to Dask as the task ``key``; None if it cannot run on a pilot
        (it is then Crashed)."""
        w = self.worker
        try:
            entrypoint = await self._entrypoint(run)
        except ObjectNotFound:
            entrypoint = None
        if entrypoint is None:
            await w.outcomes.set_state(
                run.id, Crashed(message="no deployment entrypoint: pilots run deployments only")
            )
            return None
        related = await related_objects(w.client, run, self.related)
        future = w.dask.submit(
            execute.run_on_pilot,
            str(run.id),
            entrypoint,
            key,
            related,
            key=key,
            pure=False,
            retries=0,
        )
        entry = InFlight(run.id, run.name, limits.jobtype_of(run.tags), future)
        w.in_flight[run.id] = entry
        if w._cancelling_observer is not None:
            w._cancelling_observer.add_in_flight_flow_run_id(run.id)
        return entry

    def claim_message(self, key: str) -> str:
        return f"{self.claimed_by} for {key}"

    @property
    def claimed_by(self) -> str:
        return f"claimed by pilot worker {self.worker.name}"

    # -- runs an earlier process of this worker held ----------------------------------------

    async def recover_orphans(self) -> None:
        """Put back to Scheduled the runs an earlier process of this worker (same name: same
        host and pool) claimed and left Pending or Running when it was killed.

        Local pilots die with the worker's process within a second (each run's child with its
        pilot), so they are recovered at once; batch pilots live on for the cluster's
        ``death_timeout`` without their scheduler, so those runs are left that long (and 30 s)
        first: a run is never executed twice at the same time.
        """
        w = self.worker
        pool = w.pilot_pool
        assert pool is not None
        grace = 0.0 if pool.cluster == "local" else pool.lost_grace_s
        with w.service_scope():
            try:
                orphans = await self._find_orphans()
            except Exception as exc:
                self._logger.warning("could not look for orphaned runs: %s", exc)
                return
            if not orphans:
                return
            self._logger.warning(
                "%s run(s) claimed by an earlier process of this worker: rescheduled in %.0f s",
                len(orphans),
                grace,
            )
            await anyio.sleep(grace)
            for run_id in orphans:
                if run_id not in w.in_flight:
                    await w.outcomes.reschedule(
                        run_id, f"its pilot worker {w.name} stopped while it held the run"
                    )

    async def _find_orphans(self) -> list[UUID]:
        w = self.worker
        found: list[UUID] = []
        offset = 0
        while True:
            page = await w.client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[w._work_pool_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                    )
                ),
                limit=FETCH_LIMIT,
                offset=offset,
            )
            for run in page:
                if run.id in w.in_flight:
                    continue
                states = await w.client.read_flow_run_states(run.id)
                claims = [st for st in states if st.type == StateType.PENDING]
                if claims and (claims[-1].message or "").startswith(f"{self.claimed_by} for "):
                    found.append(run.id)
            if len(page) < FETCH_LIMIT:
                return found
            offset += len(page)
