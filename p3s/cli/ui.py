"""``p3s ui``: the shifters' content app (pages, dashboard, JSON)."""

from __future__ import annotations

import typer

from p3s.system.settings import get_settings

app = typer.Typer(help="The shifters' content app.", no_args_is_help=True)


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default: settings.ui.host)."),
    port: int = typer.Option(None, help="Port (default: settings.ui.port)."),
) -> None:
    """Run the content app in the foreground (Ctrl-C stops it)."""
    from p3s.ui_extensions.service import serve as run

    settings = get_settings()
    if host:
        settings.ui.host = host
    if port:
        settings.ui.port = port
    typer.echo(f"content app at http://{settings.ui.host}:{settings.ui.port}")
    run(settings)


@app.command()
def start() -> None:
    """Start the content app in the background (as ``p3s up`` does)."""
    from p3s.ui_extensions.service import start_content_app

    start_content_app(get_settings(), typer.echo)


@app.command()
def url() -> None:
    """Print the URL of the content app."""
    typer.echo(get_settings().ui_url)
