"""A second pilots' work pool (type ``p3s-pilot``) and the deployments that run on it.

The p3s pool itself is served by pilots (``p3s up``) and gets its deployments from
``prefect.yaml``. A further pool (a Slurm or HTCondor site beside the local default, say) gets
the same priority queues (priority-10 served first) and, for each flow that should run there, a
deployment ``<flow name>/<pool name>`` with the same entrypoint as its ``prefect.yaml``
deployment: for a pool ``slurm``, ``prefect deployment run 'p3s-job/slurm'``.
"""

from __future__ import annotations

from p3s.deployments.work_pool import ensure_work_pool
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentUpdate

from p3s.system.settings import PROJECT_DIR

PILOT_POOL_TYPE = "p3s-pilot"
#: Flows deployed on the pilot pool (entrypoints relative to the project).
PILOT_ENTRYPOINTS = [
    "flows/job.py:p3s_job",
    "flows/dqm.py:dqm_tpc_monitor",
    "flows/dqm.py:dqm_purity",
    "flows/dqm.py:dqm_evdisplay",
    "flows/dqm.py:dqm_beam",
]


async def ensure_pilot_pool(
    client: PrefectClient, name: str, *, concurrency: int | None = None
) -> list[str]:
    """Create or update the pilot pool and its queues; returns what changed."""
    return await ensure_work_pool(client, name, pool_type=PILOT_POOL_TYPE, concurrency=concurrency)


async def ensure_pilot_deployment(
    client: PrefectClient, pool: str, entrypoint: str, name: str | None = None
) -> str:
    """Create (or update) the deployment ``<flow>/<name>`` (name: the pool's by default) of
    ``entrypoint`` on ``pool``; returns its full name."""
    name = name or pool
    from prefect.utilities.callables import parameter_schema

    from p3s.pilots.run_process import load_entrypoint

    flow = load_entrypoint(entrypoint)
    flow_id = await client.create_flow_from_name(flow.name)
    schema = parameter_schema(flow).model_dump()
    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}]
    deployment_id = await client.create_deployment(
        flow_id=flow_id,
        name=name,
        work_pool_name=pool,
        work_queue_name="default",
        entrypoint=entrypoint,
        path=str(PROJECT_DIR),
        parameter_openapi_schema=schema,
        pull_steps=pull,
        tags=["p3s", "pilots"],
        description=f"{flow.name} on the pilots of work pool {pool}",
    )
    await client.update_deployment(
        deployment_id, DeploymentUpdate(work_pool_name=pool, entrypoint=entrypoint)
    )
    return f"{flow.name}/{name}"


async def ensure_pilot_deployments(client: PrefectClient, pool: str) -> list[str]:
    """A deployment of each of :data:`PILOT_ENTRYPOINTS` on ``pool``; returns their names."""
    return [await ensure_pilot_deployment(client, pool, e) for e in PILOT_ENTRYPOINTS]
