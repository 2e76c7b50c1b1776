"""The fault suite's system and its report.

``fault_system`` is a p3s system of its own, brought up by the code of ``p3s up`` under a
temporary home and a free port, on a fresh PostgreSQL database (one fault restarts the
database), served by 2 to 4 local pilots, with its inbox watcher. The faults break it on
purpose, one after the other; each leaves a :class:`FaultRecord` that the session writes to
``$P3S_TEST_ARTIFACTS/faults-report.md`` (default ``test-artifacts/``) and summarises at the
end of the terminal output.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p3s.system.prefect_env import client_environment
from p3s.system.settings import PACKAGED_PAYLOADS, PROJECT_DIR, Settings
from tests.conftest import SCRIPTS, _pg, free_port
from tests.faults.accounting import FaultRecord
from tests.xrootd_server import xrootd_server  # noqa: F401 - a fixture, used by name

HERE = Path(__file__).resolve().parent
FAULT_PAYLOADS = HERE / "payloads"
ARTIFACTS = Path(os.environ.get("P3S_TEST_ARTIFACTS", PROJECT_DIR / "test-artifacts"))
REPORT_PATH = ARTIFACTS / "faults-report.md"
RECORDS: list[FaultRecord] = []
_STARTED = time.time()


def _noop(_: str) -> None:
    pass


@dataclass
class FaultSystem:
    settings: Settings
    env: dict[str, str]
    database: str

    @property
    def api_url(self) -> str:
        return self.settings.api_url


@pytest.fixture(scope="session")
def fault_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultSystem]:
    """A whole p3s system on PostgreSQL with pilots and its inbox watcher."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from p3s.stack import control

    home = tmp_path_factory.mktemp("p3s-faults")
    dbname = f"p3s_faults_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(f'CREATE DATABASE "{dbname}"'))
    env = {
        "P3S_HOME": str(home),
        "P3S_SERVER__PORT": str(free_port()),
        "P3S_SERVER__DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}",
        "P3S_PAYLOAD_ROOTS": os.pathsep.join(
            [str(PACKAGED_PAYLOADS), str(SCRIPTS), str(FAULT_PAYLOADS), "/usr/bin", "/bin"]
        ),
        "P3S_KILL_GRACE_SECONDS": "1",
        "P3S_POOL__CONCURRENCY": "4",
        "P3S_PILOTS__MIN_PILOTS": "2",
        "P3S_PILOTS__MAX_PILOTS": "4",
        "P3S_PILOTS__IDLE_SECONDS": "120",
        # A storage server restarted mid-transfer is ridden out by retries (1+2+4+8 s).
        "P3S_STORAGE__ATTEMPTS": "5",
    }
    saved = dict(os.environ)
    os.environ.update(env)
    settings = Settings()
    env.update(client_environment(settings))
    os.environ.update(env)
    try:
        control.up(settings, _noop)
        with temporary_settings(updates={PREFECT_API_URL: settings.api_url}):
            yield FaultSystem(settings=settings, env=env, database=dbname)
    finally:
        control.down(settings, _noop)
        os.environ.clear()
        os.environ.update(saved)
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Iterator[FaultRecord]:
    """The record of this test's fault; it reaches the report whatever the test's outcome."""
    doc = (request.function.__doc__ or request.node.name).strip().splitlines()[0]
    record = FaultRecord(name=doc)
    RECORDS.append(record)
    yield record
    report = request.node.stash.get(_CALL, None)
    if report is not None and report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message.splitlines()[0][:200] if crash else "see the test's output"
        record.outcome = f"FAILED: {message}"
    elif record.outcome == "not finished":
        record.outcome = "FAILED: the test did not finish"


def _write_report() -> None:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# p3s fault suite report",
        "",
        f"Run at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(_STARTED))} on "
        f"{platform.node()} ({os.cpu_count()} cores, load average {load} at the end), "
        f"{time.time() - _STARTED:.0f} s in all.",
        "",
        "A job is accounted for when it Completed after exactly one finished execution of its "
        "payload, or ended Failed/Crashed/Cancelled with a message an operator can read; "
        "lost means not in a final state at the end.",
        "",
    ]
    lines += ["| fault | outcome |", "|---|---|"]
    lines += [f"| {r.name} | {r.outcome} |" for r in RECORDS]
    lines.append("")
    lines += [r.markdown() for r in RECORDS]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text("\n".join(lines))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RECORDS:
        return
    _write_report()
    terminalreporter.section("fault suite")
    for record in RECORDS:
        terminalreporter.write_line(record.summary())
    terminalreporter.write_line(f"fault report: {REPORT_PATH}")


_CALL = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.when == "call":
        item.stash[_CALL] = report
    return report
