"""``p3s inbox scan`` (one pass) and ``p3s inbox watch`` (a loop; ``p3s up`` starts it)."""

from __future__ import annotations

import logging
import signal
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from p3s.system.settings import get_settings

if TYPE_CHECKING:
    from p3s.files.inbox import ScanReport

console = Console(soft_wrap=True)
app = typer.Typer(help="The inbox: claim complete raw files and announce them to Prefect.")


def _print(report: ScanReport) -> None:
    for line in report.lines():
        console.print(line)


@app.command()
def scan() -> None:
    """One pass: claim the complete files of the inbox and emit p3s.file.arrived for each."""
    from p3s.files.inbox import scan_once
    from p3s.files.lifecycle import Layout

    logging.getLogger("p3s.files.inbox").setLevel(logging.ERROR)  # the report below says it all
    settings = get_settings()
    report = scan_once(settings)
    _print(report)
    console.print(
        f"inbox {Layout.of(settings).inbox.url}: {len(report.claimed)} claimed, "
        f"{len(report.announced)} announced, {len(report.waiting)} not complete yet"
    )
    if report.not_announced:
        raise typer.Exit(1)


@app.command()
def watch() -> None:
    """Scan the inbox every settings.inbox.poll_seconds until SIGTERM or Ctrl-C."""
    from p3s.dqm.catalog import catalog_outcomes
    from p3s.files.inbox import watch as watch_inbox
    from p3s.files.lifecycle import Layout

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    console.print(
        f"watching {Layout.of(settings).inbox.url} every {settings.inbox.poll_seconds} s; "
        f"events to {settings.api_url}"
    )
    outcomes = partial(catalog_outcomes, settings)
    # logs what it does
    watch_inbox(settings, lambda report: None, stop=lambda: stopping, extra_outcomes=outcomes)
    console.print("inbox watch stopped")
