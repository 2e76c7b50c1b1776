"""The pilot-pool block: which batch system starts the pilots (Dask workers) and how big they are.

A pilot is a Dask worker started by dask-jobqueue on the batch system (HTCondor in production,
Slurm elsewhere) or a local Dask worker process; each runs many flow runs in turn. The
``p3s-pilot`` worker type (:mod:`p3s.pilots.worker`) builds its cluster from this block.

Save one with ``PilotPool(cluster="htcondor", ...).save("cern")`` (or in the UI) and point the
worker at it with ``P3S_PILOTS__BLOCK=cern``; without a saved block the worker builds one from
the ``P3S_PILOTS__*`` settings.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, model_validator

ClusterClass = Literal["local", "slurm", "htcondor"]

#: Environment variables a pilot must see to reach the Prefect API and its p3s home.
PASSED_ENV = ("PREFECT_API_URL", "PREFECT_HOME", "P3S_HOME", "P3S_PROJECT_DIR")
#: Seconds a lost local pilot may live on: a nanny kills a closing worker after 4 s.
LOCAL_LOST_GRACE_S = 6.0
#: Seconds beyond a batch pilot's death timeout before its runs are executed again (the
#: pilot's own stop, and clocks of two hosts).
BATCH_LOST_MARGIN_S = 30.0


class PilotPool(Block):
    """A pool of pilots: cluster class, size of each pilot, and how many may run."""

    _block_type_name = "p3s Pilot Pool"
    _block_type_slug = "p3s-pilot-pool"
    _description = "Batch pilots (Dask workers via dask-jobqueue) that run p3s flow runs."

    cluster: ClusterClass = Field(
        "local", description="local (Dask worker processes here), slurm or htcondor."
    )
    cores: int = Field(1, ge=1, description="Cores of each pilot's batch job.")
    slots: int | None = Field(
        None, ge=1, description="Flow runs one pilot runs at once; None means one per core."
    )
    memory: str = Field("2GiB", description="Memory of each pilot's batch job (e.g. '4GiB').")
    disk: str = Field("4GiB", description="Scratch disk of each pilot (HTCondor request_disk).")
    walltime: str = Field(
        "01:00:00", description="Wall-clock limit of each pilot's batch job (HH:MM:SS)."
    )
    queue: str | None = Field(None, description="Slurm partition (or batch queue); None: default.")
    job_flavour: str | None = Field(
        None,
        description="HTCondor +JobFlavour at CERN (espresso, microcentury, longlunch, workday, "
        "tomorrow, testmatch, nextweek); None leaves it out.",
    )
    job_extra_directives: list[str] | dict[str, str] = Field(
        default_factory=list,
        description="Extra submit lines: '#SBATCH' options for Slurm (list), submit-description "
        "commands for HTCondor (mapping).",
    )
    job_script_prologue: list[str] = Field(
        default_factory=list, description="Shell lines run in the batch job before the pilot."
    )
    min_pilots: int = Field(0, ge=0, description="Pilots kept even when there is no work.")
    max_pilots: int = Field(4, ge=1, description="Most pilots alive at once.")
    idle_seconds: float = Field(
        30.0, ge=0, description="A pilot idle this long (s) is retired, down to min_pilots."
    )
    death_timeout: float = Field(
        60.0,
        gt=0,
        description="A batch pilot that has lost its scheduler this long (s) ends itself "
        "(dask-jobqueue's death-timeout); the runs it held are rescheduled 30 s after that.",
    )
    log_directory: str | None = Field(
        None, description="Where batch jobs write their stdout/stderr (and HTCondor its log)."
    )
    scheduler_host: str | None = Field(
        None,
        description="Address the Dask scheduler listens on, which batch nodes must reach; None "
        "means this host's name for batch clusters and 127.0.0.1 for local.",
    )
    python: str | None = Field(
        None, description="Python on the batch nodes that has p3s installed; None: this one."
    )

    @model_validator(mode="after")
    def _bounds(self) -> PilotPool:
        if self.min_pilots > self.max_pilots:
            raise ValueError(
                f"min_pilots ({self.min_pilots}) is above max_pilots ({self.max_pilots})"
            )
        return self

    @property
    def lost_grace_s(self) -> float:
        """How long a lost pilot's processes may live on (s): a run it held is executed again
        only after that. A local pilot's nanny kills a closing worker after 4 s; a batch pilot
        cut off from its scheduler ends itself after ``death_timeout``."""
        if self.cluster == "local":
            return LOCAL_LOST_GRACE_S
        return self.death_timeout + BATCH_LOST_MARGIN_S

    @property
    def slots_per_pilot(self) -> int:
        """Flow runs each pilot executes at once."""
        return self.slots or self.cores

    def jobqueue_kwargs(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments of the dask-jobqueue cluster class (not for ``local``).

        Args:
            env: variables exported in the batch job before the pilot starts (quoted).
        """
        import shlex

        prologue = [
            # A pilot forks one child per flow run: its Dask worker must not be daemonic.
            "export DASK_DISTRIBUTED__WORKER__DAEMON=False",
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
