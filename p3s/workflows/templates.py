"""Workflow templates: registration in a Prefect block, and instantiation into jobs as p3s did.

Instantiating a template makes every node a job (:class:`p3s.jobs.model.P3SJob`) and, for every
edge, sets ``env[datatag] = dirpath + name`` on both its source and its target job. File names come
from the ``fileinfo`` option:

``sticky`` (the default without ``--input``)
    the names written in the template.
``inherit:NAME`` (the default with ``--input FILE``: ``inherit:`` the file's name)
    ``{stem of NAME}_{stem of the template's name}{extension of the edge's data type}``, so
    that workflows on different inputs do not overwrite each other's files.
a JSON object ``{"source:target": {"name": ..., "dirpath": ...}}`` (or a ``.json`` file)
    per-edge names and folders over the template's.

``input_file`` sets the file of every edge leaving a root node (a node without parents: the
data the workflow starts from). ``jobinfo`` ``{"node": {"payload": ..., "env": {...},
"timelimit": ..., "priority": ...}}`` overrides a node's job; a node whose payload or
``P3S_EXECMODE`` is overridden is no longer trusted with a shell.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import BaseModel, Field

from p3s.jobs.model import P3SJob, check_job, field_label
from p3s.workflows.graphml import (
    EdgeSpec,
    Template,
    TemplateError,
    check_dirpath,
    check_file_name,
    file_path,
    parse_template,
    to_graphml,
    vet_payload,
)

#: The Prefect deployment that runs registered templates.
WORKFLOW_DEPLOYMENT = "p3s-workflow/template"
JOBINFO_FIELDS = {"payload", "env", "timelimit", "priority"}
#: jobinfo's names of job fields that it calls otherwise.
JOBINFO_NAMES = {("timeout",): "timelimit"}


class WorkflowError(ValueError):
    """Options that cannot instantiate a template; the message names the edge, node or field."""


class NodeJob(BaseModel):
    """One node of a workflow instance: its job, and where it sits in the graph."""

    node: str
    job: P3SJob
    parents: list[str] = Field(default_factory=list)
    inputs: list[str] = Field(default_factory=list, description="Files it reads (paths).")
    outputs: list[str] = Field(default_factory=list, description="Files it writes (paths).")
    trusted: bool = Field(True, description="Payload and exec mode are the template's own.")

    @property
    def noop(self) -> bool:
        return self.job.jobtype == "noop"


class Workflow(BaseModel):
    """A template instantiated into jobs, in an order that runs parents first."""

    name: str
    template: str
    nodes: list[NodeJob]
    edges: list[EdgeSpec]

    def graph(self) -> nx.DiGraph:
        graph = nx.DiGraph(name=self.name)
        for node in self.nodes:
            graph.add_node(node.node, jobtype=node.job.jobtype, priority=node.job.priority)
        for edge in self.edges:
            graph.add_edge(edge.source, edge.target, datatag=edge.datatag, path=edge.path)
        return graph

    def node(self, node_id: str) -> NodeJob:
        for node in self.nodes:
            if node.node == node_id:
                return node
        raise KeyError(node_id)

    @property
    def input_files(self) -> list[str]:
        """Files the workflow starts from: those on edges leaving root nodes."""
        roots = {n.node for n in self.nodes if not n.parents}
        return sorted({e.path for e in self.edges if e.source in roots})


def _load_json_option(value: str | Mapping[str, Any] | None, option: str) -> dict[str, Any]:
    """A JSON object given inline, as a ``.json`` file name, or already parsed."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    text = value.strip()
    if text.endswith(".json") and not text.startswith("{"):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkflowError(f"{option}: cannot read {value!r}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{option}: not valid JSON ({exc.msg}): {value!r}") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{option}: expected a JSON object, got {type(data).__name__}")
    return data


def _stem(name: str) -> str:
    base = os.path.basename(name.rstrip("/"))
    return base.split(".", 1)[0] if not base.startswith(".") else base


