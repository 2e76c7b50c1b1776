"""The ``p3s-pilot`` worker type: flow runs of a work pool execute on warm Dask workers (pilots).

``prefect worker start --type p3s-pilot --pool NAME`` (or ``p3s up``) runs one
:class:`PilotWorker`. It holds the pool's Dask cluster (local, Slurm or HTCondor, from a
:class:`~p3s.blocks.pilot_pool.PilotPool`) and, whenever the server says a run of its pool
was scheduled (a ``prefect.flow-run.Scheduled`` event on its events websocket), a pilot slot
frees while runs may be waiting, or ``P3S_PILOTS__QUERY_SECONDS`` have passed (the fallback
poll):

1. asks the server for scheduled runs with a limit equal to its free pilot slots (queue
   priorities respected: priority-10 first), leaving runs whose jobtype is at its limit;
2. claims each by proposing ``Pending`` and keeps it only if the server accepted;
3. submits :func:`p3s.pilots.execute.run_on_pilot` to Dask, which forks the run's child on a
   pilot (milliseconds on a warm pilot) and waits for it.

When a run ends the worker looks at how: a child killed by a cancellation gets ``Cancelled``; a
child that died without a final state gets ``Crashed``; a run whose pilot was lost (batch job
killed, evicted, at its walltime) is put back to ``Scheduled`` and a ``p3s.pilot.lost`` event
says so, so it runs again on another pilot and is never left Running. Dask never re-runs the
task itself (``allowed-failures`` 0), and the child only starts a run that is still Pending.

Every ``P3S_PILOTS__SCALE_SECONDS`` the worker sizes the pool from the backlog of scheduled runs
(:mod:`p3s.pilots.scaling`), emits ``p3s.pilots.scaled`` for each change and publishes the pilot
counts (:mod:`p3s.pilots.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import anyio
from distributed.diagnostics.plugin import WorkerPlugin
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import WorkerFlowRunResponse
from prefect.events import emit_event
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Cancelled, Crashed, Pending, Scheduled
from prefect.types._datetime import now as prefect_now
from prefect.utilities.engine import propose_state
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)

from p3s.blocks.pilot_pool import PilotPool
from p3s.pilots import api_retry, execute, limits, scaling
from p3s.pilots.status import PilotCounts, publish
from p3s.system.settings import Settings, get_settings

#: Seconds the runs' flows, deployments, work queues and pools are reused for their events.
RELATED_TTL_S = 300.0
#: Seconds a cancelled payload gets between SIGTERM and SIGKILL.
CANCEL_GRACE_S = 5.0


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


class PilotJobConfiguration(BaseJobConfiguration):
    """Nothing per run: the pilots are configured by the pool's PilotPool block."""


class PilotVariables(BaseVariables):
    """No per-deployment variables yet."""


class PilotWorkerResult(BaseWorkerResult):
    """How one flow run ended on a pilot."""


@dataclass
class InFlight:
    """A flow run claimed by this worker and handed to Dask."""

    run_id: UUID
    name: str
    jobtype: str | None
    future: Any
    submitted: float = field(default_factory=time.monotonic)


#: Times a run whose child ended before the run started is put back before it is Crashed.
NOT_STARTED_RETRIES = 2
#: Most scheduled runs one request may ask for (Prefect's API refuses a larger limit).
MAX_FETCH = 200


def _task_key(run_id: UUID) -> str:
    """A fresh Dask key for one execution of a flow run (its claim names it)."""
    return f"p3s-run-{run_id}-{uuid.uuid4().hex[:8]}"


async def load_pilot_pool(settings: Settings) -> PilotPool:
    """The saved PilotPool block named in the settings, else one built from them."""
    p = settings.pilots
    if p.block:
        return await PilotPool.aload(p.block)
    return PilotPool(
        cluster=p.cluster,  # type: ignore[arg-type]
        cores=p.cores,
        slots=p.slots,
        memory=p.memory,
        walltime=p.walltime,
        queue=p.queue,
        min_pilots=p.min_pilots,
        max_pilots=p.max_pilots,
        idle_seconds=p.idle_seconds,
        death_timeout=p.death_timeout,
        log_directory=str(settings.run_dir / "pilots"),
    )


