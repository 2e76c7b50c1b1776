"""The ``p3s-workflow`` flow: a registered GraphML template run as Prefect tasks, parents first.

A node starts only when all its parents have completed; nodes whose parents are all done run
at once, up to ``settings.workflow.max_parallel_nodes``, the highest priority first. A failed
node stops its descendants: each gets a task run ``Cancelled`` named ``Skipped`` whose message
names the failed parent. The flow run ends ``Completed``, or ``Failed`` with a message naming
the nodes that failed. Each node keeps its job's time limit, priority and job type (a task tag
``jobtype:NAME``, so that a Prefect tag concurrency limit caps the running nodes of a type).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import networkx as nx
from p3s.flows.job import REFUSED_STATE, final_state, job_environment
from prefect import flow, get_client, get_run_logger, tags, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run as current_run
from prefect.states import Cancelled, Completed, Failed, State

from p3s.jobs.policy import PayloadRefused, map_prefix, resolve_command
from p3s.jobs.process import execute_payload
from p3s.system.settings import get_settings
from p3s.workflows.graphml import anchor_payload
from p3s.workflows.templates import (
    NodeJob,
    TemplateError,
    Workflow,
    WorkflowError,
    instantiate,
    load_template,
    task_runner,
)

SKIPPED_STATE = "Skipped"
#: Larger workflows are not drawn at the end of their run (``p3s workflow show`` still can).
MAX_DRAWN_NODES = 200


def _run_name() -> str:
    params = current_run.parameters
    name = params.get("name") or params.get("template", "workflow")
    source = params.get("input_file")
    return f"{name}:{os.path.basename(source)}" if source else str(name)


@task(name="p3s-node", task_run_name="{node_id}", cache_policy=NO_CACHE, persist_result=False)
def run_node(node_id: str, node: NodeJob, workflow_run_id: str) -> State[Any]:
    """Run one node's job: noop nodes complete at once, others run their vetted payload."""
    if node.noop:
        return Completed(message="noop")
    settings = get_settings()
    logger = get_run_logger()
    job = node.job
    for output in node.outputs:  # the folders of the files it writes
        Path(map_prefix(output, settings.path_map)).parent.mkdir(parents=True, exist_ok=True)
    try:
        command = resolve_command(
            anchor_payload(job.payload, settings.payload_roots),
            job.env,
            roots=settings.payload_roots,
            prefix_map=settings.path_map,
            trusted=node.trusted,
        )
    except PayloadRefused as exc:
        logger.error("node %r refused, nothing was run: %s", node_id, exc)
        return Failed(name=REFUSED_STATE, message=f"refused: {exc}")
    task_run_id = str(get_run_context().task_run.id)
    env = {**job_environment(job, task_run_id, settings.path_map)}
    env["P3S_WORKFLOW_UUID"] = workflow_run_id
    logger.info("node %r (%s, priority %s): %s", node_id, job.jobtype, job.priority, command.argv)
    outcome = execute_payload(
        command,
        env,
        timeout_s=job.timeout,
        log_dir=settings.job_logs / workflow_run_id / node_id,
        logger=logger,
        kill_grace_s=settings.kill_grace_seconds,
        stop_settle_s=settings.stop_settle_seconds,
    )
    state = final_state(job, outcome)
    if state.is_completed():
        missing = [p for p in node.outputs if not Path(map_prefix(p, settings.path_map)).exists()]
        if missing:
            logger.warning("node %r completed without writing %s", node_id, ", ".join(missing))
    return state


@task(name="p3s-node-skipped", task_run_name="{node_id}", cache_policy=NO_CACHE)
def skip_node(node_id: str, reason: str) -> State[Any]:
    """A node that will not run because a parent did not complete."""
    return Cancelled(name=SKIPPED_STATE, message=f"Skipped: {reason}")


def _why(state: State[Any] | None) -> str:
    if state is None:
        return "no state"
    return f"{state.name}: {state.message}" if state.message else str(state.name)


def run_nodes(workflow: Workflow, workflow_run_id: str) -> dict[str, State[Any]]:
    """Run every node in dependency order; returns each node's final state."""
    by_id = {n.node: n for n in workflow.nodes}
    rank = {n.node: i for i, n in enumerate(workflow.nodes)}  # parents first, priority first
    graph = workflow.graph()
    waiting = {n.node: set(n.parents) for n in workflow.nodes}
    futures: dict[str, PrefectFuture[Any]] = {}
    states: dict[str, State[Any]] = {}
    blocked: dict[str, str] = {}  # node -> why it will not run
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()

    def submit(node_ids: Iterable[str]) -> None:
        for node_id in sorted(node_ids, key=rank.__getitem__):
            node = by_id[node_id]
            with tags(f"jobtype:{node.job.jobtype}", f"priority:{node.job.priority}"):
                future = run_node.submit(
                    node_id, node, workflow_run_id, wait_for=[futures[p] for p in node.parents]
                )
            futures[node_id] = future
            future.add_done_callback(lambda _, n=node_id: finished.put(n))

    submit(n for n, parents in waiting.items() if not parents)
    running = len(futures)
    while running:
        node_id = finished.get()
        running -= 1
        future = futures[node_id]
        future.wait()
        state = future.state
        states[node_id] = state
        if state.is_completed():
            ready = []
            for child in graph.successors(node_id):
                waiting[child].discard(node_id)
                if not waiting[child] and child not in blocked:
                    ready.append(child)
            submit(ready)
            running += len(ready)
        else:
            for descendant in nx.descendants(graph, node_id):
                blocked.setdefault(descendant, f"parent {node_id} failed ({_why(state)})")
    for node_id in sorted(blocked, key=rank.__getitem__):
        states[node_id] = skip_node(node_id, blocked[node_id], return_state=True)
    return states