def edge_files(
    template: Template,
    *,
    fileinfo: str | Mapping[str, Any] | None,
    input_file: str | None,
    datatypes: Mapping[str, str],
) -> dict[str, tuple[str, str]]:
    """The ``(dirpath, name)`` of every edge (keyed ``source:target``) for these options."""
    files = {e.key: (e.dirpath, e.name) for e in template.edges}
    per_edge: dict[str, Any] = {}
    if fileinfo is None and input_file:
        fileinfo = f"inherit:{os.path.basename(input_file)}"
    if isinstance(fileinfo, str) and fileinfo.strip() in ("", "sticky"):
        pass
    elif isinstance(fileinfo, str) and fileinfo.strip().startswith("inherit:"):
        stem = _stem(fileinfo.strip().removeprefix("inherit:"))
        if not stem or check_file_name(stem):
            raise WorkflowError(f"fileinfo {fileinfo!r}: give a file name after 'inherit:'")
        for edge in template.edges:
            ext = datatypes.get(edge.datatype, "")
            files[edge.key] = (edge.dirpath, f"{stem}_{_stem(edge.name)}{ext}")
    elif fileinfo is not None:
        per_edge = _load_json_option(fileinfo, "fileinfo")
    if input_file:
        path = os.path.abspath(input_file)
        roots = {n.id for n in template.nodes} - {e.target for e in template.edges}
        for edge in template.edges:
            if edge.source in roots:
                files[edge.key] = (os.path.dirname(path) + "/", os.path.basename(path))
    for key, info in per_edge.items():
        if key not in files:
            known = ", ".join(sorted(files)) or "none"
            raise WorkflowError(f"fileinfo: {key!r} is not an edge 'source:target' ({known})")
        if not isinstance(info, dict) or not set(info) <= {"name", "dirpath"}:
            raise WorkflowError(
                f"fileinfo {key!r}: expected an object with 'name' and/or 'dirpath', got {info!r}"
            )
        dirpath, name = files[key]
        dirpath, name = str(info.get("dirpath", dirpath)), str(info.get("name", name))
        files[key] = (dirpath, name)
    for key, (dirpath, name) in files.items():
        problem = check_file_name(name) or check_dirpath(dirpath)
        if problem:
            raise WorkflowError(f"edge '{key.replace(':', ' -> ')}': {problem}")
    return files