class PilotWorker(BaseWorker[PilotJobConfiguration, PilotVariables, PilotWorkerResult]):
    """Runs a work pool's flow runs on warm Dask workers (pilots); see the module docstring."""

    type = "p3s-pilot"
    job_configuration = PilotJobConfiguration
    job_configuration_variables = PilotVariables
    _description = "p3s pilots: flow runs on warm Dask workers (local, Slurm, HTCondor)."
    _display_name = "p3s pilots"
    _documentation_url = "https://github.com/"

    def __init__(self, *args: Any, pilot_pool: PilotPool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pilot_pool = pilot_pool
        self.settings = get_settings()
        self._cluster: Any = None
        self._dask: Any = None
        self._in_flight: dict[UUID, InFlight] = {}
        self._entrypoints: dict[UUID, str] = {}
        #: The runs' flows, deployments, work queues and pools for their children's events,
        #: by Prefect's cache key, with the time each was read.
        self._related: dict[str, tuple[Any, float]] = {}
        # Runs whose child ended before the run started, and how often (see _settle).
        self._not_started: dict[UUID, int] = {}
        self._skipped = 0
        self._limits: dict[str, int] = {}
        self._limits_read = 0.0
        self._backlog = 0
        self._seen: set[str] = set()
        self._retiring: set[str] = set()
        self._idle_since: dict[str, float] = {}
        self._stopped = 0
        self._lost = 0
        self._last_counts: PilotCounts | None = None
        self._scope: anyio.CancelScope | None = None
        self._cancelling: set[UUID] = set()
        self._below_target = scaling.BelowTarget(self.settings.pilots.below_target_seconds)
        # Event-driven dispatch: set to fetch runs now rather than at the next fallback poll.
        self._wake = asyncio.Event()
        # Every reason given since the last fetch, in order: a freed slot that wakes the
        # dispatch just after an event must not hide the event from the log.
        self._wake_reasons: list[str] = []
        # Runs may be waiting: the last fetch filled every free slot, or one was scheduled
        # since. A freed slot then fetches at once.
        self._maybe_waiting = True
        self._fetching = asyncio.Lock()

    # -- life cycle -------------------------------------------------------------------------

    async def setup(self) -> None:
        await super().setup()
        from distributed import Client

        if self.pilot_pool is None:
            self.pilot_pool = await load_pilot_pool(self.settings)
        from p3s.pilots.cluster import start_cluster

        self._cluster = await start_cluster(self.pilot_pool)
        self._dask = await Client(self._cluster, asynchronous=True)
        await self._dask.register_plugin(WarmUp(), name="p3s-warm-up")
        if self.pilot_pool.min_pilots:
            self._cluster.scale(self.pilot_pool.min_pilots)
        self._logger.info(
            "pilot pool: %s cluster, %s..%s pilots of %s slot(s)",
            self.pilot_pool.cluster,
            self.pilot_pool.min_pilots,
            self.pilot_pool.max_pilots,
            self.pilot_pool.slots_per_pilot,
        )
        self._scope = anyio.CancelScope()
        self._scheduled_task_scopes.add(self._scope)
        assert self._runs_task_group is not None
        self._runs_task_group.start_soon(self._scale_loop)
        self._runs_task_group.start_soon(self._recover_orphans)
        self._runs_task_group.start_soon(self._dispatch_on_wake)
        self._runs_task_group.start_soon(self._watch_scheduled)

    async def teardown(self, *exc_info: Any) -> None:
        if self._scope is not None:
            self._scope.cancel()
        in_flight = list(self._in_flight)
        # Pilots first (their children die with them), then no run may stay Running.
        if self._dask is not None:
            with contextlib.suppress(Exception):
                await self._dask.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                await self._cluster.close()
        for run_id in in_flight:  # their pilots were just closed: no grace to wait
            with contextlib.suppress(Exception):
                await self._reschedule(run_id, "the pilot worker stopped", grace_s=0.0)
        await super().teardown(*exc_info)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: PilotJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> PilotWorkerResult:
        """Run one flow run (already Pending) on a pilot and wait for it."""
        key = _task_key(flow_run.id)
        await self._set_state(flow_run.id, Pending(message=self._claim_message(key)))
        entry = await self._submit(flow_run, key)
        if task_status is not None:
            task_status.started(0)
        if entry is None:
            return PilotWorkerResult(identifier=str(flow_run.id), status_code=1)
        code = await self._watch(entry)
        return PilotWorkerResult(identifier=str(flow_run.id), status_code=code)

    # -- dispatch ---------------------------------------------------------------------------

    def _slots(self) -> int:
        workers = self._cluster.scheduler_info.get("workers", {}) if self._cluster else {}
        slots = sum(
            w.get("nthreads", 0) for w in workers.values() if w["name"] not in self._retiring
        )
        if self._limit is not None:
            slots = min(slots, self._limit)
        return slots

    def _free_slots(self) -> int:
        return self._slots() - len(self._in_flight)

    def _service_scope(self) -> anyio.CancelScope:
        """A cancel scope for one of the worker's loops, cancelled when the worker stops
        (a scope serves one ``with`` block only)."""
        scope = anyio.CancelScope()
        self._scheduled_task_scopes.add(scope)
        return scope

    async def _dispatch_on_wake(self) -> None:
        """Fetch and submit runs each time :attr:`_wake` is set (between fallback polls)."""
        with self._service_scope():
            while True:
                await self._wake.wait()
                self._wake.clear()
                reasons, self._wake_reasons = self._wake_reasons, []
                try:
                    runs = await self.get_and_submit_flow_runs()
                except Exception as exc:
                    self._logger.warning("dispatch failed: %s", exc, exc_info=True)
                    continue
                if runs:
                    self._logger.info(
                        "dispatched on %s: %s",
                        " and ".join(reasons),
                        ", ".join(str(r.id) for r in runs),
                    )

    def _wake_for(self, reason: str) -> None:
        """Fetch runs now (see :meth:`_dispatch_on_wake`); ``reason`` goes to its log line."""
        if reason not in self._wake_reasons:
            self._wake_reasons.append(reason)
        self._wake.set()

    def _scheduled_filter(self) -> Any:
        import datetime

        from prefect.events.filters import (
            EventFilter,
            EventNameFilter,
            EventOccurredFilter,
            EventRelatedFilter,
        )

        assert self._work_pool is not None
        return EventFilter(
            # No backfill of older events: the first fetch after connecting finds those runs.
            occurred=EventOccurredFilter(since=datetime.datetime.now(datetime.UTC)),
            # AwaitingRetry: a run put back after its pilot was lost (by any worker).
            event=EventNameFilter(
                name=["prefect.flow-run.Scheduled", "prefect.flow-run.AwaitingRetry"]
            ),
            related=EventRelatedFilter(id=[f"prefect.work-pool.{self._work_pool.id}"]),
        )

    async def _watch_scheduled(self) -> None:
        """Wake the dispatch for every run of this pool that the server schedules.

        Polling the server often enough for sub-second dispatch cost it a third of a core on a
        2-core host with the pool idle (measured: 0.2 s polls); the event arrives within
        milliseconds and costs nothing while nothing happens. The fallback poll
        (``P3S_PILOTS__QUERY_SECONDS``) covers a lost websocket and runs scheduled for later.
        """
        from prefect.events.clients import get_events_subscriber

        with self._service_scope():
            while self._work_pool is None:
                await anyio.sleep(0.1)
            while True:
                try:
                    async with get_events_subscriber(filter=self._scheduled_filter()) as events:
                        self._wake_for("the events websocket (re)connecting")
                        async for event in events:
                            self._maybe_waiting = True
                            self._wake_for(f"event {event.event}")
                except Exception as exc:
                    self._logger.warning(
                        "no events from the server (%s): runs are dispatched by the fallback "
                        "poll every %s s until it is back",
                        exc,
                        self.settings.pilots.query_seconds,
                    )
                await anyio.sleep(self.settings.pilots.query_seconds)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        self._last_polled_time = prefect_now("UTC")
        if not self._has_successfully_synced or self._dask is None:
            return []
        # The fallback poll and a wake may meet: one fetch at a time, or both would fill
        # the same free slots.
        async with self._fetching:
            return await self._fetch_and_submit()

    async def _fetch_and_submit(self) -> list[FlowRun]:
        free = self._free_slots()
        if free <= 0:
            return []
        # The server refuses a page of more than 200 runs (422): a pool with more free slots
        # takes 200 now and the rest at once after (``_maybe_waiting``).
        limit = min(free + self._skipped, MAX_FETCH)
        runs = await self._fetch(limit)
        self._maybe_waiting = len(runs) >= limit
        self._skipped = 0
        await self._refresh_limits()
        claimed_per_type: dict[str, int] = {}
        chosen: list[FlowRun] = []
        for run in runs:
            if len(chosen) >= free:
                break
            if run.id in self._in_flight:
                continue
            jobtype = limits.jobtype_of(run.tags)
            if jobtype in self._limits:
                if jobtype not in claimed_per_type:
                    claimed_per_type[jobtype] = await limits.active_runs(self.client, jobtype)
                if claimed_per_type[jobtype] >= self._limits[jobtype]:
                    self._skipped += 1
                    continue
                claimed_per_type[jobtype] += 1
            chosen.append(run)
        submitted = await asyncio.gather(*(self._claim_and_submit(run) for run in chosen))
        return [run for run, entry in zip(chosen, submitted, strict=True) if entry is not None]

    async def _fetch(self, limit: int) -> list[FlowRun]:
        import datetime

        body: dict[str, Any] = {
            "limit": limit,
            "scheduled_before": (
                datetime.datetime.now(datetime.UTC)
                + datetime.timedelta(seconds=self._prefetch_seconds)
            ).isoformat(),
        }
        if self._work_queues:
            body["work_queue_names"] = sorted(self._work_queues)
        try:
            response = await self.client.request(
                "POST",
                "/work_pools/{name}/get_scheduled_flow_runs",
                path_params={"name": self._work_pool_name},
                json=body,
            )
        except Exception as exc:  # the server may be busy: try again at the next poll
            self._logger.warning("could not read scheduled runs: %s", exc)
            return []
        return [r.flow_run for r in WorkerFlowRunResponse.model_validate_list(response.json())]

    async def _refresh_limits(self) -> None:
        if time.monotonic() - self._limits_read < 5:
            return
        try:
            self._limits = await limits.read_limits(self.client)
        except Exception as exc:
            self._logger.warning("could not read jobtype limits: %s", exc)
        self._limits_read = time.monotonic()

    async def _claim_and_submit(self, run: FlowRun) -> InFlight | None:
        # The claim names the Dask task that is to execute the run: an execution of an older
        # claim (its pilot was lost, its worker closing) then declines to start it.
        key = _task_key(run.id)
        try:
            state = await propose_state(
                self.client,
                Pending(message=self._claim_message(key)),
                flow_run_id=run.id,
            )
        except Abort:
            return None
        except Exception as exc:
            self._logger.warning("could not claim flow run %s: %s", run.id, exc)
            return None
        if not state.is_pending():
            return None
        try:
            entry = await self._submit(run, key)
        except Exception as exc:
            self._logger.exception("could not hand flow run %s to a pilot", run.id)
            await self._reschedule(run.id, f"it could not be handed to a pilot: {exc!r}")
            return None
        if entry is not None:
            assert self._runs_task_group is not None
            self._runs_task_group.start_soon(self._watch, entry)
        return entry

    async def _entrypoint(self, run: FlowRun) -> str | None:
        if run.deployment_id is None:
            return None
        if run.deployment_id not in self._entrypoints:
            deployment = await self.client.read_deployment(run.deployment_id)
            self._entrypoints[run.deployment_id] = deployment.entrypoint or ""
            self._related[f"deployment.{run.deployment_id}"] = (deployment, time.monotonic())
        return self._entrypoints[run.deployment_id] or None

    async def _related_objects(self, run: FlowRun) -> dict[str, Any]:
        return await related_objects(self.client, run, self._related)

    async def _submit(self, run: FlowRun, key: str) -> InFlight | None:
        try:
            entrypoint = await self._entrypoint(run)
        except ObjectNotFound:
            entrypoint = None
        if entrypoint is None:
            await self._set_state(
                run.id, Crashed(message="no deployment entrypoint: pilots run deployments only")
            )
            return None
        related = await self._related_objects(run)
        future = self._dask.submit(
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
        self._in_flight[run.id] = entry
        if self._cancelling_observer is not None:
            self._cancelling_observer.add_in_flight_flow_run_id(run.id)
        return entry

    def _claim_message(self, key: str) -> str:
        return f"{self._claimed_by} for {key}"

    @property
    def _claimed_by(self) -> str:
        return f"claimed by pilot worker {self.name}"

    async def _recover_orphans(self) -> None:
        """Put back to Scheduled the runs an earlier process of this worker (same name: same
        host and pool) claimed and left Pending or Running when it was killed.

        Local pilots die with the worker's process within a second (each run's child with its
        pilot), so they are recovered at once; batch pilots live on for the cluster's
        ``death_timeout`` without their scheduler, so those runs are left that long (and 30 s)
        first: a run is never executed twice at the same time.
        """
        pool = self.pilot_pool
        assert pool is not None
        grace = 0.0 if pool.cluster == "local" else pool.lost_grace_s
        scope = anyio.CancelScope()  # a scope is entered once: this task gets its own
        self._scheduled_task_scopes.add(scope)
        with scope:
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
                if run_id not in self._in_flight:
                    await self._reschedule(
                        run_id, f"its pilot worker {self.name} stopped while it held the run"
                    )

    async def _find_orphans(self) -> list[UUID]:
        found: list[UUID] = []
        offset = 0
        while True:
            page = await self.client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(
                    name=WorkPoolFilterName(any_=[self._work_pool_name])
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                    )
                ),
                limit=200,
                offset=offset,
            )
            for run in page:
                if run.id in self._in_flight:
                    continue
                states = await self.client.read_flow_run_states(run.id)
                claims = [st for st in states if st.type == StateType.PENDING]
                if claims and (claims[-1].message or "").startswith(f"{self._claimed_by} for "):
                    found.append(run.id)
            if len(page) < 200:
                return found
            offset += len(page)

    # -- outcomes ---------------------------------------------------------------------------

    async def _watch(self, entry: InFlight) -> int:
        """Wait for a run's Dask task and settle its state; returns an exit status."""
        from distributed import KilledWorker

        try:
            result = await entry.future
        except KilledWorker as exc:
            pilot = getattr(getattr(exc, "last_worker", None), "name", "?")
            await self._pilot_lost(str(pilot), [entry.run_id])
            return 1
        except (asyncio.CancelledError, Exception) as exc:
            stopping = self._scope is not None and self._scope.cancel_called
            if isinstance(exc, asyncio.CancelledError) and stopping:
                raise
            await self._reschedule(entry.run_id, f"its pilot task ended: {exc!r}")
            return 1
        finally:
            self._in_flight.pop(entry.run_id, None)
            self._cancelling.discard(entry.run_id)
            if self._maybe_waiting:  # a slot is free and runs may be waiting for one
                self._wake_for("a freed pilot slot")
            if self._cancelling_observer is not None:
                self._cancelling_observer.remove_in_flight_flow_run_id(entry.run_id)
        # This runs as a task of the worker's task group: an error escaping it would end the
        # whole worker, its pilots and every payload on them.
        try:
            return await self._settle(entry, result)
        except Exception:
            self._logger.exception("could not settle flow run %s", entry.run_id)
            return 1

    async def _settle(self, entry: InFlight, result: dict[str, Any]) -> int:
        code = result.get("exit_code")
        pilot = result.get("pilot")
        if result.get("cancelled"):
            await self._set_state(
                entry.run_id, Cancelled(message=f"cancelled: payload stopped on pilot {pilot}")
            )
            return 0
        tries = self._not_started.pop(entry.run_id, 0)
        if code == 0:
            return 0
        run = await self._read_run(entry.run_id)
        state = run.state
        if state is None or state.is_final():
            return 0 if code == execute.NOT_CLAIMED else code or 1
        if execute.claimed_for(state, str(entry.future.key)) and tries < NOT_STARTED_RETRIES:
            # Still this execution's claim: the child ended before its engine set Running, so
            # nothing of the run was executed (the Prefect API unreachable while the server
            # restarts, typically). It may run again; one that never starts ends Crashed.
            self._not_started[entry.run_id] = tries + 1
            await self._reschedule(
                entry.run_id,
                f"its flow-run process on pilot {pilot} exited with code {code} before the "
                f"run started (attempt {tries + 1} of {NOT_STARTED_RETRIES + 1})",
            )
            return code or 1
        if code == execute.NOT_CLAIMED:
            # Another execution has the run. A newer claim (Pending) goes its own way; an
            # execution of an older claim that started it (Running) lives on a lost pilot:
            # run it again once that pilot's processes must have ended.
            if state.type == StateType.RUNNING:
                await self._reschedule(entry.run_id, f"its execution on pilot {pilot} was lost")
            return 0
        if state.type == StateType.CANCELLING:
            await self._set_state(entry.run_id, Cancelled(message="cancelled on its pilot"))
            return 0
        await self._set_state(
            entry.run_id,
            Crashed(message=f"the flow-run process on pilot {pilot} exited with code {code}"),
        )
        return code or 1

    async def _patiently(self, call: Any, what: str) -> Any:
        """``await call()`` through a busy or restarting server (see :mod:`.api_retry`); once
        the worker is stopping, one try (``p3s down`` must not wait on a server gone first)."""
        stopping = self._scope is not None and self._scope.cancel_called
        return await api_retry.patiently(
            call,
            what=what,
            patience_s=0.0 if stopping else self.settings.pilots.api_patience_seconds,
            logger=self._logger,
        )

    async def _read_run(self, run_id: UUID) -> FlowRun:
        return await self._patiently(
            lambda: self.client.read_flow_run(run_id), f"reading flow run {run_id}"
        )

    async def _set_state(self, run_id: UUID, state: Any) -> None:
        try:
            await self._patiently(
                lambda: self.client.set_flow_run_state(run_id, state, force=True),
                f"setting {state.name} on flow run {run_id}",
            )
        except ObjectNotFound:
            pass
        except Exception as exc:
            self._logger.error("could not set %s on flow run %s: %s", state.name, run_id, exc)

    async def _reschedule(self, run_id: UUID, why: str, grace_s: float | None = None) -> None:
        """Put a run whose execution was lost back to Scheduled (unless it has finished).

        A run left Running by a lost pilot is put back only after ``grace_s`` (default: the
        pool's ``lost_grace_s``): a pilot removed by its scheduler may still be closing (a
        local one is killed by its nanny within seconds; a batch one ends itself at its
        ``death_timeout``), and its execution with it. Until then it stays Running, and if it
        finishes there that is its result. Errors are logged, never raised: its callers run
        as tasks of the worker's task group.
        """
        try:
            await self._reschedule_now(run_id, why, grace_s)
        except ObjectNotFound:
            return
        except Exception as exc:
            self._logger.error("could not put flow run %s back (%s): %s", run_id, why, exc)

    async def _reschedule_now(self, run_id: UUID, why: str, grace_s: float | None) -> None:
        run = await self._read_run(run_id)
        if run.state is not None and run.state.type == StateType.RUNNING:
            running = run.state.id
            assert self.pilot_pool is not None
            await anyio.sleep(self.pilot_pool.lost_grace_s if grace_s is None else grace_s)
            run = await self._read_run(run_id)
            if run.state is None or run.state.id != running:
                return  # it moved on (finished, cancelled, or run again) in the meantime
        if run.state is not None and run.state.is_final():
            return
        if run.state is not None and run.state.type == StateType.CANCELLING:
            await self._set_state(run_id, Cancelled(message=f"cancelled; {why}"))
            return
        await self._set_state(
            run_id, Scheduled(name="AwaitingRetry", message=f"rescheduled: {why} (pilotTO)")
        )

    async def _pilot_lost(self, pilot: str, run_ids: list[UUID]) -> None:
        self._lost_event(pilot, run_ids)
        for run_id in run_ids:
            await self._reschedule(run_id, f"pilot {pilot} was lost")

    def _lost_event(self, pilot: str, run_ids: list[UUID]) -> None:
        emit_event(
            event="p3s.pilot.lost",
            resource={
                "prefect.resource.id": f"p3s.pilot.{self._work_pool_name}.{pilot}",
                "prefect.resource.name": str(pilot),
                "p3s.pool": self._work_pool_name,
            },
            payload={
                "pilot": str(pilot),
                "runs": [str(r) for r in run_ids],
                "reason": "pilot lost (pilotTO): batch job killed, evicted or at its walltime",
            },
        )

    # -- cancellation -----------------------------------------------------------------------

    async def _poll_cancellations(self) -> None:
        """Find in-flight runs set Cancelling (a fallback when the worker's event-driven
        cancellation observer is off or disconnected)."""
        ids = [i for i in self._in_flight if i not in self._cancelling]
        if not ids:
            return
        cancelling = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=ids),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING])),
            )
        )
        for run in cancelling:
            await self._cancel_run(run.id)

    async def _cancel_run(self, flow_run_id: UUID) -> None:
        """Stop a cancelled run's payload on whichever pilot runs it (a task of the worker's
        task group, started by Prefect's cancellation observer: errors are logged)."""
        try:
            await self._cancel_run_now(flow_run_id)
        except Exception:
            self._logger.exception("could not cancel flow run %s", flow_run_id)

    async def _cancel_run_now(self, flow_run_id: UUID) -> None:
        entry = self._in_flight.get(flow_run_id)
        if entry is None:
            await super()._cancel_run(flow_run_id)
            return
        if flow_run_id in self._cancelling:
            return
        self._cancelling.add(flow_run_id)
        found = await self._dask.run(
            execute.cancel_local, str(flow_run_id), CANCEL_GRACE_S, on_error="return"
        )
        if not any(v is True for v in found.values()):
            # Not started on a pilot yet: drop the task; its child would refuse it anyway.
            with contextlib.suppress(Exception):
                await entry.future.cancel()
            await self._set_state(flow_run_id, Cancelled(message="cancelled before it started"))

    # -- scaling and counts -----------------------------------------------------------------

    async def _scale_loop(self) -> None:
        assert self._scope is not None
        with self._scope:
            while True:
                try:
                    await self._scale_once()
                except Exception as exc:
                    self._logger.warning("pilot scaling failed: %s", exc, exc_info=True)
                if self._maybe_waiting and self._free_slots() > 0:  # e.g. a pilot joined
                    self._wake_for("free pilot slots")
                await anyio.sleep(self.settings.pilots.scale_seconds)

    async def _count_backlog(self) -> int:
        import datetime

        now = datetime.datetime.now(datetime.UTC)
        return await self.client.count_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=now),
            ),
        )

    async def _scale_once(self) -> None:
        pool = self.pilot_pool
        assert pool is not None
        await self._poll_cancellations()
        self._backlog = await self._count_backlog()
        workers = dict(self._cluster.scheduler_info.get("workers", {}))
        connected = {str(w["name"]): addr for addr, w in workers.items()}
        processing = await self._dask.processing()
        busy = {str(workers[a]["name"]) for a, keys in processing.items() if keys and a in workers}
        held = [str(n) for n in self._cluster.worker_spec]
        now = time.monotonic()

        # Pilots that were connected and vanished without being retired: lost.
        for name in sorted(self._seen - set(connected)):
            self._seen.discard(name)
            if name in self._retiring:
                continue
            self._lost += 1
            self._logger.warning("pilot %s lost", name)
            self._lost_event(name, [])
        self._seen |= set(connected)
        self._retiring &= set(held)
        for name in list(self._idle_since):
            if name not in connected or name in busy:
                del self._idle_since[name]
        for name in connected:
            if name not in busy:
                self._idle_since.setdefault(name, now)

        starting = tuple(n for n in held if n not in connected)
        decision = scaling.decide(
            backlog=self._backlog,
            in_flight=len(self._in_flight),
            slots_per_pilot=pool.slots_per_pilot,
            min_pilots=pool.min_pilots,
            max_pilots=pool.max_pilots,
            held=len(held),
            idle_for={n: now - t for n, t in self._idle_since.items() if n in connected},
            starting=starting,
            idle_seconds=pool.idle_seconds,
        )
        if decision.changes:
            self._apply(decision)
            emit_event(
                event="p3s.pilots.scaled",
                resource=self._pool_resource(),
                payload={
                    "message": decision.message,
                    "required": decision.required,
                    "running": decision.running,
                    "submitting": decision.submit,
                    "retiring": list(decision.retire),
                    "backlog": decision.backlog,
                    "in_flight": decision.in_flight,
                },
            )
            self._logger.info("pilots: %s", decision.message)
        elif set(held) - set(self._cluster.workers):
            # A lost batch job is forgotten by the cluster: submit its replacement.
            self._cluster.scale(len(self._cluster.worker_spec))

        states = {
            n: ("running" if n in busy else "idle" if n in connected else "starting")
            for n in (str(x) for x in self._cluster.worker_spec)
        }
        counts = PilotCounts(
            pool=self._work_pool_name,
            cluster=pool.cluster,
            total=len(states),
            starting=sum(v == "starting" for v in states.values()),
            idle=sum(v == "idle" for v in states.values()),
            running=sum(v == "running" for v in states.values()),
            stopped=self._stopped,
            lost=self._lost,
            runs_in_flight=len(self._in_flight),
            backlog=self._backlog,
            pilots=states,
        )
        connected = counts.idle + counts.running
        below_s = self._below_target.update(now, connected, decision.required)
        if below_s is not None:
            self._below_target_event(decision.required, connected, counts.starting, below_s)
        if not counts.same_counts(self._last_counts):
            await publish(self.settings, counts)
            self._last_counts = counts

    def _pool_resource(self) -> dict[str, str]:
        """The resource of the pool's events (p3s.pilots.scaled, p3s.pilots.below-target)."""
        assert self.pilot_pool is not None
        return {
            "prefect.resource.id": f"p3s.pilot-pool.{self._work_pool_name}",
            "prefect.resource.name": self._work_pool_name,
            "p3s.cluster": self.pilot_pool.cluster,
        }

    def _below_target_event(
        self, required: int, connected: int, starting: int, seconds: float
    ) -> None:
        emit_event(
            event="p3s.pilots.below-target",
            resource=self._pool_resource(),
            payload={
                "required": required,
                "connected": connected,
                "starting": starting,
                "seconds": round(seconds),
            },
        )
        self._logger.warning(
            "pilots below target for %.0f s: %s connected, %s required, %s starting",
            seconds,
            connected,
            required,
            starting,
        )

    def _apply(self, decision: scaling.ScaleDecision) -> None:
        spec = self._cluster.worker_spec
        for name in decision.retire:
            key = next((k for k in spec if str(k) == name), None)
            if key is not None:
                del spec[key]
                self._retiring.add(name)
                self._stopped += 1
                self._idle_since.pop(name, None)
        self._cluster.scale(len(spec) + decision.submit)


class WarmUp(WorkerPlugin):
    """Dask worker plugin: start the pilot's fork server as soon as the pilot joins."""

    name = "p3s-warm-up"

    def setup(self, worker: Any) -> None:
        import threading

        threading.Thread(target=execute.warm_up, name="p3s-warm-up", daemon=True).start()
