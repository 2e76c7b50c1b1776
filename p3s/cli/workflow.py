"""``p3s workflow add|submit|show|list|export``: GraphML workflow templates and their runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p3s.system.settings import get_settings

app = typer.Typer(
    help="Register p3s GraphML workflow templates and run them (p3s-workflow/template).",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _refuse(exc: Exception, code: int = 2) -> typer.Exit:
    err.print(f"[red]refused:[/red] {escape(str(exc))}", markup=True, highlight=False)
    return typer.Exit(code)


@app.command()
def add(
    template: Annotated[Path, typer.Argument(help="A p3s GraphML template.")],
    name: Annotated[
        str | None, typer.Option(help="Name to register it under (default: the file's name).")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace a template of the same name.")] = False,
) -> None:
    """Validate a GraphML template and register it on the Prefect server."""
    from p3s.workflows.graphml import TemplateError
    from p3s.workflows.templates import register_template

    try:
        registered = register_template(template, name=name, overwrite=replace)
    except (TemplateError, FileExistsError) as exc:
        raise _refuse(exc) from None
    console.print(
        f"template {registered.name!r} registered: {len(registered.nodes)} nodes, "
        f"{len(registered.edges)} edges"
    )


@app.command()
def submit(
    name: Annotated[str, typer.Argument(help="A registered template (p3s workflow list).")],
    fileinfo: Annotated[
        str | None,
        typer.Option(
            help='sticky | inherit:NAME | JSON {"source:target": {"name", "dirpath"}} | FILE.json'
        ),
    ] = None,
    jobinfo: Annotated[
        str | None,
        typer.Option(help='JSON {"node": {"payload", "env", ...}} | FILE.json'),
    ] = None,
    input_file: Annotated[
        str | None, typer.Option("--input", help="The file the workflow starts from.")
    ] = None,
    run_name: Annotated[str | None, typer.Option("--name", help="Name of this run.")] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for the run; exit 1 unless it completed.")
    ] = False,
) -> None:
    """Instantiate a registered template and start it as a p3s-workflow flow run."""
    from p3s.workflows.client import prepare_submission, submit_workflow
    from p3s.workflows.graphml import TemplateError
    from p3s.workflows.templates import WorkflowError

    try:
        workflow, parameters = prepare_submission(
            name,
            fileinfo=fileinfo,
            jobinfo=jobinfo,
            input_file=input_file,
            name=run_name,
            settings=get_settings(),
        )
    except (LookupError, TemplateError, WorkflowError) as exc:
        raise _refuse(exc) from None
    run = asyncio.run(submit_workflow(workflow, parameters))
    console.print(f"workflow {workflow.name!r}: {len(workflow.nodes)} nodes, run {run.id}")
    if not wait:
        return
    from p3s.jobs.client import wait_for_jobs

    with console.status("waiting for the workflow…"):
        (done,) = asyncio.run(wait_for_jobs([run.id], timeout_s=24 * 3600))
    console.print(f"{done.state.name}: {done.state.message or ''}")
    if not done.state.is_completed():
        raise typer.Exit(1)


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Workflow run id (the flow run id).")],
    png: Annotated[
        Path | None, typer.Option(help="Where to draw the graph (default: under the home).")
    ] = None,
) -> None:
    """The state of every node of a workflow run, and its graph drawn as a PNG."""
    from prefect.exceptions import ObjectNotFound

    from p3s.workflows.client import draw_workflow, graph_png_path, node_views, read_run

    try:
        run, task_runs = asyncio.run(read_run(run_id))
    except (ValueError, ObjectNotFound) as exc:
        raise _refuse(exc or f"no workflow run {run_id}") from None
    workflow, views = node_views(run, task_runs)
    state = run.state
    console.print(
        f"workflow run {run.id} ({run.name}): {state.name if state else '?'}"
        f"{': ' + state.message if state and state.message else ''}"
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("node", "jobtype", "prio", "state", "message"):
        table.add_column(header, overflow="fold")
    for v in views:
        table.add_row(v.node, v.jobtype, str(v.priority), v.state, v.message)
    console.print(table)
    if workflow is None:
        err.print("the template of this run is no longer registered: no drawing")
        return
    out = png or graph_png_path(get_settings(), str(run.id))
    draw_workflow(workflow.graph(), views, out, title=f"{run.name} ({run.id})")
    console.print(f"graph: {out}")


@app.command("list")
def list_() -> None:
    """The registered workflow templates."""
    from p3s.workflows.templates import list_templates

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("name", "nodes", "edges", "registered", "source"):
        table.add_column(header, overflow="fold")
    templates = list_templates()
    for t in templates:
        table.add_row(t.name, str(t.nodes), str(t.edges), t.registered_at, t.source)
    console.print(table)
    console.print(f"{len(templates)} template(s)")


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="A registered template.")],
    out: Annotated[Path, typer.Argument(help="GraphML file to write.")],
) -> None:
    """Write a registered template back to GraphML (p3s's key layout)."""
    from p3s.workflows.templates import export_template

    try:
        text = export_template(name)
    except (LookupError, ValueError) as exc:
        raise _refuse(exc) from None
    out.write_text(text, encoding="utf-8")
    console.print(f"template {name!r} written to {out}")
