"""The content app as a service of ``p3s up`` (a managed process) or in the foreground."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from p3s.system.prefect_env import client_environment
from p3s.system.services import ManagedProcess
from p3s.system.settings import Settings

BIN = Path(sys.executable).parent
Report = Callable[[str], None]


def content_app_process(settings: Settings) -> ManagedProcess:
    return ManagedProcess("content-app", settings.run_dir)


def app_answers(settings: Settings, timeout_s: float = 5.0) -> bool:
    """Whether the app answers at its address (its style sheet needs no credentials)."""
    url = f"http://{settings.ui.host}:{settings.ui.port}/static/p3s.css"
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def start_content_app(settings: Settings, report: Report, wait_s: float = 60.0) -> None:
    """Start ``p3s ui serve`` unless it runs already; wait until it answers."""
    argv = [str(BIN / "p3s"), "ui", "serve"]
    env = {**os.environ, **client_environment(settings)}
    process, new = content_app_process(settings).start(argv, env, cwd=settings.home)
    deadline = time.monotonic() + wait_s
    while not app_answers(settings):
        if content_app_process(settings).process() is None:
            raise RuntimeError(f"the content app exited; see {content_app_process(settings).log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the content app did not answer within {wait_s:.0f} s")
        time.sleep(0.3)
    report(
        f"content app {'started' if new else 'already running'} (pid {process.pid}) "
        f"at {settings.ui_url}"
    )


def serve(settings: Settings) -> None:
    """Run the app in this process until interrupted (uvicorn)."""
    import uvicorn

    from .app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.ui.host,
        port=settings.ui.port,
        log_level="warning",
        access_log=False,
    )
