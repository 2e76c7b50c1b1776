"""The few Prefect REST calls the dashboard makes, with the shifter's own credentials.

A thin httpx client rather than Prefect's: each request carries the HTTP Basic credentials the
shifter gave the app (the server's ``server.api.auth_string``), and the counts come from
``/flow_runs/count`` and ``/flow_runs/history`` (grouped by state in the database), never from
reading every run.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Any

import httpx
from prefect.client.schemas.filters import FlowFilter, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.events.filters import EventFilter

_TRIES = 4


def _dump(model: Any) -> Any:
    return None if model is None else model.model_dump(mode="json", exclude_unset=True)


class PrefectApi:
    """One Prefect API URL and one set of credentials (None: an open server)."""

    def __init__(self, api_url: str, auth_string: str | None = None, timeout_s: float = 30.0):
        headers = {}
        if auth_string:
            token = base64.b64encode(auth_string.encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.api_url = api_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.api_url + "/", headers=headers, timeout=timeout_s
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        # A busy SQLite server answers 503 (or 429): ask again a little later, as Prefect's
        # own client does.
        for attempt in range(1, _TRIES + 1):
            response = await self.client.request(method, path.lstrip("/"), json=body)
            if response.status_code not in (429, 503) or attempt == _TRIES:
                break
            await asyncio.sleep(0.2 * 2**attempt)
        response.raise_for_status()
        return response.json() if response.content else None

    async def authorised(self) -> bool:
        """Whether the API accepts these credentials (``/admin/version`` needs them)."""
        response = await self.client.get("admin/version")
        return response.status_code == 200

    async def count_flow_runs(
        self, flow_filter: FlowFilter | None = None, flow_run_filter: FlowRunFilter | None = None
    ) -> int:
        body = {"flows": _dump(flow_filter), "flow_runs": _dump(flow_run_filter)}
        return int(await self._call("POST", "/flow_runs/count", body))

    async def history(
        self,
        start: datetime,
        end: datetime,
        interval_s: float,
        flow_filter: FlowFilter | None = None,
        flow_run_filter: FlowRunFilter | None = None,
    ) -> list[dict[str, Any]]:
        """Runs by expected start time bucket, state type and state name (at most 500 buckets)."""
        body = {
            "history_start": start.isoformat(),
            "history_end": end.isoformat(),
            "history_interval_seconds": interval_s,
            "flows": _dump(flow_filter),
            "flow_runs": _dump(flow_run_filter),
        }
        return list(await self._call("POST", "/flow_runs/history", body))

    async def read_flow_runs(
        self,
        flow_filter: FlowFilter | None = None,
        flow_run_filter: FlowRunFilter | None = None,
        *,
        sort: str = "EXPECTED_START_TIME_DESC",
        limit: int = 50,
        offset: int = 0,
    ) -> list[FlowRun]:
        body = {
            "flows": _dump(flow_filter),
            "flow_runs": _dump(flow_run_filter),
            "sort": sort,
            "limit": limit,
            "offset": offset,
        }
        return [
            FlowRun.model_validate(r) for r in await self._call("POST", "/flow_runs/filter", body)
        ]

    async def read_flow_run(self, flow_run_id: str) -> FlowRun:
        return FlowRun.model_validate(await self._call("GET", f"/flow_runs/{flow_run_id}"))

    async def read_flow_names(self) -> dict[str, str]:
        """Flow id -> name."""
        flows = await self._call("POST", "/flows/filter", {"limit": 200})
        return {f["id"]: f["name"] for f in flows}

    async def read_artifacts(self, flow_run_id: str) -> list[dict[str, Any]]:
        body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 50}
        return list(await self._call("POST", "/artifacts/filter", body))

    async def read_events(self, event_filter: EventFilter, limit: int = 50) -> list[dict[str, Any]]:
        body = {"filter": event_filter.model_dump(mode="json"), "limit": limit}
        return list((await self._call("POST", "/events/filter", body))["events"])

    async def read_variable(self, name: str) -> Any:
        response = await self.client.get(f"variables/name/{name}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json().get("value")

    async def count_block_documents(self, block_type_slug: str) -> int:
        body = {"block_types": {"slug": {"any_": [block_type_slug]}}}
        return int(await self._call("POST", "/block_documents/count", body))