def _node_overrides(template: Template, jobinfo: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    ids = {n.id for n in template.nodes}
    for node_id, info in jobinfo.items():
        if node_id not in ids:
            raise WorkflowError(
                f"jobinfo: {node_id!r} is not a node of {template.name!r} "
                f"({', '.join(sorted(ids))})"
            )
        if not isinstance(info, dict) or not set(info) <= JOBINFO_FIELDS:
            raise WorkflowError(
                f"jobinfo {node_id!r}: expected an object with {', '.join(sorted(JOBINFO_FIELDS))}"
                f", got {info!r}"
            )
        if "env" in info and not isinstance(info["env"], dict):
            raise WorkflowError(f"jobinfo {node_id!r} field 'env': expected a JSON object")
    return {k: dict(v) for k, v in jobinfo.items()}


def instantiate(
    template: Template,
    *,
    fileinfo: str | Mapping[str, Any] | None = None,
    jobinfo: str | Mapping[str, Any] | None = None,
    input_file: str | None = None,
    name: str | None = None,
    datatypes: Mapping[str, str] | None = None,
) -> Workflow:
    """Turn a template into jobs (see the module's doc for the options).

    Raises:
        WorkflowError: an option names an unknown edge or node, or gives a bad value.
    """
    if datatypes is None:
        from p3s.system.settings import get_settings

        datatypes = get_settings().workflow.datatypes
    files = edge_files(template, fileinfo=fileinfo, input_file=input_file, datatypes=datatypes)
    overrides = _node_overrides(template, _load_json_option(jobinfo, "jobinfo"))
    edges = [
        e.model_copy(update={"dirpath": files[e.key][0], "name": files[e.key][1]})
        for e in template.edges
    ]
    graph = template.graph()
    order = {n.id: i for i, n in enumerate(template.nodes)}
    specs = {n.id: n for n in template.nodes}
    sorted_ids = nx.lexicographical_topological_sort(
        graph, key=lambda n: (-specs[n].priority, order[n])
    )
    nodes: list[NodeJob] = []
    for node_id in sorted_ids:
        spec = specs[node_id]
        env = dict(spec.env)
        for edge in edges:
            if node_id in (edge.source, edge.target):
                env[edge.datatag] = edge.path
        override = overrides.get(node_id, {})
        env.update({k: str(v) for k, v in override.get("env", {}).items()})
        payload = str(override.get("payload", spec.payload))
        trusted = payload == spec.payload and env.get("P3S_EXECMODE") == spec.env.get(
            "P3S_EXECMODE"
        )
        job, faults = check_job(
            {
                "name": node_id,
                "timeout": override.get("timelimit", spec.timelimit),
                "jobtype": spec.jobtype,
                "payload": payload,
                "priority": override.get("priority", spec.priority),
                "env": env,
            }
        )
        if job is None:  # the template was valid: the fault is in jobinfo
            raise WorkflowError(
                "\n".join(
                    f"jobinfo {node_id!r} field '{JOBINFO_NAMES.get(loc[:1], field_label(loc))}'"
                    f": {message}"
                    for loc, message in faults
                )
            )
        nodes.append(
            NodeJob(
                node=node_id,
                job=job,
                parents=sorted(graph.predecessors(node_id), key=order.__getitem__),
                inputs=[e.path for e in edges if e.target == node_id],
                outputs=[e.path for e in edges if e.source == node_id],
                trusted=trusted,
            )
        )
    return Workflow(name=name or template.name, template=template.name, nodes=nodes, edges=edges)


def vet_workflow(
    workflow: Workflow, *, roots: list[Path], prefix_map: Mapping[str, str]
) -> list[str]:
    """Why nodes of a workflow may not run (one line each); empty if all may."""
    problems = []
    for node in workflow.nodes:
        if node.noop:
            continue
        refused = vet_payload(
            node.node,
            node.job.payload,
            node.job.env,
            roots=roots,
            prefix_map=prefix_map,
            trusted=node.trusted,
        )
        if refused:
            problems.append(f"node '{node.node}' attribute 'payload': {refused}")
    return problems


# -- the template store (Prefect blocks) --------------------------------------------------------


class TemplateSummary(BaseModel):
    name: str
    nodes: int
    edges: int
    source: str
    registered_at: str


def register_template(
    path: str | os.PathLike[str], *, name: str | None = None, overwrite: bool = False
) -> Template:
    """Validate a GraphML file and store it in a ``p3s-workflow-template`` block.

    Raises:
        TemplateError: the template is malformed (nothing is stored).
        FileExistsError: a template of that name exists and ``overwrite`` is False.
    """
    from p3s.blocks.workflow_template import WorkflowTemplate, block_document_name
    from p3s.workflows.graphml import read_template

    template = read_template(path, name=name)
    text = Path(path).read_text(encoding="utf-8")
    existing = _find_block(template.name)
    if existing is not None and existing.template_name != template.name:
        raise FileExistsError(
            f"template {template.name!r} would share its block with {existing.template_name!r}; "
            "choose another --name"
        )
    if existing is not None and not overwrite:
        raise FileExistsError(
            f"a template named {template.name!r} is already registered; use --replace"
        )
    WorkflowTemplate(
        template_name=template.name,
        graphml=text,
        source=str(Path(path).resolve()),
        registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
        nodes=len(template.nodes),
        edges=len(template.edges),
    ).save(block_document_name(template.name), overwrite=True)
    return template


def _find_block(name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    from p3s.blocks.workflow_template import WorkflowTemplate, block_document_name

    try:
        return WorkflowTemplate.load(block_document_name(name))
    except (ValueError, ObjectNotFound):
        return None


def load_template(name: str, *, check_payloads: bool = True) -> Template:
    """The registered template ``name``, validated again against this host's settings.

    Raises:
        LookupError: no template of that name is registered.
        TemplateError: it no longer passes validation here (payload roots differ, ...).
    """
    block = _find_block(name)
    if block is None or block.template_name != name:
        raise LookupError(
            f"no workflow template named {name!r} is registered (p3s workflow add FILE)"
        )
    return parse_template(
        block.graphml,
        name=name,
        source=f"template {name!r} ({block.source})",
        check_payloads=check_payloads,
    )


def list_templates() -> list[TemplateSummary]:
    """Every registered template, by name."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        documents = _read_documents(client)
    summaries = []
    for document in documents:
        data = document.data
        summaries.append(
            TemplateSummary(
                name=data.get("template_name", document.name),
                nodes=int(data.get("nodes", 0)),
                edges=int(data.get("edges", 0)),
                source=data.get("source", ""),
                registered_at=data.get("registered_at", ""),
            )
        )
    return sorted(summaries, key=lambda s: s.name)


def _read_documents(client: Any) -> list[Any]:
    from prefect.exceptions import ObjectNotFound

    from p3s.blocks.workflow_template import WorkflowTemplate

    try:
        return client.read_block_documents_by_type(WorkflowTemplate.get_block_type_slug())
    except ObjectNotFound:  # the block type is registered with the first template
        return []


def export_template(name: str) -> str:
    """A registered template as GraphML in p3s's key layout."""
    return to_graphml(load_template(name, check_payloads=False))


def task_runner() -> Any:
    """The task runner of workflow runs: the one place that chooses how nodes execute.

    Threads in the flow run's process now; a ``DaskTaskRunner`` on the pilots later.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    from p3s.system.settings import get_settings

    return ThreadPoolTaskRunner(max_workers=get_settings().workflow.max_parallel_nodes)


__all__ = [
    "WORKFLOW_DEPLOYMENT",
    "NodeJob",
    "TemplateError",
    "Workflow",
    "WorkflowError",
    "export_template",
    "file_path",
    "instantiate",
    "list_templates",
    "load_template",
    "register_template",
    "task_runner",
    "vet_workflow",
]
