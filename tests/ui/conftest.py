"""Fixtures of the content-app tests: one simulated file through every DQM payload (and a
corrupt file into quarantine) on the SQLite stack, the app started as ``p3s up`` would, a
password-protected Prefect server on the same database, and headless Chromium.

Screenshots go to ``$P3S_TEST_ARTIFACTS/ui`` (default ``test-artifacts/ui`` in the repository).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from p3s.files import storage
from p3s.files.lifecycle import Layout
from p3s.system.datatypes import DQM_DEPLOYMENTS
from p3s.system.settings import PROJECT_DIR, Settings
from tests.conftest import Stack, free_port

ARTIFACTS = Path(os.environ.get("P3S_TEST_ARTIFACTS", PROJECT_DIR / "test-artifacts")) / "ui"
RUN, SUBRUN = 7301, 2
CORRUPT_RUN = 7302
AUTH = "shifter:s3cret-np04"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def raw_name(run: int, subrun: int = 1) -> str:
    return f"np04_raw_run{run:06d}_{subrun:04d}_dl1.h5"


@dataclass
class Site:
    """The stack after the simulated run, with the content app and a protected API."""

    stack: Stack
    settings: Settings  # the app's settings (its own port)
    url: str
    good: str
    corrupt: str
    runs: dict[str, Any]  # payload -> FlowRun of the good file
    protected_api: str


def _simulate_good_file(settings: Settings) -> str:
    """A two-APA, one-fiber-each simulated raw file outside the inbox; returns its URL."""
    from p3s.payloads.rawformat import Geometry
    from p3s.payloads.simulate import simulate_file

    path = settings.data / "ui-test" / raw_name(RUN, SUBRUN)
    path.parent.mkdir(parents=True, exist_ok=True)
    simulate_file(
        path,
        run=RUN,
        subrun=SUBRUN,
        n_events=2,
        n_ticks=1500,
        seed=RUN,
        geometry=Geometry.reduced(n_apas=2, fibers_per_apa=1),
    )
    return storage.url_for(path)


async def _create_runs(file_url: str) -> dict[str, Any]:
    """One flow run of each DQM deployment on ``file_url`` (the stack's worker runs them)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = {}
        for payload, name in DQM_DEPLOYMENTS.items():
            deployment = await client.read_deployment_by_name(name)
            runs[payload] = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"file_url": file_url, "n_events": 2}
            )
        return runs


def _quarantine_a_corrupt_file(settings: Settings) -> str:
    """A claimed file that is not HDF5: each DQM flow runs on it in this process (as flow runs
    of the stack's server) and reports it corrupt; the life cycle then quarantines it."""
    from p3s.flows.dqm import DQM_FLOWS

    from p3s.files.lifecycle import settle

    name = raw_name(CORRUPT_RUN)
    layout = Layout.of(settings)
    claimed = layout.claimed
    claimed.ensure()
    # Marked announced first: the stack's watcher must not announce it again (that would
    # trigger four more DQM runs on the worker).
    layout.announced.ensure()
    layout.announced.write_text(name, "tests/ui\n")
    fs, path = claimed.fs()
    with fs.open(f"{path}/{name}", "wb") as handle:
        handle.write(b"not HDF5 at all " * 64)
    for flow in DQM_FLOWS.values():
        flow(file_url=claimed.child(name), return_state=True)
    assert settle(settings, name).action in ("quarantine", "already quarantine")
    return name


def _start_protected_server(stack: Stack, home: Path, port: int) -> subprocess.Popen[bytes]:
    """A second Prefect server (API only) on the stack's database, behind HTTP Basic auth."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.settings.prefect_database_url,
        "PREFECT_SERVER_API_AUTH_STRING": AUTH,
        "PREFECT_API_AUTH_STRING": AUTH,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_TIMEOUT": "30",
    }
    argv = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--no-services"]
    argv += ["--no-ui", "--host", "127.0.0.1", "--port", str(port)]
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)


def _wait_for_health(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the protected Prefect server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the protected Prefect server at {url} did not answer")


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Print a line on pytest's terminal, past its output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="session")
def site(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Site]:
    """The good file through the four DQM deployments (the stack's pilots or worker run them)
    while a corrupt one goes to quarantine in this process, the content app that ``p3s up``
    started, and a protected Prefect server on the same database."""
    from p3s.ui_extensions.service import start_content_app

    from p3s.system.settings import get_settings
    from tests.conftest import wait_for_runs
    from tests.dqm.conftest import drain_prefect_clients

    started = time.monotonic()
    home = tmp_path_factory.mktemp("protected-prefect")
    protected_port = free_port()
    server = _start_protected_server(stack, home, protected_port)  # starts while DQM runs
    settings = stack.settings
    get_settings.cache_clear()  # this process works for the stack now
    try:
        created = asyncio.run(_create_runs(_simulate_good_file(settings)))
        corrupt = _quarantine_a_corrupt_file(settings)
        start_content_app(settings, lambda _: None, wait_s=120)  # p3s up started it already
        finished = asyncio.run(wait_for_runs([r.id for r in created.values()], timeout_s=300))
        runs = dict(zip(created, finished, strict=True))
        protected_api = f"http://127.0.0.1:{protected_port}/api"
        _wait_for_health(protected_api, server)
        say(
            request,
            f"tests/ui site ready in {time.monotonic() - started:.0f} s "
            "(DQM runs, quarantine, content app, protected server)",
        )
        yield Site(
            stack,
            settings,
            settings.ui_url,
            raw_name(RUN, SUBRUN),
            corrupt,
            runs,
            protected_api,
        )
    finally:
        drain_prefect_clients()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Headless Debian Chromium through chromedriver, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="p3s-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    say(request, f"content-app screenshots: {ARTIFACTS}")
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, url: str, shot: str) -> None:
    """Load a page, wait for its images, keep a full-page screenshot under ARTIFACTS."""
    driver.get(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not driver.execute_script(
        "return document.readyState === 'complete' && "
        "Array.from(document.images).every(i => i.complete)"
    ):
        time.sleep(0.1)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(max(1000, height + 100), 8000))
    driver.save_screenshot(str(ARTIFACTS / f"{shot}.png"))


def images(driver: Any) -> list[dict[str, Any]]:
    """Every image of the page: its src and natural width (0: it did not load)."""
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
        "width: i.naturalWidth}))"
    )


def table_rows(driver: Any, css: str) -> list[list[str]]:
    """Text of each data row (not the header) of the table selected by ``css``."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"{css} tr")
    return [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in rows
        if row.find_elements(By.TAG_NAME, "td")
    ]
