"""``p3s alarms``: apply the alarm automations of ``automations/``, list them, switch data
taking, send a test notification."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from p3s.system.settings import get_settings

console = Console()
app = typer.Typer(help="Alarms: Prefect automations kept in automations/.", no_args_is_help=True)

_FOLDER = typer.Option(None, help="Folder of alarm documents; default: automations/.")


def _print_changes(changes: list) -> None:
    for change in changes:
        colour = {"created": "green", "updated": "yellow", "deleted": "red"}.get(change.action)
        words = f"[{colour}]{change.action}[/{colour}]" if colour else change.action
        console.print(f"{words:>10} {change.name} ({change.id})")


@app.command("apply")
def apply_command(
    prune: bool = typer.Option(
        False, help="Delete p3s alarms (tag p3s-alarm) that no document names any more."
    ),
    folder: Path = _FOLDER,
) -> None:
    """Create missing alarms, update changed ones (by name), report the unchanged ones."""
    from p3s.alarms.apply import apply

    settings = get_settings()
    if not (settings.alarms.webhook_url or settings.alarms.chat_url or settings.alarms.smtp_host):
        console.print(
            "[yellow]no alarm target configured (P3S_ALARMS__WEBHOOK_URL, "
            "P3S_ALARMS__CHAT_URL, P3S_ALARMS__SMTP_HOST): the alarms fire but notify "
            "nobody[/yellow]"
        )
    _print_changes(asyncio.run(apply(settings, prune=prune, folder=folder)))


@app.command("list")
def list_command() -> None:
    """The p3s alarms on the server: enabled, what they expect, how many actions."""
    from p3s.alarms.apply import owned_automations

    table = Table(title="p3s alarms")
    for column in ("name", "enabled", "expects", "actions", "id"):
        table.add_column(column)
    for automation in sorted(asyncio.run(owned_automations()), key=lambda a: a.name):
        trigger = automation.trigger
        expects = ", ".join(sorted(getattr(trigger, "expect", []) or [])) or trigger.type
        table.add_row(
            automation.name,
            "yes" if automation.enabled else "no",
            expects,
            str(len(automation.actions)),
            str(automation.id),
        )
    console.print(table)


@app.command("datataking")
def datataking_command(
    state: str = typer.Argument(..., help="on, off or status."),
    folder: Path = _FOLDER,
) -> None:
    """Switch data taking on or off (the no-file alarm watches only while it is on)."""
    from p3s.alarms.apply import datataking_on, set_datataking

    if state not in ("on", "off", "status"):
        console.print(f"[red]data taking is on, off or status, not {state!r}[/red]")
        raise typer.Exit(2)
    if state == "status":
        console.print("data taking is " + ("on" if asyncio.run(datataking_on()) else "off"))
        return
    _print_changes(asyncio.run(set_datataking(get_settings(), state == "on", folder=folder)))
    console.print(f"data taking is {state}")


@app.command("test")
def test_command() -> None:
    """Send a test notification straight to every configured target."""
    from p3s.alarms.apply import send_test

    sent = asyncio.run(send_test(get_settings()))
    if not sent:
        console.print("[yellow]no alarm target configured[/yellow]")
        raise typer.Exit(1)
    console.print("sent a test notification to: " + ", ".join(sent))
