"""Per-jobtype concurrency limits (p3s's jobtype limits), kept as Prefect global concurrency
limits named ``jobtype:<type>`` so operators set them in the UI or with
``prefect gcl create jobtype:evdisp --limit 2``.

The pilot worker claims a flow run tagged ``jobtype:<type>`` only while fewer than the limit
of that type's runs are Pending or Running in the whole Prefect server (not only on this
worker); the others stay Scheduled until a slot frees.
"""

from __future__ import annotations

from collections.abc import Iterable

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType

PREFIX = "jobtype:"
ACTIVE = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]


def jobtype_of(tags: Iterable[str]) -> str | None:
    """The p3s jobtype a run's tags name (``jobtype:<type>``), or None."""
    for tag in tags:
        if tag.startswith(PREFIX):
            return tag.removeprefix(PREFIX)
    return None


async def read_limits(client: PrefectClient) -> dict[str, int]:
    """Active ``jobtype:<type>`` global concurrency limits, by type."""
    limits: dict[str, int] = {}
    offset = 0
    while True:
        page = await client.read_global_concurrency_limits(limit=200, offset=offset)
        for gcl in page:
            if gcl.name.startswith(PREFIX) and gcl.active:
                limits[gcl.name.removeprefix(PREFIX)] = gcl.limit
        if len(page) < 200:
            return limits
        offset += 200


async def active_runs(client: PrefectClient, jobtype: str) -> int:
    """Flow runs of ``jobtype`` Pending, Running or Cancelling anywhere."""
    return await client.count_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[PREFIX + jobtype]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE)),
        )
    )
