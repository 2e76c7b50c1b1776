"""Workflow runs on top of the Prefect API: submit a registered template, show a run's nodes,
and draw its graph coloured by state (a PNG for the content pages).

A workflow run is a flow run of the ``p3s-workflow/template`` deployment; each node is a task
run of it named after the node.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from p3s.system.settings import Settings
from p3s.workflows.templates import (
    WORKFLOW_DEPLOYMENT,
    Workflow,
    WorkflowError,
    _load_json_option,
    instantiate,
    load_template,
    vet_workflow,
)

#: Fill colour of a node by its Prefect state name (others: by state type, else grey).
STATE_COLOURS = {
    "Completed": "#4caf50",
    "Failed": "#e53935",
    "TimeLimit": "#ff9800",
    "Refused": "#8e24aa",
    "Skipped": "#bdbdbd",
    "Running": "#1e88e5",
    "Pending": "#fff59d",
    "not started": "#ffffff",
}
TYPE_COLOURS = {"CRASHED": "#b71c1c", "CANCELLED": "#9e9e9e", "SCHEDULED": "#fff59d"}


@dataclass
class NodeView:
    """What ``p3s workflow show`` prints of one node."""

    node: str
    jobtype: str
    priority: int
    state: str
    state_type: str
    message: str
    task_run_id: str | None = None


def prepare_submission(
    template: str,
    *,
    fileinfo: str | None = None,
    jobinfo: str | None = None,
    input_file: str | None = None,
    name: str | None = None,
    settings: Settings,
) -> tuple[Workflow, dict[str, Any]]:
    """Validate the options here (a refusal costs no flow run) and build the run parameters.

    Raises:
        LookupError, TemplateError, WorkflowError: with the template, edge, node or field.
    """
    # JSON files are read here: the worker may not see the submitter's files.
    info: str | dict[str, Any] | None = fileinfo
    if (
        fileinfo is not None
        and fileinfo.strip() not in ("sticky",)
        and not fileinfo.strip().startswith("inherit:")
    ):
        info = _load_json_option(fileinfo, "fileinfo")
    jobs = _load_json_option(jobinfo, "jobinfo") if jobinfo is not None else None
    source = os.path.abspath(input_file) if input_file else None
    workflow = instantiate(
        load_template(template), fileinfo=info, jobinfo=jobs, input_file=source, name=name
    )
    problems = vet_workflow(workflow, roots=settings.payload_roots, prefix_map=settings.path_map)
    if problems:
        raise WorkflowError("\n".join(problems))
    parameters = {"template": template, "fileinfo": info, "jobinfo": jobs, "input_file": source}
    if name:
        parameters["name"] = name
    return workflow, {k: v for k, v in parameters.items() if v is not None}


async def submit_workflow(workflow: Workflow, parameters: dict[str, Any]) -> Any:
    """Create the flow run of ``p3s-workflow/template``; its queue follows the top priority."""
    from prefect.client.orchestration import get_client

    from p3s.jobs.queues import queue_for_priority

    top = max((n.job.priority for n in workflow.nodes), default=0)
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(WORKFLOW_DEPLOYMENT)
        return await client.create_flow_run_from_deployment(
            deployment.id,
            parameters=parameters,
            tags=["p3s-workflow", f"template:{workflow.template}"],
            work_queue_name=queue_for_priority(top),
            idempotency_key=f"p3s-workflow-{uuid.uuid4().hex}",
        )


TASK_RUNS_SETTLE_S = 5.0
"""How long the status of a finished workflow waits for its last task-run states: the server
records them in batches (``settings.server.task_run_flush_seconds``), after the run's own."""


async def read_run(run_id: str) -> tuple[Any, list[Any]]:
    """The workflow's flow run and its task runs (of a finished run, once they are final)."""
    import asyncio

    from prefect.client.orchestration import get_client

    try:
        flow_run_id = uuid.UUID(run_id)
    except ValueError:
        raise ValueError(f"{run_id!r} is not a workflow run id (a flow run UUID)") from None
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        tasks = await _task_runs(client, flow_run_id)
        deadline = asyncio.get_running_loop().time() + TASK_RUNS_SETTLE_S
        while (
            run.state is not None
            and run.state.is_final()
            and any(t.state is None or not t.state.is_final() for t in tasks)
            and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.25)
            tasks = await _task_runs(client, flow_run_id)
    return run, tasks


async def _task_runs(client: Any, flow_run_id: uuid.UUID) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    tasks: list[Any] = []
    while True:  # the API returns at most 200 a call
        page = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=200,
            offset=len(tasks),
        )
        tasks.extend(page)
        if len(page) < 200:
            return tasks


def node_views(run: Any, task_runs: list[Any]) -> tuple[Workflow | None, list[NodeView]]:
    """Every node of a workflow run with its state; nodes without a task run are not started."""
    params = run.parameters or {}
    try:
        workflow = instantiate(
            load_template(params["template"], check_payloads=False),
            fileinfo=params.get("fileinfo"),
            jobinfo=params.get("jobinfo"),
            input_file=params.get("input_file"),
            name=params.get("name"),
        )
    except (KeyError, LookupError, ValueError):
        workflow = None
    by_name = {t.name: t for t in sorted(task_runs, key=lambda t: t.created or 0)}
    views = []
    ids = [n.node for n in workflow.nodes] if workflow else sorted(by_name)
    for node_id in ids:
        task = by_name.get(node_id)
        node = workflow.node(node_id) if workflow else None
        state = task.state if task else None
        views.append(
            NodeView(
                node=node_id,
                jobtype=node.job.jobtype if node else "",
                priority=node.job.priority if node else 0,
                state=state.name if state else "not started",
                state_type=state.type.value if state else "",
                message=(state.message or "") if state else "",
                task_run_id=str(task.id) if task else None,
            )
        )
    return workflow, views


def colour_of(view: NodeView) -> str:
    return STATE_COLOURS.get(view.state) or TYPE_COLOURS.get(view.state_type, "#e0e0e0")


def draw_workflow(graph: nx.DiGraph, views: list[NodeView], out: Path, title: str = "") -> Path:
    """Draw the graph left to right by dependency depth, nodes coloured by state (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    for layer, nodes in enumerate(nx.topological_generations(graph)):
        for node in nodes:
            graph.nodes[node]["layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="layer")
    colours = {v.node: colour_of(v) for v in views}
    n = graph.number_of_nodes()
    layers = max((d["layer"] for _, d in graph.nodes(data=True)), default=0) + 1
    fig = Figure(figsize=(min(4 + 2.2 * layers, 24), min(3 + 0.5 * n / layers, 18)), dpi=100)
    ax = fig.add_subplot()
    ax.set_axis_off()
    small = n > 60
    nx.draw_networkx_edges(graph, pos, ax=ax, arrows=not small, alpha=0.5, node_size=900)
    nx.draw_networkx_nodes(
        graph,
        pos,
        ax=ax,
        node_color=[colours.get(node, "#e0e0e0") for node in graph.nodes],
        edgecolors="black",
        node_size=60 if small else 900,
    )
    if not small:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=8)
    used = sorted({v.state for v in views})
    ax.legend(
        handles=[
            Patch(facecolor=colour_of(next(v for v in views if v.state == s)), label=s)
            for s in used
        ],
        loc="upper left",
        fontsize=8,
        frameon=False,
    )
    if title:
        ax.set_title(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    return out


def graph_png_path(settings: Settings, run_id: str) -> Path:
    """Where the drawing of a workflow run goes: under the home, for the content pages."""
    return settings.home / "content" / "workflows" / f"{run_id}.png"
