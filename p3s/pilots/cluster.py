"""The Dask cluster behind a pilot pool: a LocalCluster, or dask-jobqueue's SLURMCluster or
HTCondorCluster, configured so that a flow run is never executed twice by Dask itself; and the
pool itself, a saved ``PilotPool`` block or one built from the ``P3S_PILOTS__*`` settings."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import dask

from p3s.blocks.pilot_pool import PASSED_ENV, PILOT_DASK_CONFIG, PilotPool
from p3s.system.settings import Settings

#: Dask settings of the process that holds the cluster (its scheduler and local nannies, which
#: hand them to their workers); batch pilots get the pilots' part through their job's exports.
DASK_CONFIG: dict[str, Any] = {
    **PILOT_DASK_CONFIG,
    # A task whose worker died is NOT re-run by Dask (it would execute the same flow run a
    # second time, while the first may still be alive): it fails with KilledWorker and the
    # pilot worker reschedules the flow run through Prefect instead.
    "distributed.scheduler.allowed-failures": 0,
    # Forget a lost batch job quickly, so that its replacement is submitted soon (s).
    "distributed.deploy.lost-worker-timeout": "1s",
    # Runs go to the pilot they were given; no stealing between pilots.
    "distributed.scheduler.work-stealing": False,
}


async def load_pilot_pool(settings: Settings) -> PilotPool:
    """The saved PilotPool block named in the settings (``P3S_PILOTS__BLOCK``), else one built
    from the settings, whose pool fields are the block's own (its log directory, unless set,
    is ``RUN_DIR/pilots``)."""
    p = settings.pilots
    if p.block:
        return await PilotPool.aload(p.block)
    fields = p.pool_fields()
    fields["log_directory"] = p.log_directory or str(settings.run_dir / "pilots")
    return PilotPool(**fields)


def pilot_environment() -> dict[str, str]:
    """Variables the batch job exports so that the pilot reaches the same Prefect API."""
    return {key: os.environ[key] for key in PASSED_ENV if os.environ.get(key)} | {
        key: value for key, value in os.environ.items() if key.startswith("P3S_")
    }


def _cluster_class(kind: str) -> type:
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster

        return SLURMCluster
    if kind == "htcondor":
        from dask_jobqueue import HTCondorCluster

        return HTCondorCluster
    raise ValueError(f"unknown pilot cluster class {kind!r}: use local, slurm or htcondor")


def job_script(pool: PilotPool, scheduler_address: str = "tcp://scheduler:8786") -> str:
    """The batch submit description (or script) one pilot would be submitted with."""
    if pool.cluster == "local":
        raise ValueError("a local pilot pool submits no batch job")
    cls = _cluster_class(pool.cluster)
    job = cls.job_cls(scheduler=scheduler_address, name="p3s-pilot-0", **_kwargs(pool))
    return job.job_script()


def _kwargs(pool: PilotPool) -> dict[str, Any]:
    kwargs = pool.jobqueue_kwargs(pilot_environment())
    if pool.log_directory:
        Path(pool.log_directory).mkdir(parents=True, exist_ok=True)
    return kwargs


async def start_cluster(pool: PilotPool) -> Any:
    """Start the pool's cluster (asynchronous, no pilots yet): the caller scales it."""
    dask.config.set(DASK_CONFIG)
    if pool.cluster == "local":
        from distributed import LocalCluster

        return await LocalCluster(
            n_workers=0,
            threads_per_worker=pool.slots_per_pilot,
            processes=True,
            host=pool.scheduler_host or "127.0.0.1",
            dashboard_address=None,
            memory_limit=pool.memory,
            asynchronous=True,
        )
    cls = _cluster_class(pool.cluster)
    host = pool.scheduler_host or socket.gethostname()
    return await cls(
        asynchronous=True,
        scheduler_options={"host": host, "dashboard_address": None},
        **_kwargs(pool),
    )
