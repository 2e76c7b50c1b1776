"""The fields of a pilot pool, described once: the ``PilotPool`` block (:mod:`.pilot_pool`) is
one of these saved in Prefect, and the ``P3S_PILOTS__*`` settings
(``p3s.system.settings.PilotSettings``) are one too, with the pilot worker's own settings
added. Plain pydantic, no Prefect: the settings import it without importing Prefect's blocks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

ClusterClass = Literal["local", "slurm", "htcondor"]

#: Seconds a lost local pilot may live on: a nanny kills a closing worker after 4 s.
LOCAL_LOST_GRACE_S = 6.0
#: Seconds beyond a batch pilot's death timeout before its runs are executed again (the
#: pilot's own stop, and clocks of two hosts).
BATCH_LOST_MARGIN_S = 30.0


class PilotPoolFields(BaseModel):
    """A pool of pilots: cluster class, size of each pilot, and how many may run."""

    cluster: ClusterClass = Field(
        "local", description="local (Dask worker processes here), slurm or htcondor."
    )
    cores: int = Field(1, ge=1, description="Cores of each pilot's batch job.")
    # More slots than cores suits payloads that mostly wait on storage or sleep. (The block's
    # schema, descriptions included, is kept as it was: saved blocks keep their schema.)
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
    def _bounds(self) -> PilotPoolFields:
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

    def pool_fields(self) -> dict[str, object]:
        """The values of the pool's fields only (what a ``PilotPool`` is built from)."""
        return self.model_dump(include=set(PilotPoolFields.model_fields))
