"""The ``p3s-pilot`` worker type: flow runs of a work pool execute on warm Dask workers (pilots).

``prefect worker start --type p3s-pilot --pool NAME`` (or ``p3s up``) runs one
:class:`PilotWorker` (found by Prefect through the ``prefect.collections`` entry point
``p3s = "p3s.pilots.worker"``). It holds the pool's Dask cluster (local, Slurm or HTCondor, from
a :class:`~p3s.blocks.pilot_pool.PilotPool`, :func:`p3s.pilots.cluster.load_pilot_pool`) and
the table of runs in flight, and composes four parts, one module each:

- :mod:`p3s.pilots.dispatch`: claims scheduled runs and submits them to the pilots;
- :mod:`p3s.pilots.outcomes`: settles each run when its task ends, reschedules lost runs,
  follows runs whose Dask future was lost and reconciles the runs in flight with the server;
- :mod:`p3s.pilots.cancellation`: stops a cancelled run's payload on its pilot;
- :mod:`p3s.pilots.sizing`: sizes the pool from the backlog and publishes the pilot counts.
"""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

import anyio
from distributed.diagnostics.plugin import WorkerPlugin
from prefect.client.schemas.objects import FlowRun
from prefect.states import Pending
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)

from p3s.blocks.pilot_pool import PilotPool
from p3s.pilots import execute
from p3s.pilots.cancellation import Cancellation
from p3s.pilots.cluster import load_pilot_pool, start_cluster
from p3s.pilots.dispatch import Dispatch, InFlight, task_key
from p3s.pilots.outcomes import Outcomes
from p3s.pilots.sizing import PoolSizing
from p3s.system.settings import get_settings


class PilotJobConfiguration(BaseJobConfiguration):
    """Nothing per run: the pilots are configured by the pool's PilotPool block."""


class PilotVariables(BaseVariables):
    """No per-deployment variables yet."""


class PilotWorkerResult(BaseWorkerResult):
    """How one flow run ended on a pilot."""


class PilotWorker(BaseWorker[PilotJobConfiguration, PilotVariables, PilotWorkerResult]):
    """Runs a work pool's flow runs on warm Dask workers (pilots); see the module docstring."""

    type = "p3s-pilot"
    job_configuration = PilotJobConfiguration
    job_configuration_variables = PilotVariables
    _description = "p3s pilots: flow runs on warm Dask workers (local, Slurm, HTCondor)."
    _display_name = "p3s pilots"
    # No published documentation: the guide is p3s/pilots/README.md and the top README's
    # "Pilots" section. Empty is Prefect's own default (the UI then shows no link).
    _documentation_url = ""

    def __init__(self, *args: Any, pilot_pool: PilotPool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pilot_pool = pilot_pool
        self.settings = get_settings()
        self.cluster: Any = None
        self.dask: Any = None
        #: Runs claimed by this worker and handed to Dask, shared by the parts below.
        self.in_flight: dict[UUID, InFlight] = {}
        self._stopping = False
        self._first_to_stop: list[anyio.CancelScope] = []
        self.dispatch = Dispatch(self)
        self.outcomes = Outcomes(self)
        self.cancellation = Cancellation(self)
        self.sizing = PoolSizing(self)

    # -- life cycle -------------------------------------------------------------------------

    async def setup(self) -> None:
        await super().setup()
        from distributed import Client

        if self.pilot_pool is None:
            self.pilot_pool = await load_pilot_pool(self.settings)
        self.cluster = await start_cluster(self.pilot_pool)
        self.dask = await Client(self.cluster, asynchronous=True)
        await self.dask.register_plugin(WarmUp(), name="p3s-warm-up")
        if self.pilot_pool.min_pilots:
            self.cluster.scale(self.pilot_pool.min_pilots)
        self._logger.info(
            "pilot pool: %s cluster (Dask scheduler %s), %s..%s pilots of %s slot(s)",
            self.pilot_pool.cluster,
            self.cluster.scheduler_address,
            self.pilot_pool.min_pilots,
            self.pilot_pool.max_pilots,
            self.pilot_pool.slots_per_pilot,
        )
        assert self._runs_task_group is not None
        self._runs_task_group.start_soon(self.sizing.loop)
        self._runs_task_group.start_soon(self.cancellation.poll_loop)
        self._runs_task_group.start_soon(self.dispatch.recover_orphans)
        self._runs_task_group.start_soon(self.dispatch.dispatch_on_wake)
        self._runs_task_group.start_soon(self.dispatch.watch_scheduled)
        self._runs_task_group.start_soon(self.outcomes.follow_loop)
        self._runs_task_group.start_soon(self.outcomes.reconcile_loop)

    async def teardown(self, *exc_info: Any) -> None:
        self._stopping = True
        for scope in self._first_to_stop:
            scope.cancel()
        in_flight = list(self.in_flight)
        # Pilots first (their children die with them), then no run may stay Running.
        if self.dask is not None:
            with contextlib.suppress(Exception):
                await self.dask.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await self.cluster.close()
        for run_id in in_flight:  # their pilots were just closed: no grace to wait
            with contextlib.suppress(Exception):
                await self.outcomes.reschedule(run_id, "the pilot worker stopped", grace_s=0.0)
        await super().teardown(*exc_info)

    def stopping(self) -> bool:
        """Whether the worker is stopping (its teardown has begun)."""
        return self._stopping

    def service_scope(self, first_to_stop: bool = False) -> anyio.CancelScope:
        """A cancel scope for one of the parts' loops, cancelled when the worker stops (a
        scope serves one ``with`` block only); ``first_to_stop``: at the very start of the
        teardown, before the pilots close (the loops that use the Dask cluster)."""
        scope = anyio.CancelScope()
        self._scheduled_task_scopes.add(scope)
        if first_to_stop:
            self._first_to_stop.append(scope)
        return scope

    # -- what Prefect's BaseWorker calls ----------------------------------------------------

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        return await self.dispatch.get_and_submit_flow_runs()

    async def run(
        self,
        flow_run: FlowRun,
        configuration: PilotJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> PilotWorkerResult:
        """Run one flow run (already Pending) on a pilot and wait for it."""
        key = task_key(flow_run.id)
        await self.outcomes.set_state(
            flow_run.id, Pending(message=self.dispatch.claim_message(key))
        )
        entry = await self.dispatch.submit(flow_run, key)
        if task_status is not None:
            task_status.started(0)
        if entry is None:
            return PilotWorkerResult(identifier=str(flow_run.id), status_code=1)
        code = await self.outcomes.watch(entry)
        return PilotWorkerResult(identifier=str(flow_run.id), status_code=code)

    async def _cancel_run(self, flow_run_id: UUID) -> None:
        """Prefect's cancellation observer calls this for a run set Cancelling."""
        await self.cancellation.cancel(flow_run_id)

    async def cancel_elsewhere(self, flow_run_id: UUID) -> None:
        """Prefect's own cancellation, for a run this worker does not hold."""
        await super()._cancel_run(flow_run_id)


class WarmUp(WorkerPlugin):
    """Dask worker plugin: start the pilot's fork server as soon as the pilot joins."""

    name = "p3s-warm-up"

    def setup(self, worker: Any) -> None:
        import threading

        threading.Thread(target=execute.warm_up, name="p3s-warm-up", daemon=True).start()
