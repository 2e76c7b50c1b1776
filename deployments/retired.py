"""Deployments that earlier versions of p3s applied and this one no longer has.

``prefect deploy --all`` creates and updates what ``prefect.yaml`` names, but never deletes: a
home made by an earlier p3s would keep their event triggers, creating flow runs for flows that
no longer exist. ``p3s up`` removes them (their triggers go with them).
"""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

RETIRED = (
    # The file life cycle and the output transport became tasks of each DQM flow run.
    "file-lifecycle/dqm-finished",
    "output-transport/dqm-completed",
)


async def remove_retired_deployments(client: PrefectClient) -> list[str]:
    """Delete the :data:`RETIRED` deployments that exist; returns the names deleted."""
    removed = []
    for name in RETIRED:
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            continue
        await client.delete_deployment(deployment.id)
        removed.append(name)
    return removed
