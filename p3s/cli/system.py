"""``p3s up``, ``p3s down``, ``p3s status``, ``p3s deploy``."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table

from p3s.stack import control
from p3s.system.settings import get_settings

console = Console()


def _report(line: str) -> None:
    console.print(f"[green]✓[/green] {line}")


def _fail(exc: Exception) -> None:
    console.print(f"[red]✗ {exc}[/red]")
    raise typer.Exit(1)


def up(
    production: bool = typer.Option(
        False,
        "--production",
        help="Prefect server on PostgreSQL and Redis (P3S_SERVER__PRODUCTION=true).",
    ),
) -> None:
    """Bring the system up on this machine: Prefect server, work pool, deployments, worker."""
    if production:
        # Through the environment, so that every process `up` starts sees the same profile.
        os.environ["P3S_SERVER__PRODUCTION"] = "true"
        get_settings.cache_clear()
    settings = get_settings()
    console.print(f"[bold]p3s up[/bold]  home {settings.home}")
    steps = control.UP_STEPS
    for folder in (settings.home, settings.run_dir, settings.job_logs, settings.data):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        for title, step in steps:
            with console.status(f"{title}…"):
                step(settings, _report)
    except Exception as exc:  # an operator wants the reason, not a traceback
        _fail(exc)
    base = settings.api_url.removesuffix("/api")
    console.print(f"\n[bold]Prefect UI:[/bold] {base}    stop with: p3s down")


def down() -> None:
    """Stop exactly the processes that `p3s up` started."""
    control.down(get_settings(), _report)


def status() -> None:
    """Show the processes that `p3s up` started and whether the API answers."""
    settings = get_settings()
    table = Table("service", "pid", "log")
    for row in control.status(settings):
        table.add_row(row.name, str(row.pid) if row.pid else "[red]not running[/red]", str(row.log))
    console.print(table)
    healthy = control.api_healthy(settings.api_url)
    console.print(
        f"Prefect API {settings.api_url}: "
        + ("[green]OK[/green]" if healthy else "[red]not answering[/red]")
    )
    if not healthy:
        raise typer.Exit(1)


def deploy() -> None:
    """Create the work pool and apply prefect.yaml's deployments to a running server."""
    settings = get_settings()
    try:
        control.setup_work_pool(settings, _report)
        control.deploy(settings, _report)
    except Exception as exc:
        _fail(exc)


def register(app: typer.Typer) -> None:
    for command in (up, down, status, deploy):
        app.command()(command)
