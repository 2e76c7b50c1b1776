"""``p3s demo``: a simulated run dropped into the inbox, through every DQM flow by triggers."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from p3s.system.settings import get_settings

console = Console(soft_wrap=True)


def demo(
    run: Annotated[int, typer.Option(min=0, help="Run number of the simulated file.")] = 1,
    subrun: Annotated[
        int | None,
        typer.Option(min=1, help="Subrun (default: the first of the run not delivered before)."),
    ] = None,
    events: Annotated[int, typer.Option(min=1, help="Events in the simulated file.")] = 3,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 1,
    wait: Annotated[bool, typer.Option(help="Wait for the DQM flow runs and show them.")] = True,
    timeout: Annotated[float, typer.Option(help="Most seconds to wait for the runs.")] = 1800,
) -> None:
    """Drop a simulated raw file into the inbox; the inbox watcher claims it and event
    triggers start the four DQM flows; show their states and product folders."""
    from p3s.files.lifecycle import Layout
    from p3s.payloads.paths import products_url
    from p3s.stack.demo import drop_into_inbox, wait_for_dqm_runs, wait_until_settled
    from p3s.system.datatypes import classify

    settings = get_settings()
    layout = Layout.of(settings)
    layout.ensure()
    with console.status("simulating a run…"):
        name = drop_into_inbox(settings, run, events, seed, subrun)
    console.print(f"[green]✓[/green] dropped {layout.inbox.child(name)}")
    identity = classify(name, settings.inbox.datatypes)
    assert identity is not None, "the simulator writes np04-raw names"
    feeds = next(d.feeds for d in settings.inbox.datatypes if d.name == identity.datatype)
    if not wait:
        return
    with console.status(
        "waiting for the inbox watcher (p3s up started it) and the DQM flow runs its event "
        "triggers (the Prefect UI shows them live)…"
    ):
        runs = asyncio.run(wait_for_dqm_runs(name, feeds, timeout_s=timeout))
    table = Table("payload", "state")
    table.add_column("flow run id", no_wrap=True)
    products = products_url(settings.outbox, identity.run, identity.subrun, "<payload>")
    for payload, flow_run in runs.items():
        state = flow_run.state.name if flow_run.state else "?"
        table.add_row(payload, state, str(flow_run.id))
    console.print(table)
    console.print(f"DQM products: {products}/")
    try:
        where = wait_until_settled(settings, name, timeout_s=min(timeout, 300))
        console.print(f"[green]✓[/green] {name} is in {where}/ ({layout.area(where).url})")
    except TimeoutError as exc:
        console.print(f"[yellow]{exc}[/yellow]")
    if any(r.state is None or r.state.name != "Completed" for r in runs.values()):
        raise typer.Exit(1)
