"""Every p3s setting in one pydantic-settings tree, overridable by ``P3S_...`` variables.

Nested groups map onto ``P3S_<GROUP>__<FIELD>`` (for example ``P3S_SERVER__PORT``); the
top-level fields are plain ``P3S_<FIELD>`` (for example ``P3S_PAYLOAD_ROOTS``). Lists are
given as JSON (``'["/opt/a", "/opt/b"]'``) or, for paths, ``os.pathsep``-separated.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import p3s.payloads
from p3s.blocks.pilot_pool_fields import PilotPoolFields
from p3s.system.datatypes import DataType, default_datatypes

#: Where the repository (or the installed package) lives: the default home is beside it.
PROJECT_DIR = Path(__file__).resolve().parents[2]
#: The packaged payloads (``bin/``, ``p3s-inputs/``, ``workflows/``) where the package is
#: installed: the repository's ``payloads/`` in an editable install, ``site-packages/p3s/payloads``
#: from a wheel.
PACKAGED_PAYLOADS = Path(p3s.payloads.__file__).resolve().parent
#: Where p3s at CERN kept its payload scripts and its data; reference jobs name these paths.
P3S_AFS_INPUTS = "/afs/cern.ch/user/n/np04dqm/public/p3s/p3s/inputs"
P3S_EOS_AREA = "/eos/experiment/neutplatform/protodune/np04tier0/p3s"


class ServerSettings(BaseModel):
    """The Prefect server that ``p3s up`` starts (embedded default) or that clients talk to."""

    host: str = Field("127.0.0.1", description="Address the embedded Prefect server binds to.")
    port: int = Field(4200, description="Port of the embedded Prefect server.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the Prefect database; None means SQLite under the home.",
    )
    api_url: str | None = Field(
        None,
        description="URL of an external Prefect API; None means the embedded server's.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:6379/0) for the server's messaging, event "
        "ordering, concurrency leases and background tasks; None keeps them in memory.",
    )
    production: bool = Field(
        False,
        description="Production profile: PostgreSQL and Redis on this host unless "
        "database_url and redis_url name others (`p3s up --production`).",
    )
    production_database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/p3s_prefect",
        description="The Prefect database of the production profile (created if missing).",
    )
    production_redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="The Redis of the production profile."
    )
    flow_run_retention_days: float = Field(
        14.0,
        ge=0,
        description="Finished flow runs older than this (by end time) are deleted with their "
        "task runs, logs and artifacts by the server's vacuum (DQM results stay in the "
        "catalog); 0 keeps them for ever. Prefect's minimum is one hour.",
    )
    event_retention_days: float = Field(
        7.0, description="Events older than this are deleted by the server's vacuum."
    )
    vacuum_seconds: float = Field(
        3600.0, gt=0, description="How often the server's vacuum looks for old runs (s)."
    )
    database_pool_size: int = Field(
        10,
        ge=1,
        description="Connections the server keeps open to PostgreSQL. Prefect's 5 (and 10 "
        "more on demand) ran out with 400 flow runs at once on a 2-core host: requests "
        "waited 30 s for a connection and failed.",
    )
    database_max_overflow: int = Field(
        30,
        ge=0,
        description="Connections the server may open beyond the pool under bursts (mind "
        "PostgreSQL's max_connections, 100 by default, shared with the catalog).",
    )
    task_run_batch: int = Field(
        100,
        ge=1,
        description="Task-run state events the server records in one transaction. Prefect's "
        "1 made the recorder half the server's CPU for a DQM run of six tasks (0.45 CPU-s "
        "per run against 0.27 with 50, measured on two cores).",
    )
    late_after_seconds: int = Field(
        60,
        ge=1,
        description="A scheduled run that has not started this long after its scheduled time "
        "is marked Late (the UI's sign of a backlog). The mission's target: DQM runs within a "
        "minute of a file's arrival; Prefect's 15 s flags runs as soon as a backlog of a few "
        "files forms.",
    )
    task_run_flush_seconds: int = Field(
        1,
        ge=1,
        description="Most seconds a task-run state waits before the server records it "
        "(what the UI and the API show lag by up to this); Prefect's is 5. Whole seconds: "
        "Prefect truncates the setting to an integer.",
    )

    @field_validator("flow_run_retention_days")
    @classmethod
    def _at_least_an_hour(cls, days: float) -> float:
        if 0 < days <= 1 / 24:
            raise ValueError(
                f"flow_run_retention_days={days} is an hour or less: Prefect keeps runs longer "
                "than an hour; give more, or 0 to keep them for ever"
            )
        return days


class PoolSettings(BaseModel):
    """The work pool that runs p3s jobs and DQM flows."""

    name: str = Field("p3s", description="Name of the Prefect work pool.")
    concurrency: int = Field(
        4, description="Most flow runs the pool executes at once (a cap protects 2-core hosts)."
    )
    query_seconds: float = Field(
        1.0, description="How often the process worker polls for new runs (s)."
    )
    worker: Literal["pilots", "process"] = Field(
        "pilots",
        description="What runs the pool's flow runs: warm Dask pilots (the pilots settings; "
        "a local cluster by default) or Prefect's process worker (a new Python per run).",
    )


class StorageSettings(BaseModel):
    """Stage-in and stage-out through fsspec (local folders, ``root://`` XRootD/EOS)."""

    attempts: int = Field(
        3, description="Tries of one transfer before a transient failure is reported."
    )
    backoff_seconds: float = Field(
        1.0, description="Wait before the second try; doubled for each later try (s)."
    )
    timeout_seconds: int = Field(
        20, description="XRootD request timeout: an unanswered request fails after this (s)."
    )
    scratch_dir: Path | None = Field(
        None, description="Local scratch for staged-in files; None means HOME/scratch."
    )
    outbox_url: str | None = Field(
        None,
        description="Folder (path or URL, e.g. root://eos//outbox) where DQM products are "
        "staged out under runRRRRRR/SSSS/PAYLOAD; None means DATA/outbox.",
    )


class InboxSettings(BaseModel):
    """The inbox scan, the file life cycle (claimed, used, quarantine) and output transport."""

    root_url: str | None = Field(
        None,
        description="Folder (path or fsspec URL, e.g. root://host//eos/...) holding inbox/, "
        "claimed/, used/ and quarantine/; None means the data root.",
    )
    poll_seconds: float = Field(
        0.5, description="Pause between two scans of `p3s inbox watch` (s)."
    )
    settle_seconds: float = Field(
        1.0,
        description="A file is complete once its size and mtime stayed the same this long (s).",
    )
    notify: bool = Field(
        True,
        description="On a local inbox, take a file closed after writing or renamed in as "
        "complete at once (Linux inotify) and scan the moment one is; files written from "
        "another host still settle for settle_seconds.",
    )
    emit_timeout_seconds: float = Field(
        5.0, description="How long one event post to the Prefect API may take (s)."
    )
    datatypes: list[DataType] = Field(
        default_factory=default_datatypes,
        description="File-name patterns, their data type and the DQM deployments they feed.",
    )
    replica_url: str | None = Field(
        None,
        description="Where output transport replicates DQM products (path or fsspec URL); "
        "None means DATA/replica.",
    )


class WorkflowSettings(BaseModel):
    """GraphML workflow templates (p3s DAGs) and the flow that runs them."""

    datatypes: dict[str, str] = Field(
        default_factory=lambda: {
            "TXT": ".txt",
            "JSON": ".json",
            "CSV": ".csv",
            "ROOT": ".root",
            "HDF5": ".h5",
            "PNG": ".png",
            "LOG": ".log",
        },
        description="Registered data types of template edges and the file extension each "
        "gives (p3s's Datatype table); an edge of any other type is refused.",
    )
    max_parallel_nodes: int = Field(
        8, ge=1, description="Most nodes of one workflow run that execute at once."
    )


class PilotSettings(PilotPoolFields):
    """Pilots: the Dask workers of the ``p3s-pilot`` work pool.

    The pool's own fields (cluster, cores, slots, memory, disk, walltime, queue, job_flavour,
    job_extra_directives, job_script_prologue, min_pilots, max_pilots, idle_seconds,
    death_timeout, log_directory, scheduler_host, python) are those of the ``PilotPool`` block,
    described once in ``blocks/pilot_pool_fields.py``: without a saved block (``block``) the
    worker's pool is built from them. The fields below are the pilot worker's own.
    """

    pool_name: str | None = Field(
        None,
        description="Name of the pilots' Prefect work pool; None means the p3s pool itself "
        "(pool.name), which `p3s up` serves with pilots unless pool.worker is process.",
    )
    block: str | None = Field(
        None,
        description="Name of a saved PilotPool block; None builds the pool from these settings.",
    )
    # The one default that differs from a block's: `p3s up` keeps a pilot warm.
    min_pilots: Annotated[int, PilotPoolFields.model_fields["min_pilots"]] = 1
    query_seconds: float = Field(
        2.0,
        description="Fallback poll (s) of the pilot worker for scheduled runs; runs are "
        "dispatched as their Scheduled events arrive, and when a slot frees.",
    )
    scale_seconds: float = Field(2.0, description="How often the pool size is reconsidered (s).")
    engine: Literal["fork", "shared"] = Field(
        "shared",
        description="How a pilot runs p3s jobs: shared, one engine process per pilot runs them "
        "all as threads (a few MiB each while their payloads wait); fork, a child process with "
        "its own Prefect engine per run (about 38 MiB each). Other flows always fork.",
    )
    reuse_runs: int = Field(
        50,
        ge=1,
        description="Runs a pilot's flow-run child serves, one after another, before it exits "
        "(it saves each run a fork, a fresh heap and the payloads' first-call work); 1 = a "
        "fresh child per run. A cancelled or killed child is never reused.",
    )
    child_idle_seconds: float = Field(
        120.0,
        gt=0,
        description="How long an idle flow-run child waits for its pilot's next run before it "
        "exits (s): the memory it holds (tens of MiB copied from the fork server) goes back "
        "when runs stop coming; a run after that pays a fork and the payloads' first calls.",
    )
    api_patience_seconds: float = Field(
        600.0,
        gt=0,
        description="How long the pilot worker keeps trying to set a run's state while the "
        "Prefect server is unreachable or answers 5xx (s); then it logs an error.",
    )
    counts_publish_seconds: float = Field(
        10.0,
        ge=0,
        description="Pilot counts reach the Prefect variable p3s-pilots-<pool> (what a content "
        "app on another host reads) at once when pilots come or go, else at most this often "
        "(s); the status file on the worker's host is written at every change.",
    )
    below_target_seconds: float = Field(
        300.0,
        description="Fewer pilots connected than required for this long is reported once "
        "(event p3s.pilots.below-target; the pilots-below-target alarm) (s).",
    )


class AlarmSettings(BaseModel):
    """Alarms: the automations of automations/, their thresholds and where they notify.

    ``p3s alarms apply`` renders the thresholds into the automations; change one, apply again.
    """

    webhook_url: str | None = Field(
        None, description="URL that gets each alarm as a generic JSON POST; None: no such target."
    )
    chat_url: str | None = Field(
        None,
        description='Slack or Mattermost incoming-webhook URL (a {"text": ...} POST); '
        "None: no such target.",
    )
    email_to: list[str] = Field(
        default_factory=list, description="Addresses that get each alarm by e-mail (SMTP)."
    )
    email_from: str = Field("p3s@localhost", description="Sender of the alarm e-mails.")
    smtp_host: str | None = Field(None, description="SMTP server; None: no e-mail is sent.")
    smtp_port: int = Field(25, description="Port of the SMTP server.")
    smtp_username: str | None = Field(None, description="SMTP login; None: no login.")
    smtp_password: str | None = Field(None, description="SMTP password (kept in a block).")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS.")
    cooldown_seconds: float = Field(
        600.0,
        description="After an alarm fired, the same alarm (same flow, pool or quantity) "
        "stays quiet this long: one notification per incident (s).",
    )
    no_file_seconds: float = Field(
        600.0,
        ge=10,
        description="While data taking is on, alarm when no file arrived this long (s; Prefect "
        "watches for an absence at least 10 s).",
    )
    pilots_lost_count: int = Field(
        3, ge=1, description="Alarm when this many pilots of a pool are lost within the cooldown."
    )
    storage_failures_count: int = Field(
        5, ge=1, description="Alarm when this many storage tries fail within the window."
    )
    storage_window_seconds: float = Field(
        300.0, description="Window over which storage failures are counted (s)."
    )
    lifetime_min_ms: float = Field(
        3.0, description="Alarm when a TPC's electron lifetime is below this (ms)."
    )
    noisy_channels_max: int = Field(
        20, ge=0, description="Alarm when an APA plane has more noisy channels than this."
    )


class UiSettings(BaseModel):
    """The shifters' content app (``p3s ui serve``; started by ``p3s up``)."""

    host: str = Field("127.0.0.1", description="Address the content app binds to.")
    port: int = Field(4300, description="Port of the content app.")
    base_url: str | None = Field(
        None,
        description="URL shifters reach the app at (behind a front end, say); None means "
        "http://HOST:PORT. Artifacts of DQM runs link to pages under it.",
    )
    refresh_seconds: int = Field(
        30, ge=0, description="Pages reload themselves this often (s); 0 turns it off."
    )
    page_size: int = Field(50, ge=1, le=1000, description="Rows per page of long tables.")
    inbox_max_files: int = Field(
        100, ge=0, description="The dashboard's status is FAIL when more files wait in the inbox."
    )


class Settings(BaseSettings):
    """The root of every p3s setting."""

    model_config = SettingsConfigDict(
        env_prefix="P3S_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    home: Path = Field(
        PROJECT_DIR / ".p3s",
        description="Project-local state: Prefect home, pid files, service logs, job logs, data.",
    )
    payload_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [PACKAGED_PAYLOADS],
        description="Folders whose executables may run as payloads; anything else is refused.",
    )
    site_path_map: dict[str, str] | None = Field(
        None,
        description="Site path prefixes in job payloads and env values mapped to local ones; "
        "None maps p3s's CERN /afs inputs onto the packaged payloads and its /eos area onto "
        "the data root.",
    )
    job_log_dir: Path | None = Field(
        None, description="Where each job's stdout/stderr files go; None means HOME/joblogs."
    )
    data_root: Path | None = Field(
        None, description="Root of inbox, outbox, used and quarantine; None means HOME/data."
    )
    catalog_url: str | None = Field(
        None, description="SQLAlchemy URL of the DQM catalog; None means SQLite under HOME."
    )
    dqm_checks_dir: Path | None = Field(
        None,
        description="Folder of the data-quality check files (one PAYLOAD.yaml each); None means "
        "the packaged p3s/dqm/checks.",
    )
    kill_grace_seconds: float = Field(
        5.0, description="Time between SIGTERM and SIGKILL when a payload exceeds its limit (s)."
    )
    stop_settle_seconds: float = Field(
        3.0,
        ge=0,
        description="How long a payload ended by SIGTERM, SIGKILL, SIGINT or SIGHUP from outside "
        "p3s holds its run's outcome (s): when the batch system ends the pilot's job too, the "
        "run goes again elsewhere instead of failing with the payload's signal.",
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    inbox: InboxSettings = Field(default_factory=InboxSettings)
    workflow: WorkflowSettings = Field(default_factory=WorkflowSettings)
    pilots: PilotSettings = Field(default_factory=PilotSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)

    @model_validator(mode="after")
    def _pilot_pool_name(self) -> Settings:
        if self.pilots.pool_name is None:
            self.pilots.pool_name = self.pool.name
        return self

    @field_validator("payload_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("payload_roots")
    @classmethod
    def _resolve_roots(cls, roots: list[Path]) -> list[Path]:
        return [Path(root).expanduser().resolve() for root in roots]

    # Derived locations: one place decides where everything lives.
    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def run_dir(self) -> Path:
        """Pid files and service logs of what ``p3s up`` started."""
        return self.home / "run"

    @property
    def job_logs(self) -> Path:
        return self.job_log_dir or self.home / "joblogs"

    @property
    def data(self) -> Path:
        return self.data_root or self.home / "data"

    @property
    def path_map(self) -> dict[str, str]:
        """Site path prefixes and their local replacements, for payloads and env values."""
        if self.site_path_map is not None:
            return self.site_path_map
        return {P3S_AFS_INPUTS: str(PACKAGED_PAYLOADS / "p3s-inputs"), P3S_EOS_AREA: str(self.data)}

    @property
    def scratch(self) -> Path:
        """Local scratch folder where flows stage files in and write products."""
        return self.storage.scratch_dir or self.home / "scratch"

    @property
    def outbox(self) -> str:
        """Folder URL of the DQM products (local ``file://`` by default)."""
        return self.storage.outbox_url or f"file://{self.data / 'outbox'}"

    @property
    def catalog(self) -> str:
        return self.catalog_url or f"sqlite:///{self.home / 'catalog.sqlite'}"

    @property
    def api_url(self) -> str:
        return self.server.api_url or f"http://{self.server.host}:{self.server.port}/api"

    @property
    def ui_url(self) -> str:
        """Where shifters open the content app (no trailing slash)."""
        return (self.ui.base_url or f"http://{self.ui.host}:{self.ui.port}").rstrip("/")

    @property
    def prefect_database_url(self) -> str:
        if self.server.database_url:
            return self.server.database_url
        if self.server.production:
            return self.server.production_database_url
        return f"sqlite+aiosqlite:///{self.prefect_home / 'prefect.db'}"

    @property
    def prefect_redis_url(self) -> str | None:
        """Redis of the Prefect server, or None for its in-memory messaging."""
        if self.server.redis_url:
            return self.server.redis_url
        return self.server.production_redis_url if self.server.production else None


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once from the environment."""
    return Settings()
