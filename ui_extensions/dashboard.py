"""The p3s-style summary from the Prefect API: pilots, jobs by state and window, workflows,
files, a nominal/actual status table and the service log.

Jobs by state: flow runs whose expected start time falls in the window (1 min ... 24 h before
``at``), by their current p3s state. Two ``/flow_runs/history`` calls per row (1-minute buckets
over 2 h, one 24 h bucket) give every window at once; the database groups the runs, so the cost
does not grow with the number of runs returned. Rows: all runs, each flow, each p3s job type.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import State, StateType
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.events.schemas.events import ResourceSpecification

from p3s.files.lifecycle import Layout
from p3s.files.storage import exists
from p3s.jobs.states import p3s_state
from p3s.pilots.scaling import required_pilots
from p3s.pilots.status import PilotCounts, read_status, variable_name
from p3s.system.settings import Settings

from .prefect_api import PrefectApi

#: Window name -> seconds before ``at``.
WINDOWS = {"1 min": 60, "10 min": 600, "1 h": 3600, "2 h": 7200, "24 h": 86400}
#: p3s job states, in the order of the table (pilotTO: the run's pilot was lost).
STATES = (
    "defined",
    "dispatched",
    "running",
    "finished",
    "failed",
    "timelimit",
    "nonstarter",
    "pilotTO",
    "cancelled",
)
#: p3s's own events in the service log: scaling decisions, lost pilots, quarantined files, alarms.
LOG_EVENTS = ("p3s.pilots.scaled", "p3s.pilot.lost", "p3s.file.quarantined", "p3s.alarm")
#: Automations whose events (triggered, actions) are alarms: the alarms of automations/ are
#: named ``p3s-...``; deployment triggers (``<deployment>__automation_N``) are left out.
ALARM_AUTOMATIONS = "p3s-*"
JOBTYPE_TAG = "jobtype:"
#: Rows counted at once: more only queue up in a 2-core server.
_PARALLEL_QUERIES = 4


def p3s_state_of(state_type: str, state_name: str) -> str:
    """The p3s state of a Prefect state type and name (as :func:`p3s.jobs.states.p3s_state`)."""
    return p3s_state(State(type=StateType(state_type), name=state_name))


def window_counts(history_2h: list[dict[str, Any]], history_24h: list[dict[str, Any]]) -> dict:
    """Window -> p3s state -> runs, from 1-minute buckets over 2 h and one 24 h bucket."""
    counts = {w: dict.fromkeys(STATES, 0) for w in WINDOWS}
    n = len(history_2h)
    for index, bucket in enumerate(history_2h):
        age_min = n - index  # the last bucket ends at `at`
        for item in bucket["states"]:
            state = p3s_state_of(item["state_type"], item["state_name"])
            for window, seconds in WINDOWS.items():
                if seconds <= 7200 and age_min <= seconds // 60 and state in counts[window]:
                    counts[window][state] += item["count_runs"]
    for bucket in history_24h:
        for item in bucket["states"]:
            state = p3s_state_of(item["state_type"], item["state_name"])
            if state in counts["24 h"]:
                counts["24 h"][state] += item["count_runs"]
    return counts


async def job_counts(
    api: PrefectApi,
    at: datetime,
    flow_filter: FlowFilter | None = None,
    flow_run_filter: FlowRunFilter | None = None,
) -> dict[str, dict[str, int]]:
    fine, day = await asyncio.gather(
        api.history(at - timedelta(hours=2), at, 60, flow_filter, flow_run_filter),
        api.history(at - timedelta(hours=24), at, 86400, flow_filter, flow_run_filter),
    )
    return window_counts(fine, day)


async def jobtypes(api: PrefectApi, limit: int = 200) -> list[str]:
    """The p3s job types of the newest jobs (their ``jobtype:`` tags)."""
    runs = await api.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["p3s-job"])), limit=limit
    )
    found = {t[len(JOBTYPE_TAG) :] for r in runs for t in r.tags if t.startswith(JOBTYPE_TAG)}
    return sorted(found)


@dataclass
class StatusRow:
    """One line of the nominal/actual table."""

    name: str
    nominal: str
    actual: str
    ok: bool | None  # None: not known (nothing published)

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else "OK" if self.ok else "FAIL"


@dataclass
class Summary:
    at: datetime
    api_url: str
    pilots: dict[str, Any] | None
    jobs: dict[str, dict[str, dict[str, int]]]
    workflows: dict[str, int]
    files: dict[str, int]
    status: list[StatusRow]
    log: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        data["status"] = [{**asdict(r), "verdict": r.verdict} for r in self.status]
        data["windows"] = list(WINDOWS)
        data["states"] = list(STATES)
        return data


async def pilot_counts(api: PrefectApi, settings: Settings) -> PilotCounts | None:
    """The pilot pool's counts: this host's file, else the Prefect variable."""
    pool = settings.pilots.pool_name
    counts = read_status(settings, pool)
    if counts is not None:
        return counts
    data = await api.read_variable(variable_name(pool))
    return PilotCounts(**data) if isinstance(data, dict) else None


def pilot_target(settings: Settings, counts: PilotCounts) -> int:
    """Pilots the pool should hold: the backlog and runs in flight over slots, within min/max."""
    p = settings.pilots
    return required_pilots(
        counts.backlog, counts.runs_in_flight, p.slots or p.cores, p.min_pilots, p.max_pilots
    )


def file_counts(settings: Settings) -> dict[str, int]:
    """Files in each life-cycle folder (reason notes of quarantined files aside)."""
    layout = Layout.of(settings)
    counts = {}
    for stage in ("inbox", "claimed", "used", "quarantine"):
        entries = layout.area(stage).entries()
        counts[stage] = sum(
            1 for e in entries if e.kind == "file" and not e.name.endswith(".reason")
        )
    return counts


def quarantined(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """Quarantined files, newest first, as log lines with the first line of their reason."""
    area = Layout.of(settings).quarantine
    entries = [e for e in area.entries() if e.kind == "file" and not e.name.endswith(".reason")]
    entries.sort(key=lambda e: e.mtime or 0, reverse=True)
    lines = []
    for entry in entries[:limit]:
        fs, path = area.fs()
        try:
            with fs.open(f"{path}/{entry.name}.reason", "rb") as handle:
                reason = handle.read(4096).decode("utf-8", "replace").splitlines()[0]
        except (OSError, IndexError):
            reason = ""
        when = datetime.fromtimestamp(entry.mtime, UTC) if entry.mtime else None
        lines.append(
            {
                "occurred": when.isoformat() if when else "",
                "event": "file quarantined",
                "resource": entry.name,
                "text": reason,
            }
        )
    return lines


def _event_text(event: dict[str, Any]) -> str:
    payload = event.get("payload") or {}
    resource = event.get("resource") or {}
    name = event["event"]
    if name == "p3s.pilots.scaled":
        return str(payload.get("message") or payload)
    if name.startswith("prefect.automation."):
        related = [r.get("prefect.resource.name", "") for r in event.get("related", [])]
        label = resource.get("prefect.resource.name", "")
        return " ".join(x for x in [label, *related] if x) or str(payload)[:200]
    return str(payload.get("message") or payload.get("reason") or payload)[:300]


async def service_log(
    api: PrefectApi, settings: Settings, at: datetime, limit: int = 50
) -> list[dict[str, Any]]:
    """System events of the last 24 h, newest first: Prefect events and quarantined files."""
    occurred = EventOccurredFilter(since=at - timedelta(hours=24), until=at + timedelta(minutes=1))
    system, alarms = await asyncio.gather(
        api.read_events(
            EventFilter(occurred=occurred, event=EventNameFilter(prefix=list(LOG_EVENTS))), limit
        ),
        api.read_events(
            EventFilter(
                occurred=occurred,
                event=EventNameFilter(prefix=["prefect.automation."]),
                resource=EventResourceFilter(
                    labels=ResourceSpecification({"prefect.resource.name": ALARM_AUTOMATIONS})
                ),
            ),
            limit,
        ),
    )
    events = system + alarms
    lines = [
        {
            "occurred": e["occurred"],
            "event": e["event"],
            "resource": (e.get("resource") or {}).get("prefect.resource.id", ""),
            "text": _event_text(e),
        }
        for e in events
    ]
    lines += await asyncio.to_thread(quarantined, settings)
    lines.sort(key=lambda line: line["occurred"], reverse=True)
    return lines[:limit]


def _storage_ok(url: str) -> bool:
    try:
        return exists(url)
    except Exception:  # any storage failure is a FAIL on the page, not an error page
        return False


async def build_summary(api: PrefectApi, settings: Settings, at: datetime | None = None) -> Summary:
    """Everything the dashboard shows, as of ``at`` (default now, UTC)."""
    at = at or datetime.now(UTC)
    flow_names = sorted(set((await api.read_flow_names()).values()))
    types = await jobtypes(api)
    rows: dict[str, Any] = {"all": job_counts(api, at)}
    for name in flow_names:
        rows[f"flow {name}"] = job_counts(api, at, FlowFilter(name=FlowFilterName(any_=[name])))
    for jobtype in types:
        tags = FlowRunFilterTags(all_=["p3s-job", JOBTYPE_TAG + jobtype])
        rows[f"jobtype {jobtype}"] = job_counts(api, at, None, FlowRunFilter(tags=tags))
    limit = asyncio.Semaphore(_PARALLEL_QUERIES)

    async def limited(query: Any) -> Any:
        async with limit:
            return await query

    results = await asyncio.gather(*(limited(q) for q in rows.values()))
    jobs = dict(zip(rows, results, strict=True))

    counts = await pilot_counts(api, settings)
    layout = Layout.of(settings)
    files = await asyncio.to_thread(file_counts, settings)
    storage_ok = await asyncio.gather(
        asyncio.to_thread(_storage_ok, layout.root), asyncio.to_thread(_storage_ok, settings.outbox)
    )
    templates = await api.count_block_documents("p3s-workflow-template")
    workflow_row = jobs.get("flow p3s-workflow", {}).get("24 h", {})
    workflows = {
        "templates": templates,
        **{f"runs {k} (24 h)": v for k, v in workflow_row.items() if v},
    }

    status = []
    if counts is None:
        status.append(StatusRow("pilots", "published by the pilot worker", "no counts", None))
    else:
        target = pilot_target(settings, counts)
        status.append(
            StatusRow("pilots", f">= {target}", str(counts.total), counts.total >= target)
        )
    limit = settings.ui.inbox_max_files
    status.append(
        StatusRow("inbox files", f"<= {limit}", str(files["inbox"]), files["inbox"] <= limit)
    )
    status.append(
        StatusRow(
            "inbox storage",
            layout.root,
            "reachable" if storage_ok[0] else "unreachable",
            storage_ok[0],
        )
    )
    status.append(
        StatusRow(
            "outbox storage",
            settings.outbox,
            "reachable" if storage_ok[1] else "unreachable",
            storage_ok[1],
        )
    )

    return Summary(
        at=at,
        api_url=settings.api_url,
        pilots=None
        if counts is None
        else {k: v for k, v in counts.as_dict().items() if k != "pilots"},
        jobs=jobs,
        workflows=workflows,
        files=files,
        status=status,
        log=await service_log(api, settings, at),
    )
