"""Run outcomes: what the pilot worker does when a run's Dask task ends, or its pilot is lost.

- a child killed by a cancellation: the run gets ``Cancelled``;
- a child that ended before the run started (its claim still there): the run is put back to
  ``Scheduled`` up to :data:`NOT_STARTED_RETRIES` times, then ``Crashed``;
- a child that died without a final state: ``Crashed``;
- a lost pilot (batch job killed, evicted, at its walltime: Dask's ``KilledWorker``): a
  ``p3s.pilot.lost`` event, and the run is put back to ``Scheduled`` (``AwaitingRetry``,
  pilotTO) so that it runs again on another pilot and is never left Running. Dask never re-runs
  the task itself (``allowed-failures`` 0), and the child only starts a run still Pending;
- a future lost with the worker's connection to the Dask scheduler (distributed cancels every
  future of a client that reconnects, and the scheduler releases its tasks, but a pilot's
  thread cannot be stopped: the run goes on there, unseen by Dask): the run is followed on the
  pilots and the server (:meth:`Outcomes.follow`) until it is final, or put back once no pilot
  executes it any more;
- a safety net (:meth:`Outcomes.reconcile`): a run the server has reported final for
  :data:`RECONCILE_GRACE_S` while still in flight here (an end this worker never heard of)
  leaves its slot, with a warning.

Every state is set through a busy or restarting server with patience (:mod:`.api_retry`), and
no error escapes into the worker's task group (it would stop the worker and its pilots).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import anyio
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import TERMINAL_STATES, FlowRun, StateType
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Crashed, Scheduled

from p3s.pilots import api_retry
from p3s.pilots.dispatch import FETCH_LIMIT, InFlight
from p3s.pilots.run_process import NOT_CLAIMED, claimed_for

#: Times a run whose child ended before the run started is put back before it is Crashed.
NOT_STARTED_RETRIES = 2
#: Seconds between looks at the runs followed after their Dask future was lost.
FOLLOW_SECONDS = 5.0
#: Looks in a row that find no pilot executing a followed run, and the run not final, before
#: it is put back: a task sent to a pilot just before the drop may not show there at once.
GONE_LOOKS = 2
#: Fewest seconds between two reconciliations of the runs in flight with the server (else
#: every ``P3S_PILOTS__QUERY_SECONDS``): one request per 200 runs in flight.
RECONCILE_MIN_SECONDS = 10.0
#: Seconds a run may stay in flight once the server was seen to report it final (a watched
#: run leaves within a second of its final state; a loaded host may take a few).
RECONCILE_GRACE_S = 30.0
#: A pilot's states of a task whose thread runs, "cancelled" included: a task the scheduler
#: released (its client's connection dropped) executes to its end.
EXECUTING = frozenset({"executing", "long-running", "cancelled", "resumed"})


def executing_tasks(dask_worker: Any) -> list[str]:
    """On a pilot (``Client.run``): the keys of the tasks its threads execute."""
    return [str(key) for key, ts in dask_worker.state.tasks.items() if ts.state in EXECUTING]


class Outcomes:
    """The pilot worker's run outcomes and rescheduling (see the module docstring).

    ``worker`` is the :class:`p3s.pilots.worker.PilotWorker` that composes this part.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # Runs whose child ended before the run started, and how often (see settle).
        self._not_started: dict[UUID, int] = {}
        # Runs whose Dask future was lost, followed on the pilots and the server (see follow).
        self.followed: dict[UUID, InFlight] = {}

    @property
    def _logger(self) -> Any:
        return self.worker._logger

    # -- the end of a run's Dask task -------------------------------------------------------

    async def watch(self, entry: InFlight) -> int:
        """Wait for a run's Dask task and settle its state; returns an exit status."""
        from distributed import KilledWorker

        w = self.worker
        try:
            result = await self.task_result(entry)
        except KilledWorker as exc:
            pilot = getattr(getattr(exc, "last_worker", None), "name", "?")
            await self.pilot_lost(str(pilot), [entry.run_id])
            return 1
        except (asyncio.CancelledError, Exception) as exc:
            if isinstance(exc, asyncio.CancelledError) and w.stopping():
                raise
            await self.reschedule(entry.run_id, f"its pilot task ended: {exc!r}")
            return 1
        finally:
            self.release(entry)
        if result is None:  # it ended without a result (see task_result)
            return 1 if entry.lost else 0
        # This runs as a task of the worker's task group: an error escaping it would end the
        # whole worker, its pilots and every payload on them.
        try:
            return await self.settle(entry, result)
        except Exception:
            self._logger.exception("could not settle flow run %s", entry.run_id)
            return 1

    async def task_result(self, entry: InFlight) -> dict[str, Any] | None:
        """The result of a run's Dask task, or None when the run ended without one: final on
        the server, or put back once its execution was gone (see :meth:`follow`,
        :meth:`reconcile`)."""
        from distributed.client import FutureCancelledError

        try:
            with entry.waiting:
                try:
                    return await entry.future
                except FutureCancelledError as exc:
                    if self.worker.stopping():
                        raise
                    self.follow(entry, exc)
                await anyio.sleep_forever()  # until the follow loop ends the wait
        finally:
            self.followed.pop(entry.run_id, None)
        if entry.lost:
            await self.reschedule(entry.run_id, entry.ended or "its execution was lost")
        return None

    def release(self, entry: InFlight) -> None:
        """The run leaves this worker: its pilot slot is free (once, whoever calls)."""
        w = self.worker
        if w.in_flight.get(entry.run_id) is not entry:
            return
        del w.in_flight[entry.run_id]
        w.cancellation.forget(entry.run_id)
        w.dispatch.slot_freed()
        if w._cancelling_observer is not None:
            w._cancelling_observer.remove_in_flight_flow_run_id(entry.run_id)

    async def settle(self, entry: InFlight, result: dict[str, Any]) -> int:
        """Set the state a run ended in from its task's ``result`` (see
        :func:`p3s.pilots.execute.run_on_pilot`); returns an exit status."""
        code = result.get("exit_code")
        pilot = result.get("pilot")
        if result.get("cancelled"):
            await self.set_state(
                entry.run_id, Cancelled(message=f"cancelled: payload stopped on pilot {pilot}")
            )
            return 0
        tries = self._not_started.pop(entry.run_id, 0)
        if code == 0:
            return 0
        run = await self.read_run(entry.run_id)
        state = run.state
        if state is None or state.is_final():
            return 0 if code == NOT_CLAIMED else code or 1
        if claimed_for(state, str(entry.future.key)) and tries < NOT_STARTED_RETRIES:
            # Still this execution's claim: the child ended before its engine set Running, so
            # nothing of the run was executed (the Prefect API unreachable while the server
            # restarts, typically). It may run again; one that never starts ends Crashed.
            self._not_started[entry.run_id] = tries + 1
            await self.reschedule(
                entry.run_id,
                f"its flow-run process on pilot {pilot} exited with code {code} before the "
                f"run started (attempt {tries + 1} of {NOT_STARTED_RETRIES + 1})",
            )
            return code or 1
        if code == NOT_CLAIMED:
            # Another execution has the run. A newer claim (Pending) goes its own way; an
            # execution of an older claim that started it (Running) lives on a lost pilot:
            # run it again once that pilot's processes must have ended.
            if state.type == StateType.RUNNING:
                await self.reschedule(entry.run_id, f"its execution on pilot {pilot} was lost")
            return 0
        if state.type == StateType.CANCELLING:
            await self.set_state(entry.run_id, Cancelled(message="cancelled on its pilot"))
            return 0
        await self.set_state(
            entry.run_id,
            Crashed(message=f"the flow-run process on pilot {pilot} exited with code {code}"),
        )
        return code or 1

    # -- the server, with patience ----------------------------------------------------------

    async def patiently(self, call: Any, what: str) -> Any:
        """``await call()`` through a busy or restarting server (see :mod:`.api_retry`); once
        the worker is stopping, one try (``p3s down`` must not wait on a server gone first)."""
        w = self.worker
        return await api_retry.patiently(
            call,
            what=what,
            patience_s=0.0 if w.stopping() else w.settings.pilots.api_patience_seconds,
            logger=self._logger,
        )

    async def read_run(self, run_id: UUID) -> FlowRun:
        return await self.patiently(
            lambda: self.worker.client.read_flow_run(run_id), f"reading flow run {run_id}"
        )

    async def set_state(self, run_id: UUID, state: Any) -> None:
        """Force ``state`` on a run; errors are logged, never raised."""
        try:
            await self.patiently(
                lambda: self.worker.client.set_flow_run_state(run_id, state, force=True),
                f"setting {state.name} on flow run {run_id}",
            )
        except ObjectNotFound:
            pass
        except Exception as exc:
            self._logger.error("could not set %s on flow run %s: %s", state.name, run_id, exc)

    # -- rescheduling -----------------------------------------------------------------------

    async def reschedule(self, run_id: UUID, why: str, grace_s: float | None = None) -> None:
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
        run = await self.read_run(run_id)
        if run.state is not None and run.state.type == StateType.RUNNING:
            running = run.state.id
            pool = self.worker.pilot_pool
            assert pool is not None
            await anyio.sleep(pool.lost_grace_s if grace_s is None else grace_s)
            run = await self.read_run(run_id)
            if run.state is None or run.state.id != running:
                return  # it moved on (finished, cancelled, or run again) in the meantime
        if run.state is not None and run.state.is_final():
            return
        if run.state is not None and run.state.type == StateType.CANCELLING:
            await self.set_state(run_id, Cancelled(message=f"cancelled; {why}"))
            return
        await self.set_state(
            run_id, Scheduled(name="AwaitingRetry", message=f"rescheduled: {why} (pilotTO)")
        )

    # -- futures lost with the connection to the Dask scheduler ----------------------------

    def follow(self, entry: InFlight, why: BaseException) -> None:
        """Follow a run whose Dask future was cancelled while the worker runs: its client's
        connection to the scheduler dropped (distributed cancels every future of a client
        that reconnects, and the scheduler releases their tasks). A pilot's thread cannot be
        stopped, so the run goes on there unseen by Dask: put back now, it would execute twice
        at once. It keeps its slot (the thread holds it) until :meth:`look_at_followed` ends
        the wait."""
        self._logger.warning(
            "flow run %s: its Dask future was cancelled (%s); its execution is followed on "
            "the pilots and the server",
            entry.run_id,
            why,
        )
        self.followed[entry.run_id] = entry

    async def follow_loop(self) -> None:
        """Every :data:`FOLLOW_SECONDS`, :meth:`look_at_followed` (errors are logged)."""
        with self.worker.service_scope(first_to_stop=True):
            while True:
                await anyio.sleep(FOLLOW_SECONDS)
                if not self.followed:
                    continue
                try:
                    await self.look_at_followed()
                except Exception as exc:
                    self._logger.warning("could not look at the followed runs: %s", exc)

    async def look_at_followed(self) -> None:
        """End the wait for each followed run that is final on the server (its slot is
        freed), or that no pilot executes any more while it is not final (it is put back, as
        a lost pilot's run is)."""
        entries = list(self.followed.values())
        # The pilots first: an execution sets its run's final state before its task ends, so
        # a task gone and then a run not final is an execution gone unfinished.
        executing = await self.executing_keys()
        final = await self.final_runs([entry.run_id for entry in entries])
        for entry in entries:
            if entry.run_id in final:
                entry.stop_waiting("final on the server")
            elif executing is None or str(entry.future.key) in executing:
                entry.gone_seen = 0
            else:
                entry.gone_seen += 1
                if entry.gone_seen >= GONE_LOOKS:
                    entry.stop_waiting(
                        "its execution ended without a final state after its Dask future was lost",
                        lost=True,
                    )

    async def executing_keys(self) -> set[str] | None:
        """The keys of the tasks the pilots execute; None if a pilot could not say."""
        try:
            found = await self.worker.dask.run(executing_tasks, on_error="return")
        except Exception as exc:
            self._logger.warning("could not ask the pilots what they execute: %s", exc)
            return None
        keys: set[str] = set()
        for pilot_keys in found.values():
            if isinstance(pilot_keys, BaseException):
                return None
            keys.update(pilot_keys)
        return keys

    async def final_runs(self, run_ids: list[UUID]) -> set[UUID]:
        """Those of ``run_ids`` the server reports in a final state."""
        final: set[UUID] = set()
        for start in range(0, len(run_ids), FETCH_LIMIT):
            runs = await self.worker.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=run_ids[start : start + FETCH_LIMIT]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=list(TERMINAL_STATES))
                    ),
                ),
                limit=FETCH_LIMIT,
            )
            final.update(run.id for run in runs)
        return final

    # -- the safety net: runs in flight against the server ----------------------------------

    async def reconcile_loop(self) -> None:
        """Every ``P3S_PILOTS__QUERY_SECONDS`` (at least :data:`RECONCILE_MIN_SECONDS`),
        :meth:`reconcile` (errors are logged)."""
        w = self.worker
        interval = max(w.settings.pilots.query_seconds, RECONCILE_MIN_SECONDS)
        with w.service_scope():
            while True:
                await anyio.sleep(interval)
                try:
                    await self.reconcile()
                except Exception as exc:
                    self._logger.warning("could not reconcile the runs in flight: %s", exc)

    async def reconcile(self, now: float | None = None) -> list[UUID]:
        """Free the slots of the runs the server has reported final for
        :data:`RECONCILE_GRACE_S` while they are still in flight here: an end this worker
        never heard of must not hold a slot for ever. Returns the runs released."""
        w = self.worker
        entries = list(w.in_flight.values())
        if not entries:
            return []
        final = await self.final_runs([entry.run_id for entry in entries])
        now = time.monotonic() if now is None else now
        released: list[UUID] = []
        for entry in entries:
            if entry.run_id not in final:
                entry.final_seen = None
            elif entry.final_seen is None:
                entry.final_seen = now
            elif (
                now - entry.final_seen >= RECONCILE_GRACE_S
                and w.in_flight.get(entry.run_id) is entry
            ):
                self._logger.warning(
                    "flow run %s is final on the server but its pilot task was not heard to "
                    "end within %.0f s: its slot is freed",
                    entry.run_id,
                    now - entry.final_seen,
                )
                entry.stop_waiting("final on the server (reconciliation)")
                self.release(entry)
                released.append(entry.run_id)
        return released

    # -- lost pilots ------------------------------------------------------------------------

    async def pilot_lost(self, pilot: str, run_ids: list[UUID]) -> None:
        self.lost_event(pilot, run_ids)
        for run_id in run_ids:
            await self.reschedule(run_id, f"pilot {pilot} was lost")

    def lost_event(self, pilot: str, run_ids: list[UUID]) -> None:
        """Emit ``p3s.pilot.lost`` for ``pilot`` and the runs it held."""
        pool = self.worker._work_pool_name
        emit_event(
            event="p3s.pilot.lost",
            resource={
                "prefect.resource.id": f"p3s.pilot.{pool}.{pilot}",
                "prefect.resource.name": str(pilot),
                "p3s.pool": pool,
            },
            payload={
                "pilot": str(pilot),
                "runs": [str(r) for r in run_ids],
                "reason": "pilot lost (pilotTO): batch job killed, evicted or at its walltime",
            },
        )