def summarize(workflow: Workflow, states: dict[str, State[Any]]) -> State[Any]:
    """The workflow's final state: which nodes failed, which were skipped."""
    failed = [n.node for n in workflow.nodes if not states[n.node].is_completed()]
    failed = [n for n in failed if states[n].name != SKIPPED_STATE]
    skipped = [n.node for n in workflow.nodes if states[n.node].name == SKIPPED_STATE]
    total = len(workflow.nodes)
    if not failed:
        return Completed(message=f"all {total} nodes completed")
    reasons = "; ".join(f"node {n} failed ({_why(states[n])})" for n in failed)
    tail = f"; skipped: {', '.join(skipped)}" if skipped else ""
    done = total - len(failed) - len(skipped)
    return Failed(message=f"{reasons}{tail}; {done} of {total} nodes completed")


def _node_table(workflow: Workflow, states: dict[str, State[Any]]) -> list[dict[str, Any]]:
    return [
        {
            "node": n.node,
            "jobtype": n.job.jobtype,
            "priority": n.job.priority,
            "state": states[n.node].name,
            "message": states[n.node].message or "",
        }
        for n in workflow.nodes
    ]


@flow(
    name="p3s-workflow",
    flow_run_name=_run_name,
    persist_result=False,
    task_runner=task_runner(),
    validate_parameters=True,
)
def p3s_workflow(
    template: str,
    fileinfo: str | dict[str, dict[str, str]] | None = None,
    jobinfo: dict[str, dict[str, Any]] | None = None,
    input_file: str | None = None,
    name: str | None = None,
) -> State[Any]:
    """Run a registered workflow template.

    Args:
        template: the registered template's name (``p3s workflow list``).
        fileinfo: ``sticky``, ``inherit:NAME`` or ``{"source:target": {"name", "dirpath"}}``.
        jobinfo: ``{"node": {"payload", "env", "timelimit", "priority"}}`` overrides.
        input_file: the file the workflow starts from (the edges leaving its root nodes).
        name: a name for this workflow run (default: the template's).
    """
    logger = get_run_logger()
    run = get_run_context().flow_run
    run_id = str(run.id)
    settings = get_settings()
    wanted = {"p3s-workflow", f"template:{template}"}
    if not wanted <= set(run.tags):
        # Started with `prefect deployment run`: the tags `p3s workflow submit` gives.
        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, tags=sorted({*run.tags, *wanted}))
    try:
        workflow = instantiate(
            load_template(template),
            fileinfo=fileinfo,
            jobinfo=jobinfo,
            input_file=input_file,
            name=name,
        )
    except (LookupError, TemplateError, WorkflowError) as exc:
        logger.error("workflow %r refused, nothing was run:\n%s", template, exc)
        return Failed(name=REFUSED_STATE, message=f"refused: {exc}")
    missing = [
        p for p in workflow.input_files if not Path(map_prefix(p, settings.path_map)).exists()
    ]
    if missing:
        message = f"input file(s) missing, nothing was run: {', '.join(missing)}"
        logger.error(message)
        return Failed(message=message)
    logger.info(
        "workflow %r from template %r: %d nodes, %d edges",
        workflow.name,
        workflow.template,
        len(workflow.nodes),
        len(workflow.edges),
    )
    states = run_nodes(workflow, run_id)
    create_table_artifact(
        _node_table(workflow, states),
        key=None,
        description=f"p3s workflow {workflow.name} (template {workflow.template})",
    )
    if len(workflow.nodes) <= MAX_DRAWN_NODES:
        try:
            publish_drawing(workflow, states, run_id)
        except Exception as exc:  # a drawing never changes the workflow's outcome
            logger.warning("the workflow graph could not be drawn: %s", exc)
    return summarize(workflow, states)


def publish_drawing(workflow: Workflow, states: dict[str, State[Any]], run_id: str) -> Path:
    """Draw the run's graph coloured by state: a PNG under the home (for the content pages),
    embedded in a markdown artifact of the run."""
    import base64

    from prefect.artifacts import create_markdown_artifact

    from p3s.workflows.client import NodeView, draw_workflow, graph_png_path

    views = [
        NodeView(
            node=n.node,
            jobtype=n.job.jobtype,
            priority=n.job.priority,
            state=states[n.node].name,
            state_type=states[n.node].type.value,
            message=states[n.node].message or "",
        )
        for n in workflow.nodes
    ]
    out = draw_workflow(
        workflow.graph(), views, graph_png_path(get_settings(), run_id), title=workflow.name
    )
    encoded = base64.b64encode(out.read_bytes()).decode()
    create_markdown_artifact(
        f"![workflow {workflow.name}](data:image/png;base64,{encoded})\n\n`{out}`",
        description=f"graph of workflow {workflow.name}, coloured by node state",
    )
    return out
