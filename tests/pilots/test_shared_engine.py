"""The pilots' shared engine (``P3S_PILOTS__ENGINE=shared``, the default): what it is for.

A pilot runs its p3s jobs as threads of one engine process, so many runs waiting on their
payloads cost a few MiB of private memory each, not a process each. The local-pilot behaviour
tests (test_local_pilots.py) run on this engine in the default suite, and again on a forked
child per run in test_fork_engine.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import Stack, wait_for_runs
from tests.pilots.conftest import Pilots, run, start_pilots, stop_pilots, wait_for
from tests.pilots.test_local_pilots import job, records, submit

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
#: Waiting runs at once in the memory test, and the most private memory each may add.
WAITING = 24
MAX_MIB_PER_WAITING_RUN = 10.0


@pytest.fixture
def roomy_pilot(stack: Stack) -> Iterator[Pilots]:
    """One shared-engine pilot with room for ``WAITING`` runs at once, in a pool of its own."""
    pilots = start_pilots(
        stack,
        "local",
        P3S_PILOTS__POOL_NAME="pilots-shared-roomy",
        P3S_PILOTS__ENGINE="shared",
        P3S_PILOTS__SLOTS=str(WAITING),
        P3S_PILOTS__MAX_PILOTS="1",
    )
    try:
        yield pilots
    finally:
        stop_pilots(pilots)


def _uss_mib(proc: psutil.Process) -> float:
    return proc.memory_full_info().uss / 2**20


def test_waiting_jobs_share_one_engine_process_at_a_few_mib_each(
    roomy_pilot: Pilots, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    # A first job brings the engine up (the imports it touches once, for all runs).
    (first,) = run(submit(roomy_pilot, [job("warm-engine", log)]))
    run(wait_for_runs([first.id], 120))
    # The engine: the one process the pilot's fork server has forked (its payload is gone).
    from p3s.stack import control

    worker = control.pilot_worker_process(roomy_pilot.settings).process()
    assert worker is not None
    tree = worker.children(recursive=True)
    servers = [p for p in tree if "multiprocessing.forkserver" in " ".join(p.cmdline())]
    (engine,) = [child for server in servers for child in server.children()]
    idle_mib = _uss_mib(engine)

    waiting = run(submit(roomy_pilot, [job(f"wait-{i}", log, sleep=60) for i in range(WAITING)]))

    def all_started() -> list[list[str]] | None:
        found = [r for r in records(log) if r[1] == "start" and r[0].startswith("wait-")]
        return found if len(found) == WAITING else None

    started = wait_for(all_started, 240, f"{WAITING} payloads started")
    # One engine process runs every job of the pilot: no process per run but the payload's.
    assert {psutil.Process(int(r[5])).ppid() for r in started} == {engine.pid}
    busy_mib = _uss_mib(engine)
    per_run = (busy_mib - idle_mib) / WAITING
    print(
        f"\nshared engine: {idle_mib:.1f} MiB idle, {busy_mib:.1f} MiB with {WAITING} runs "
        f"waiting: {per_run:.2f} MiB per waiting run"
    )
    assert per_run <= MAX_MIB_PER_WAITING_RUN, (idle_mib, busy_mib)

    done = run(wait_for_runs([r.id for r in waiting], 240))
    assert [r.state.type.value for r in done] == ["COMPLETED"] * WAITING
    starts = sorted(r[0] for r in records(log) if r[1] == "start" and r[0].startswith("wait-"))
    assert starts == sorted(f"wait-{i}" for i in range(WAITING))  # each executed once
