"""p3s's job client on top of the Prefect API: submit, list, show and cancel jobs.

A p3s job is a flow run of the ``p3s-job/adhoc`` deployment: its name is the job name, its tags
carry the job type, and its work queue follows the p3s priority.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Cancelled, Cancelling

from p3s.jobs.model import P3SJob, vet_jobs
from p3s.jobs.queues import queue_for_priority
from p3s.jobs.states import P3S_FILTERS, p3s_state

ADHOC_DEPLOYMENT = "p3s-job/adhoc"
#: Flow runs created at once; more only queue up on a 2-core SQLite server.
SUBMIT_CONCURRENCY = 8
#: Most flow runs the API returns in one call.
PAGE = 200


@dataclass
class JobView:
    """What ``p3s job list/show`` prints of one job."""

    id: str
    name: str
    jobtype: str
    priority: int
    p3s_state: str
    prefect_state: str
    message: str
    created: str
    errcode: int | None = None
    stdout: str | None = None
    stderr: str | None = None

    @classmethod
    def of(cls, run: FlowRun) -> JobView:
        job = run.parameters.get("job", {}) if run.parameters else {}
        state = run.state
        return cls(
            id=str(run.id),
            name=run.name,
            jobtype=str(job.get("jobtype", "")),
            priority=int(job.get("priority", 0) or 0),
            p3s_state=p3s_state(state),
            prefect_state=state.name if state else "",
            message=(state.message or "") if state else "",
            created=run.created.strftime("%m-%d %H:%M:%S") if run.created else "",
        )


async def submit_jobs(
    jobs: Sequence[P3SJob],
    *,
    deployment: str = ADHOC_DEPLOYMENT,
    client: PrefectClient | None = None,
    check_payloads: bool = False,
) -> list[FlowRun]:
    """Create one flow run per job; each creation is idempotent, so a retry never duplicates.

    Every job is validated again first (a job built with ``model_construct`` or changed after
    validation, e.g. an ``env`` key that is no variable name): if any is at fault, none is
    submitted.

    Args:
        check_payloads: also refuse payloads that this host's payload roots do not allow
            (``p3s job submit`` does). Off by default: the submitting process may not see the
            roots of the workers; the ``p3s-job`` flow refuses such a payload in any case.

    Raises:
        JobsRefused: one line per fault, ``job [INDEX] field 'FIELD': why``.
    """
    if check_payloads:
        from p3s.system.settings import get_settings

        settings = get_settings()
        jobs = vet_jobs(jobs, roots=settings.payload_roots, prefix_map=settings.path_map)
    else:
        jobs = vet_jobs(jobs)
    batch = uuid.uuid4().hex
    limit = asyncio.Semaphore(SUBMIT_CONCURRENCY)

    async def _submit(c: PrefectClient, deployment_id: uuid.UUID, i: int, job: P3SJob) -> FlowRun:
        async with limit:
            return await c.create_flow_run_from_deployment(
                deployment_id,
                parameters={"job": job.model_dump()},
                name=job.name,
                tags=job.tags,
                work_queue_name=queue_for_priority(job.priority),
                idempotency_key=f"p3s-submit-{batch}-{i}",
            )

    async def _all(c: PrefectClient) -> list[FlowRun]:
        deployment_id = (await c.read_deployment_by_name(deployment)).id
        return list(
            await asyncio.gather(*(_submit(c, deployment_id, i, j) for i, j in enumerate(jobs)))
        )

    if client is not None:
        return await _all(client)
    async with get_client() as c:
        return await _all(c)


def job_filter(state: str | None = None, jobtype: str | None = None) -> FlowRunFilter:
    """A flow-run filter for p3s jobs in a p3s state and of a job type."""
    tags = ["p3s-job"] + ([f"jobtype:{jobtype}"] if jobtype else [])
    flt = FlowRunFilter(tags=FlowRunFilterTags(all_=tags))
    if state is not None:
        if state not in P3S_FILTERS:
            raise ValueError(f"unknown p3s state {state!r}; use one of {', '.join(P3S_FILTERS)}")
        types, name = P3S_FILTERS[state]
        flt.state = FlowRunFilterState(
            type=FlowRunFilterStateType(any_=types),
            name=FlowRunFilterStateName(any_=[name]) if name else None,
        )
    return flt


async def list_jobs(
    state: str | None = None, jobtype: str | None = None, limit: int = 100
) -> list[JobView]:
    runs: list[FlowRun] = []
    async with get_client() as client:
        while len(runs) < limit:  # the API returns at most PAGE runs a call
            page = await client.read_flow_runs(
                flow_run_filter=job_filter(state, jobtype),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=min(PAGE, limit - len(runs)),
                offset=len(runs),
            )
            runs.extend(page)
            if len(page) < PAGE:
                break
    views = [JobView.of(run) for run in runs]
    if state == "failed":  # time limits and refusals have their own p3s states
        views = [v for v in views if v.p3s_state == "failed"]
    return views


def parse_job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise ValueError(f"{job_id!r} is not a job id (a flow run UUID)") from None


async def show_job(job_id: str) -> tuple[JobView, FlowRun]:
    async with get_client() as client:
        run = await client.read_flow_run(parse_job_id(job_id))
        view = JobView.of(run)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    for artifact in artifacts:
        record = _job_record(artifact.data)
        if record is not None:
            view.errcode = record.get("errcode")
            view.stdout, view.stderr = record.get("stdout_path"), record.get("stderr_path")
    return view, run


def _job_record(data: Any) -> dict[str, Any] | None:
    import json

    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if isinstance(data, list) and data and isinstance(data[0], dict) and "errcode" in data[0]:
        return data[0]
    return None


async def cancel_job(job_id: str) -> str:
    """Ask for cancellation; the worker stops the payload. Returns the new p3s state."""
    run_id = parse_job_id(job_id)
    message = "cancelled with p3s job cancel"
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        # A run no worker holds yet is cancelled at once; a running one goes through
        # Cancelling, so that its worker stops the payload.
        waiting = run.state is None or run.state.type == StateType.SCHEDULED
        state = Cancelled(message=message) if waiting else Cancelling(message=message)
        result = await client.set_flow_run_state(run_id, state)
        run = await client.read_flow_run(run_id)
    if result.status.value != "ACCEPT":
        raise RuntimeError(
            f"job {job_id} was not cancelled: {result.details.reason or result.status.value}"
        )
    return p3s_state(run.state)


FINAL_STATES = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


async def wait_for_jobs(
    run_ids: Sequence[uuid.UUID | str], timeout_s: float = 600.0, poll_s: float = 1.0
) -> list[FlowRun]:
    """Wait until every job is in a final state and return them, in the order given."""
    ids = [uuid.UUID(str(i)) for i in run_ids]
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            runs: dict[uuid.UUID, FlowRun] = {}
            for start in range(0, len(ids), PAGE):
                chunk = ids[start : start + PAGE]
                for run in await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                    limit=len(chunk),
                ):
                    runs[run.id] = run
            unfinished = [
                r for r in runs.values() if r.state is None or r.state.type not in FINAL_STATES
            ]
            if len(runs) == len(ids) and not unfinished:
                return [runs[i] for i in ids]
            if time.monotonic() > deadline:
                sample = [(r.name, r.state.name if r.state else None) for r in unfinished[:10]]
                raise TimeoutError(
                    f"{len(unfinished) + len(ids) - len(runs)} job(s) not finished after "
                    f"{timeout_s:.0f} s, e.g. {sample}"
                )
            await asyncio.sleep(poll_s)
