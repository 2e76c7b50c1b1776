"""Cancellation: stopping a cancelled run's payload on whichever pilot runs it.

Cancelling a run in the UI sets it ``Cancelling``; Prefect's cancellation observer of the
worker hears it as an event and calls the worker's ``_cancel_run``, which comes here
(:meth:`Cancellation.cancel`): every pilot is asked (``Client.run``) to stop the run's child
(or its thread in a shared engine, :func:`p3s.pilots.execute.cancel_local`); the run then ends
``Cancelled`` when its task returns (:mod:`p3s.pilots.outcomes`). A run not yet started on a
pilot has its task dropped and is set ``Cancelled`` here.

The fallback poll (:meth:`Cancellation.poll_loop`, every ``P3S_PILOTS__SCALE_SECONDS``) finds
runs in flight set Cancelling while the observer is off or disconnected.
"""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

import anyio
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

from p3s.pilots import execute

#: Seconds a cancelled payload gets between SIGTERM and SIGKILL.
CANCEL_GRACE_S = 5.0


class Cancellation:
    """The pilot worker's cancellations (see the module docstring).

    ``worker`` is the :class:`p3s.pilots.worker.PilotWorker` that composes this part.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # Runs in flight whose payload is being stopped (asked once).
        self._cancelling: set[UUID] = set()

    @property
    def _logger(self) -> Any:
        return self.worker._logger

    def forget(self, run_id: UUID) -> None:
        """The run left the worker (its task ended)."""
        self._cancelling.discard(run_id)

    async def poll_loop(self) -> None:
        """Every ``P3S_PILOTS__SCALE_SECONDS``, :meth:`poll` (errors are logged)."""
        w = self.worker
        with w.service_scope(first_to_stop=True):
            while True:
                try:
                    await self.poll()
                except Exception as exc:
                    self._logger.warning("cancellation poll failed: %s", exc, exc_info=True)
                await anyio.sleep(w.settings.pilots.scale_seconds)

    async def poll(self) -> None:
        """Find in-flight runs set Cancelling (a fallback when the worker's event-driven
        cancellation observer is off or disconnected)."""
        ids = [i for i in self.worker.in_flight if i not in self._cancelling]
        if not ids:
            return
        cancelling = await self.worker.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=ids),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING])),
            )
        )
        for run in cancelling:
            await self.cancel(run.id)

    async def cancel(self, flow_run_id: UUID) -> None:
        """Stop a cancelled run's payload on whichever pilot runs it (a task of the worker's
        task group, started by Prefect's cancellation observer: errors are logged)."""
        try:
            await self._cancel_now(flow_run_id)
        except Exception:
            self._logger.exception("could not cancel flow run %s", flow_run_id)

    async def _cancel_now(self, flow_run_id: UUID) -> None:
        w = self.worker
        entry = w.in_flight.get(flow_run_id)
        if entry is None:
            await w.cancel_elsewhere(flow_run_id)
            return
        if flow_run_id in self._cancelling:
            return
        self._cancelling.add(flow_run_id)
        found = await w.dask.run(
            execute.cancel_local, str(flow_run_id), CANCEL_GRACE_S, on_error="return"
        )
        if not any(v is True for v in found.values()):
            # Not started on a pilot yet: drop the task; its child would refuse it anyway.
            with contextlib.suppress(Exception):
                await entry.future.cancel()
            await w.outcomes.set_state(
                flow_run_id, Cancelled(message="cancelled before it started")
            )
