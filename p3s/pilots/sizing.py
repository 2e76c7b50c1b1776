"""Pool sizing: the pilot worker's loop that counts the pilots and sizes the pool.

Every ``P3S_PILOTS__SCALE_SECONDS`` it counts the scheduled runs due in the pool (the backlog)
and the pilots (connected, busy, idle, starting, lost), lets :func:`p3s.pilots.scaling.decide`
say how many pilots are needed, grows or retires pilots accordingly, emits
``p3s.pilots.scaled`` for each change (``p3s.pilot.lost`` for a pilot gone without being
retired, ``p3s.pilots.below-target`` for a long shortfall) and publishes the pilot counts
(:mod:`p3s.pilots.status`). The decisions are pure functions in :mod:`p3s.pilots.scaling`.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import anyio
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.events import emit_event

from p3s.pilots import scaling
from p3s.pilots.status import PilotCounts, publish_variable, write_status


class PoolSizing:
    """The pilot worker's pool sizing (see the module docstring).

    ``worker`` is the :class:`p3s.pilots.worker.PilotWorker` that composes this part.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.backlog = 0
        #: Pilots seen connected (a pilot that vanishes from here unretired is lost).
        self._seen: set[str] = set()
        #: Pilots being retired: their slots are no longer offered to the dispatch.
        self.retiring: set[str] = set()
        self._idle_since: dict[str, float] = {}
        self._stopped = 0
        self._lost = 0
        self._last_counts: PilotCounts | None = None
        #: The counts last set in the Prefect variable, and when (monotonic s).
        self._published: PilotCounts | None = None
        self._published_at = -float("inf")
        self._below_target = scaling.BelowTarget(worker.settings.pilots.below_target_seconds)

    @property
    def _logger(self) -> Any:
        return self.worker._logger

    async def loop(self) -> None:
        """Size the pool every ``P3S_PILOTS__SCALE_SECONDS`` (errors are logged)."""
        w = self.worker
        with w.service_scope(first_to_stop=True):
            while True:
                try:
                    await self.size_once()
                except Exception as exc:
                    self._logger.warning("pilot scaling failed: %s", exc, exc_info=True)
                if w.dispatch.maybe_waiting and w.dispatch.free_slots() > 0:  # a pilot joined
                    w.dispatch.wake_for("free pilot slots")
                await anyio.sleep(w.settings.pilots.scale_seconds)

    async def count_backlog(self) -> int:
        """Scheduled runs of the pool due now."""
        w = self.worker
        now = datetime.datetime.now(datetime.UTC)
        return await w.client.count_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[w._work_pool_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=now),
            ),
        )

    async def size_once(self) -> None:
        w = self.worker
        pool = w.pilot_pool
        assert pool is not None
        cluster = w.cluster
        self.backlog = await self.count_backlog()
        workers = dict(cluster.scheduler_info.get("workers", {}))
        connected = {str(x["name"]): addr for addr, x in workers.items()}
        processing = await w.dask.processing()
        busy = {str(workers[a]["name"]) for a, keys in processing.items() if keys and a in workers}
        held = [str(n) for n in cluster.worker_spec]
        now = time.monotonic()

        # Pilots that were connected and vanished without being retired: lost.
        self._seen, self.retiring, lost = scaling.roll_call(
            self._seen, self.retiring, set(connected), set(held)
        )
        for name in lost:
            self._lost += 1
            self._logger.warning("pilot %s lost", name)
            w.outcomes.lost_event(name, [])
        for name in list(self._idle_since):
            if name not in connected or name in busy:
                del self._idle_since[name]
        for name in connected:
            if name not in busy:
                self._idle_since.setdefault(name, now)

        starting = tuple(n for n in held if n not in connected)
        decision = scaling.decide(
            backlog=self.backlog,
            in_flight=len(w.in_flight),
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
        elif set(held) - set(cluster.workers):
            # A lost batch job is forgotten by the cluster: submit its replacement.
            cluster.scale(len(cluster.worker_spec))

        states = {
            n: ("running" if n in busy else "idle" if n in connected else "starting")
            for n in (str(x) for x in cluster.worker_spec)
        }
        counts = PilotCounts(
            pool=w._work_pool_name,
            cluster=pool.cluster,
            total=len(states),
            starting=sum(v == "starting" for v in states.values()),
            idle=sum(v == "idle" for v in states.values()),
            running=sum(v == "running" for v in states.values()),
            stopped=self._stopped,
            lost=self._lost,
            runs_in_flight=len(w.in_flight),
            backlog=self.backlog,
            pilots=states,
        )
        n_connected = counts.idle + counts.running
        below_s = self._below_target.update(now, n_connected, decision.required)
        if below_s is not None:
            self._below_target_event(decision.required, n_connected, counts.starting, below_s)
        if not counts.same_counts(self._last_counts):
            write_status(w.settings, counts)
            self._last_counts = counts
        await self._publish(counts, now)

    async def _publish(self, counts: PilotCounts, now: float) -> None:
        """The counts into the Prefect variable when pilots came or went, else at most every
        ``P3S_PILOTS__COUNTS_PUBLISH_SECONDS``: idle and running change with every run, and a
        write per run was a tenth of the server's requests per DQM file."""
        last = self._published
        if counts.same_counts(last):
            return
        pilots_changed = last is None or any(
            getattr(counts, k) != getattr(last, k) for k in ("total", "stopped", "lost")
        )
        if pilots_changed or now - self._published_at >= (
            self.worker.settings.pilots.counts_publish_seconds
        ):
            await publish_variable(self.worker.client, counts)
            self._published, self._published_at = counts, now

    def _pool_resource(self) -> dict[str, str]:
        """The resource of the pool's events (p3s.pilots.scaled, p3s.pilots.below-target)."""
        w = self.worker
        assert w.pilot_pool is not None
        return {
            "prefect.resource.id": f"p3s.pilot-pool.{w._work_pool_name}",
            "prefect.resource.name": w._work_pool_name,
            "p3s.cluster": w.pilot_pool.cluster,
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
        cluster = self.worker.cluster
        spec = cluster.worker_spec
        for name in decision.retire:
            key = next((k for k in spec if str(k) == name), None)
            if key is not None:
                del spec[key]
                self.retiring.add(name)
                self._stopped += 1
                self._idle_since.pop(name, None)
        cluster.scale(len(spec) + decision.submit)
