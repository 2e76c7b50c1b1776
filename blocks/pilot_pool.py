"""The pilot-pool block: which batch system starts the pilots (Dask workers) and how big they are.

A pilot is a Dask worker started by dask-jobqueue on the batch system (HTCondor in production,
Slurm elsewhere) or a local Dask worker process; each runs many flow runs in turn. The
``p3s-pilot`` worker type (:mod:`p3s.pilots.worker`) builds its cluster from this block.

Save one with ``PilotPool(cluster="htcondor", ...).save("cern")`` (or in the UI) and point the
worker at it with ``P3S_PILOTS__BLOCK=cern``; without a saved block the worker builds one from
the ``P3S_PILOTS__*`` settings. The fields are described once, in :mod:`.pilot_pool_fields`,
for the block and the settings alike.
"""

from __future__ import annotations

from typing import Any

from p3s.blocks.pilot_pool_fields import (
    BATCH_LOST_MARGIN_S,
    LOCAL_LOST_GRACE_S,
    ClusterClass,
    PilotPoolFields,
)
from prefect.blocks.core import Block

__all__ = [
    "BATCH_LOST_MARGIN_S",
    "LOCAL_LOST_GRACE_S",
    "PASSED_ENV",
    "PILOT_DASK_CONFIG",
    "ClusterClass",
    "PilotPool",
    "walltime_seconds",
]

#: Environment variables a pilot must see to reach the Prefect API and its p3s home.
PASSED_ENV = ("PREFECT_API_URL", "PREFECT_HOME", "P3S_HOME", "P3S_PROJECT_DIR")

#: Dask settings of every pilot (its worker and nanny) and of the scheduler beside it.
PILOT_DASK_CONFIG: dict[str, Any] = {
    # A pilot forks one child per flow run: its Dask worker must not be daemonic.
    "distributed.worker.daemon": False,
    # A pilot spends its life waiting on flow-run children, and Dask's defaults wake each of
    # its processes 50 times a second (the event-loop tick monitor), sample every thread's
    # stack 100 times a second (the profiler of a dashboard pilots do not serve) and read the
    # worker's memory 10 times a second. Measured here: two idle local pilots and their
    # scheduler took 3.6 CPU-s per 30 s with the defaults, 0.5 with these.
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    # Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to keep a data-holding worker lean; any
    # such setting turns off glibc's adaptive mmap threshold, and the flow-run children forked
    # below the pilot inherit it: every large numpy array was then mapped and faulted in afresh
    # (measured here: 15x the page faults, +0.5 CPU-s of system time per file of the four
    # payloads, 15 % of their CPU). A pilot holds no data; None unsets it (Dask's convention).
    # Single-threaded BLAS and OpenMP stay: a pilot runs one payload per slot.
    "distributed.nanny.pre-spawn-environ": {
        "MALLOC_TRIM_THRESHOLD_": None,
        "OMP_NUM_THREADS": 1,
        "MKL_NUM_THREADS": 1,
        "OPENBLAS_NUM_THREADS": 1,
    },
}


def dask_environment(config: dict[str, Any]) -> dict[str, str]:
    """Dask settings as the environment variables Dask reads at start
    (``distributed.worker.daemon`` -> ``DASK_DISTRIBUTED__WORKER__DAEMON``)."""
    return {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in config.items()
    }


class PilotPool(PilotPoolFields, Block):
    """A pool of pilots: cluster class, size of each pilot, and how many may run (the fields
    are :class:`~p3s.blocks.pilot_pool_fields.PilotPoolFields`, shared with the settings)."""

    _block_type_name = "p3s Pilot Pool"
    _block_type_slug = "p3s-pilot-pool"
    _description = "Batch pilots (Dask workers via dask-jobqueue) that run p3s flow runs."

    def jobqueue_kwargs(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments of the dask-jobqueue cluster class (not for ``local``).

        Args:
            env: variables exported in the batch job before the pilot starts (quoted).
        """
        import shlex

        dask_env = dask_environment(PILOT_DASK_CONFIG)
        prologue = [
            *(f"export {k}={shlex.quote(v)}" for k, v in dask_env.items()),
            *(f"export {k}={shlex.quote(v)}" for k, v in sorted((env or {}).items())),
            *self.job_script_prologue,
        ]
        kwargs: dict[str, Any] = {
            "cores": self.cores,
            "processes": 1,
            "memory": self.memory,
            "job_script_prologue": prologue,
            "worker_extra_args": (
                ["--nthreads", str(self.slots)] if self.slots and self.slots != self.cores else []
            ),
            "log_directory": self.log_directory,
            "job_name": "p3s-pilot",
            "death_timeout": self.death_timeout,
        }
        if self.python:
            kwargs["python"] = self.python
        if self.cluster == "slurm":
            kwargs["walltime"] = self.walltime
            kwargs["queue"] = self.queue
            extra = self.job_extra_directives
            if isinstance(extra, dict):
                extra = [f"--{k}={v}" for k, v in extra.items()]
            kwargs["job_extra_directives"] = list(extra)
        elif self.cluster == "htcondor":
            extra = self.job_extra_directives
            if isinstance(extra, list):
                extra = dict(line.split("=", 1) for line in extra)
            directives = {k.strip(): str(v).strip() for k, v in extra.items()}
            directives.setdefault("universe", "vanilla")
            # CERN's schedds take the run-time limit from +MaxRuntime (s) or +JobFlavour.
            directives.setdefault("+MaxRuntime", str(walltime_seconds(self.walltime)))
            if self.job_flavour:
                directives["+JobFlavour"] = f'"{self.job_flavour}"'
            # HTCondor jobs do not inherit the submitter's environment: the prologue's exports
            # (joined into the job's command by dask-jobqueue) carry it.
            kwargs["disk"] = self.disk
            kwargs["job_extra_directives"] = directives
        return kwargs


def walltime_seconds(walltime: str) -> int:
    """Seconds in a ``[D-]HH:MM:SS`` (or ``MM:SS``, or plain minutes) wall-clock limit."""
    days, _, clock = walltime.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        parts = [0, parts[0], 0]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds
