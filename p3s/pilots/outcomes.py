"""Run outcomes: what the pilot worker does when a run's Dask task ends, or its pilot is lost.

- a child killed by a cancellation: the run gets ``Cancelled``;
- a child that ended before the run started (its claim still there): the run is put back to
  ``Scheduled`` up to :data:`NOT_STARTED_RETRIES` times, then ``Crashed``;
- a child that died without a final state: ``Crashed``;
- a lost pilot (batch job killed, evicted, at its walltime: Dask's ``KilledWorker``): a
  ``p3s.pilot.lost`` event, and the run is put back to ``Scheduled`` (``AwaitingRetry``,
  pilotTO) so that it runs again on another pilot and is never left Running. Dask never re-runs
  the task itself (``allowed-failures`` 0), and the child only starts a run still Pending.

Every state is set through a busy or restarting server with patience (:mod:`.api_retry`), and
no error escapes into the worker's task group (it would stop the worker and its pilots).
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import anyio
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Crashed, Scheduled

from p3s.pilots import api_retry
from p3s.pilots.dispatch import InFlight
from p3s.pilots.run_process import NOT_CLAIMED, claimed_for

#: Times a run whose child ended before the run started is put back before it is Crashed.
NOT_STARTED_RETRIES = 2


class Outcomes:
    """The pilot worker's run outcomes and rescheduling (see the module docstring).

    ``worker`` is the :class:`p3s.pilots.worker.PilotWorker` that composes this part.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # Runs whose child ended before the run started, and how often (see settle).
        self._not_started: dict[UUID, int] = {}

    @property
    def _logger(self) -> Any:
        return self.worker._logger

    # -- the end of a run's Dask task -------------------------------------------------------

    async def watch(self, entry: InFlight) -> int:
        """Wait for a run's Dask task and settle its state; returns an exit status."""
        from distributed import KilledWorker

        w = self.worker
        try:
            result = await entry.future
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
            w.in_flight.pop(entry.run_id, None)
            w.cancellation.forget(entry.run_id)
            w.dispatch.slot_freed()
            if w._cancelling_observer is not None:
                w._cancelling_observer.remove_in_flight_flow_run_id(entry.run_id)
        # This runs as a task of the worker's task group: an error escaping it would end the
        # whole worker, its pilots and every payload on them.
        try:
            return await self.settle(entry, result)
        except Exception:
            self._logger.exception("could not settle flow run %s", entry.run_id)
            return 1

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
