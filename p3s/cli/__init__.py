"""The ``p3s`` command line: system up/down, p3s jobs, simulation.

Prefect is imported inside the commands, after the environment points its client at this
home's server; a client without ``PREFECT_API_URL`` would start an ephemeral server instead.
"""

from __future__ import annotations

import typer
from rich.console import Console

from p3s.system.prefect_env import apply_client_environment
from p3s.system.settings import get_settings

from . import alarms as alarms_commands
from . import dqm as dqm_commands
from . import inbox as inbox_commands
from . import job as job_commands
from . import pilots as pilots_commands
from . import system as system_commands
from . import ui as ui_commands
from . import workflow as workflow_commands
from .demo import demo
from .simulate import register as register_simulate

console = Console()
app = typer.Typer(
    name="p3s",
    help="Prompt processing and DQM for protoDUNE-SP on Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _configure() -> None:
    apply_client_environment(get_settings())


system_commands.register(app)
app.command()(demo)
app.add_typer(job_commands.app, name="job")
app.add_typer(pilots_commands.app, name="pilots")
app.add_typer(dqm_commands.app, name="dqm")
app.add_typer(inbox_commands.app, name="inbox")
app.add_typer(workflow_commands.app, name="workflow")
app.add_typer(alarms_commands.app, name="alarms")
app.add_typer(ui_commands.app, name="ui")

register_simulate(app)


def main() -> None:
    app()
