"""``p3s demo``: simulate a run and send it through every DQM payload as p3s jobs."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from p3s.settings import get_settings

console = Console(soft_wrap=True)


def demo(
    run: Annotated[int, typer.Option(min=0, help="Run number of the simulated file.")] = 1,
    events: Annotated[int, typer.Option(min=1, help="Events in the simulated file.")] = 3,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 1,
    wait: Annotated[bool, typer.Option(help="Wait for the jobs and show their results.")] = True,
) -> None:
    """Simulate a raw file and run every DQM payload on it as p3s jobs on the work pool."""
    from p3s.demo import dqm_jobs, simulate_run
    from p3s.job_client import submit_jobs, wait_for_jobs
    from p3s.states import p3s_state

    settings = get_settings()
    with console.status("simulating a run…"):
        raw = simulate_run(settings, run, events, seed)
    console.print(f"[green]✓[/green] simulated {raw}")
    outbox = settings.data / "outbox"
    jobs = dqm_jobs(raw, outbox, events)
    runs = asyncio.run(submit_jobs(jobs))
    console.print(f"[green]✓[/green] submitted {len(runs)} DQM jobs")
    if not wait:
        return
    with console.status("waiting for the DQM jobs (the Prefect UI shows them live)…"):
        finished = asyncio.run(wait_for_jobs([r.id for r in runs], timeout_s=1800))
    table = Table("payload", "p3s state")
    table.add_column("job id (p3s job show ID)", no_wrap=True)
    for done in finished:
        payload = done.name.split(":")[1]
        table.add_row(payload, p3s_state(done.state), str(done.id))
    console.print(table)
    console.print(f"DQM products: {outbox}/run{run:06d}/0001/")
    if any(p3s_state(done.state) != "finished" for done in finished):
        raise typer.Exit(1)
