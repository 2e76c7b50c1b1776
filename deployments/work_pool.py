"""The p3s work pool and its priority queues (see :mod:`p3s.jobs.queues`), created or brought
up to date idempotently.
"""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound

from p3s.jobs.queues import P3S_PRIORITIES, prefect_priority, queue_for_priority


def default_base_job_template(pool_type: str) -> dict[str, Any]:
    """The base job template of a worker type known to this installation."""
    from prefect.workers.process import ProcessWorker

    if pool_type == "process":
        return ProcessWorker.get_default_base_job_template()
    if pool_type == "p3s-pilot":
        from p3s.pilots.worker import PilotWorker

        return PilotWorker.get_default_base_job_template()
    raise ValueError(f"no base job template known for work pool type {pool_type!r}")


async def ensure_work_pool(
    client: PrefectClient, name: str, *, pool_type: str = "process", concurrency: int | None
) -> list[str]:
    """Create the pool and its queues if missing, else update them; returns what changed."""
    changes: list[str] = []
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        pool = None
    if pool is not None and pool.type != pool_type:
        # A home made when the pool was served by another worker type (p3s up with
        # pool.worker=process, say): a pool's type cannot change, so make it anew. Its
        # deployments are applied again right after this by `prefect deploy --all`.
        await client.delete_work_pool(name)
        changes.append(f"pool {name}: type {pool.type} replaced by {pool_type}")
        pool = None
    if pool is None:
        await client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type=pool_type,
                base_job_template=default_base_job_template(pool_type),
                concurrency_limit=concurrency,
                description="p3s jobs and DQM flows",
            )
        )
        changes.append(f"pool {name} created")
    elif pool.concurrency_limit != concurrency:
        await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency))
        changes.append(f"pool {name}: concurrency {concurrency}")

    existing = {q.name: q for q in await client.read_work_queues(work_pool_name=name)}
    wanted = {queue_for_priority(p): prefect_priority(p) for p in P3S_PRIORITIES}
    wanted["default"] = prefect_priority(0) + 1
    created = []
    for queue_name, priority in wanted.items():
        queue = existing.get(queue_name)
        if queue is None:
            await client.create_work_queue(
                name=queue_name,
                work_pool_name=name,
                priority=priority,
                description=f"p3s priority {queue_name.removeprefix('priority-')}",
            )
            created.append(queue_name)
        elif queue.priority != priority:
            await client.update_work_queue(queue.id, priority=priority)
            changes.append(f"queue {queue_name}: priority {priority}")
    if created:
        span = created[0] if len(created) == 1 else f"{created[0]} .. {created[-1]}"
        changes.append(f"{len(created)} queue(s) created: {span}")
    return changes
