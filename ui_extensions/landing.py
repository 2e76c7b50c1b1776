"""The shifter-first landing page: what is wrong now, and nothing that is fine.

Four lists, each empty when all is well:

- runs whose quality flag is bad or medium (flag updated in the last :data:`WINDOW_HOURS`),
  with each failing area, its checks' reasons and links to the payloads' pages;
- failed or crashed flow runs (expected start in the window), one row per raw file (or per
  flow run without a file), naming the flows, their states and messages;
- alarms that fired (``prefect.automation.triggered`` of ``p3s-*`` automations) in the last
  :data:`ALARM_HOURS`;
- the dashboard's nominal/actual rows that FAIL (pilots against target, inbox backlog,
  storage reachable).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.events.schemas.events import ResourceSpecification

from p3s.dqm.catalog import open_catalog
from p3s.dqm.links import PAYLOAD_PAGES, flow_run_ui_url, page_path
from p3s.system.settings import Settings

from .dashboard import ALARM_AUTOMATIONS, Summary
from .prefect_api import PrefectApi

WINDOW_HOURS = 24
"""Failed runs and quality flags of this many hours are 'now'."""
ALARM_HOURS = 1
"""Alarms that fired this many hours ago or less are shown."""


@dataclass
class Landing:
    """What the landing page lists; every list holds problems only."""

    at: datetime
    quality: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_fine(self) -> bool:
        return not (self.quality or self.failed or self.alarms or self.status)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        data["all_fine"] = self.all_fine
        return data


def _utc(when: datetime) -> datetime:
    """SQLite gives back naive times: they are UTC."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def quality_problems(since: datetime) -> list[dict[str, Any]]:
    """Runs flagged bad or medium since ``since`` (worst first, then newest), with the failing
    areas, the first reasons of each and links to the pages of the payloads that failed."""
    catalog = open_catalog()
    flags = [f for f in catalog.dq_flags(worse_than_good=True) if _utc(f["updated"]) >= since]
    by_run: dict[int, dict[str, Any]] = {}
    for flag in flags:
        entry = by_run.setdefault(flag["run"], {"run": flag["run"], "areas": [], "links": []})
        if flag["area"] == "run":
            entry.update(quality=flag["quality"], versions=flag["versions"])
        else:
            entry["areas"].append(
                {"area": flag["area"], "quality": flag["quality"], "reasons": flag["reasons"][:3]}
            )
    for run, entry in by_run.items():
        entry.setdefault("quality", max((a["quality"] for a in entry["areas"]), default="medium"))
        pages = {}
        for check in catalog.dq_checks(run, worse_than_good=True):
            if check["payload"] in PAYLOAD_PAGES:
                path = page_path(check["payload"], run, check["subrun"])
                pages.setdefault(path, check["payload"])
        entry["links"] = [{"path": p, "payload": name} for p, name in pages.items()]
        entry["quality_page"] = f"/quality/{run}"
    order = {"bad": 0, "medium": 1}
    return sorted(by_run.values(), key=lambda e: (order.get(e["quality"], 2), -e["run"]))


async def failed_runs(api: PrefectApi, settings: Settings, at: datetime) -> list[dict[str, Any]]:
    """Failed or crashed flow runs expected to start in the window, one row per raw file."""
    run_filter = FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED])
        ),
        expected_start_time=FlowRunFilterExpectedStartTime(
            after_=at - timedelta(hours=WINDOW_HOURS), before_=at
        ),
    )
    runs, names = await asyncio.gather(
        api.read_flow_runs(None, run_filter, limit=200), api.read_flow_names()
    )
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        url = str((run.parameters or {}).get("file_url", ""))
        key = url.rpartition("/")[2] or run.name
        row = rows.setdefault(key, {"what": key, "file_url": url, "runs": []})
        row["runs"].append(
            {
                "flow": names.get(str(run.flow_id), ""),
                "name": run.name,
                "state": run.state.name if run.state else "",
                "message": ((run.state.message or "") if run.state else "")[:300],
                "link": flow_run_ui_url(settings, str(run.id)),
                "job": f"/jobs/{run.id}",
            }
        )
    return list(rows.values())


async def fired_alarms(api: PrefectApi, at: datetime) -> list[dict[str, Any]]:
    """p3s alarms that fired in the last :data:`ALARM_HOURS`, newest first."""
    events = await api.read_events(
        EventFilter(
            occurred=EventOccurredFilter(
                since=at - timedelta(hours=ALARM_HOURS), until=at + timedelta(minutes=1)
            ),
            event=EventNameFilter(name=["prefect.automation.triggered"]),
            resource=EventResourceFilter(
                labels=ResourceSpecification({"prefect.resource.name": ALARM_AUTOMATIONS})
            ),
        ),
        50,
    )
    return [
        {
            "occurred": e["occurred"],
            "alarm": (e.get("resource") or {}).get("prefect.resource.name", ""),
            "text": _what_fired(e.get("payload") or {}),
        }
        for e in events
    ]


def _what_fired(payload: dict[str, Any]) -> str:
    """The resource an alarm fired for: the triggering event's name, else its labels."""
    event = payload.get("triggering_event") or {}
    resource = event.get("resource") or {}
    name = resource.get("prefect.resource.name") or resource.get("prefect.resource.id", "")
    if name:
        return f"{event.get('event', '')}: {name}".strip(": ")
    return ", ".join(f"{v}" for v in (payload.get("triggering_labels") or {}).values())


async def build_landing(
    api: PrefectApi, settings: Settings, summary: Summary, at: datetime | None = None
) -> Landing:
    """The landing page's lists as of ``at`` (default now); ``summary`` gives the status."""
    at = at or datetime.now(UTC)
    quality, failed, alarms = await asyncio.gather(
        asyncio.to_thread(quality_problems, at - timedelta(hours=WINDOW_HOURS)),
        failed_runs(api, settings, at),
        fired_alarms(api, at),
    )
    status = [
        {"name": r.name, "nominal": r.nominal, "actual": r.actual}
        for r in summary.status
        if r.ok is False
    ]
    return Landing(at, quality, failed, alarms, status)
