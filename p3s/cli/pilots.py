"""``p3s pilots``: pilot counts (total, idle, running, stopped, lost) and the batch submit
description of the pilot pool."""

from __future__ import annotations

import asyncio
import json
import time

import typer
from rich.console import Console
from rich.table import Table

from p3s.system.settings import get_settings

console = Console()
app = typer.Typer(
    help="Pilots: warm Dask workers on the batch system.", invoke_without_command=True
)


@app.callback()
def show(
    ctx: typer.Context,
    pool: str = typer.Option(None, help="Pilot work pool; default: the settings' pool."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Show the pilot counts the pool's worker last published."""
    if ctx.invoked_subcommand is not None:
        return
    from p3s.pilots.status import read_status, read_status_from_api

    settings = get_settings()
    name = pool or settings.pilots.pool_name
    counts = read_status(settings, name)
    if counts is None:
        try:
            counts = asyncio.run(read_status_from_api(name))
        except Exception as exc:  # no server: say so rather than a traceback
            console.print(f"[red]no pilot counts for pool {name!r}: {exc}[/red]")
            raise typer.Exit(1) from None
    if counts is None:
        console.print(f"[yellow]no pilot counts for pool {name!r}: is its worker running?[/yellow]")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(counts.as_dict(), indent=1))
        return
    table = Table(title=f"pilots of {counts.pool} ({counts.cluster})")
    for column in ("total", "starting", "idle", "running", "stopped", "lost", "backlog"):
        table.add_column(column, justify="right")
    table.add_row(
        *(
            str(getattr(counts, c))
            for c in ("total", "starting", "idle", "running", "stopped", "lost", "backlog")
        )
    )
    console.print(table)
    age = time.time() - counts.updated
    console.print(f"{counts.runs_in_flight} run(s) in flight; updated {age:.0f} s ago")


@app.command()
def script(
    block: str = typer.Option(None, help="A saved PilotPool block; default: the settings."),
) -> None:
    """Print the batch submit description (Slurm script, HTCondor submit file) of one pilot."""
    from p3s.pilots.cluster import job_script, load_pilot_pool

    settings = get_settings()
    if block:
        settings = settings.model_copy(
            update={"pilots": settings.pilots.model_copy(update={"block": block})}
        )
    pool = asyncio.run(load_pilot_pool(settings))
    try:
        print(job_script(pool))
    except ValueError as exc:
        console.print(f"[yellow]{exc}[/yellow]")
        raise typer.Exit(1) from None
