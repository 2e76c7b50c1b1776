"""``p3s job submit|list|show|cancel``: p3s's job client on top of the Prefect API."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p3s.jobs.model import JobsRefused, expand_jobs, load_jobs
from p3s.system.settings import get_settings

app = typer.Typer(
    help="Submit and follow p3s jobs (flow runs of p3s-job/adhoc).", no_args_is_help=True
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _ui_link(run_id: str) -> str:
    return f"{get_settings().api_url.removesuffix('/api')}/runs/flow-run/{run_id}"


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="p3s job JSON: a list of job objects.")],
    filename: Annotated[
        str | None,
        typer.Option("--filename", "-f", help="Comma-separated input files: one job per file."),
    ] = None,
    replicas: Annotated[int, typer.Option("-N", min=1, help="Copies of each job.")] = 1,
    dunetpcver: Annotated[
        str | None, typer.Option("--dunetpcver", "-v", help="Override env DUNETPCVER.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the jobs; exit 1 unless all finished.")
    ] = False,
) -> None:
    """Submit the jobs of a p3s job file as Prefect flow runs."""
    from p3s.jobs.client import submit_jobs, wait_for_jobs
    from p3s.jobs.states import p3s_state

    settings = get_settings()
    names = [n.strip() for n in filename.split(",") if n.strip()] if filename else []
    try:
        # Every fault of the file at once (fields, env names, payloads outside the roots);
        # any fault refuses the whole file: nothing is submitted.
        jobs = load_jobs(file, roots=settings.payload_roots, prefix_map=settings.path_map)
        jobs = expand_jobs(jobs, filenames=names, replicas=replicas, dunetpcver=dunetpcver)
        runs = asyncio.run(submit_jobs(jobs))
    except JobsRefused as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    table = Table("name", "jobtype", "priority", "state")
    table.add_column("job id", no_wrap=True, min_width=36)
    for job, run in zip(jobs, runs, strict=True):
        table.add_row(job.name, job.jobtype, str(job.priority), "defined", str(run.id))
    console.print(table)
    console.print(f"{len(runs)} job(s) submitted")
    if not wait:
        return
    with console.status("waiting for the jobs…"):
        done = asyncio.run(wait_for_jobs([r.id for r in runs], timeout_s=24 * 3600))
    states = [p3s_state(r.state) for r in done]
    for run, state in zip(done, states, strict=True):
        console.print(f"{run.id}  {run.name}: {state}  {run.state.message or ''}")
    if any(state != "finished" for state in states):
        raise typer.Exit(1)


@app.command("list")
def list_(
    state: Annotated[
        str | None,
        typer.Option(
            help="p3s state: defined, dispatched, running, finished, failed, "
            "timelimit, pilotTO, cancelled."
        ),
    ] = None,
    jobtype: Annotated[str | None, typer.Option(help="Only jobs of this job type.")] = None,
    limit: Annotated[int, typer.Option(help="Most jobs shown, newest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, for scripts.")] = False,
) -> None:
    """List p3s jobs with their p3s and Prefect states."""
    from p3s.jobs.client import list_jobs

    try:
        views = asyncio.run(list_jobs(state, jobtype, limit))
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        for v in views:
            print(json.dumps(asdict(v)))
        return
    # Ids and states never wrap (they are copied and scanned); the name folds instead. A
    # narrow terminal gets the columns a shifter needs first; --json has everything.
    columns = ["job id", "p3s", "Prefect", "prio", "created", "jobtype", "name"]
    if console.width < 120:
        columns = ["job id", "p3s", "prio", "name"]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in columns:
        fold = header in ("jobtype", "name")
        table.add_column(header, no_wrap=not fold, overflow="fold" if fold else "ellipsis")
    for v in views:
        cells = {
            "job id": v.id,
            "p3s": v.p3s_state,
            "Prefect": v.prefect_state,
            "prio": str(v.priority),
            "created": v.created,
            "jobtype": v.jobtype,
            "name": v.name,
        }
        table.add_row(*(cells[c] for c in columns))
    console.print(table)
    console.print(
        f"{len(views)} job(s)" + (f" (at most {limit}: --limit)" if len(views) >= limit else "")
    )


@app.command()
def show(job_id: Annotated[str, typer.Argument(help="Job id (the flow run id).")]) -> None:
    """Show one job: states, errcode, message, logs and its link in the Prefect UI."""
    from prefect.exceptions import ObjectNotFound

    from p3s.jobs.client import show_job

    try:
        view, run = asyncio.run(show_job(job_id))
    except (ValueError, ObjectNotFound) as exc:
        err.print(f"[red]{exc or f'no job with id {job_id}'}[/red]")
        raise typer.Exit(2) from None
    job = run.parameters.get("job", {})
    table = Table(show_header=False)
    for key, value in [
        ("job id", view.id),
        ("name", view.name),
        ("jobtype", view.jobtype),
        ("priority", str(view.priority)),
        ("payload", str(job.get("payload", ""))),
        ("timeout", f"{job.get('timeout', '')} s"),
        ("p3s state", view.p3s_state),
        ("Prefect state", view.prefect_state),
        ("message", view.message),
        ("errcode", "" if view.errcode is None else str(view.errcode)),
        ("stdout", view.stdout or ""),
        ("stderr", view.stderr or ""),
        ("Prefect UI", _ui_link(view.id)),
    ]:
        table.add_row(key, value)
    console.print(table)


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="Job id (the flow run id).")]) -> None:
    """Cancel a job; a running payload is stopped by its worker."""
    from prefect.exceptions import ObjectNotFound

    from p3s.jobs.client import cancel_job

    try:
        state = asyncio.run(cancel_job(job_id))
    except (ValueError, RuntimeError, ObjectNotFound) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"job {job_id}: {state}")
