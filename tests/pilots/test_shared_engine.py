"""Local pilots with one shared engine process each (``P3S_PILOTS__ENGINE=shared``).

The behaviour tests of test_local_pilots.py run here again, unchanged, on pilots whose p3s jobs
run as threads of one engine process per pilot: warm reuse, priorities, jobtype limits,
cancellation, a killed pilot, a killed pilot worker, a run whose execution ends before it
starts. Then what the shared engine is for: many waiting runs in one process, each costing a
few MiB of private memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import Stack, wait_for_runs
from tests.pilots.conftest import Pilots, run, start_pilots, stop_pilots, wait_for
from tests.pilots.test_local_pilots import (  # noqa: F401 - collected here, on shared pilots
    job,
    records,
    submit,
    test_a_killed_pilot_is_lost_and_its_run_completes_elsewhere,
    test_a_killed_pilot_worker_leaves_no_run_behind,
    test_a_run_whose_child_ends_before_it_starts_is_put_back_then_crashed,
    test_cancelling_stops_the_payload_on_its_pilot,
    test_higher_priority_runs_first,
    test_jobtype_limit_keeps_runs_of_a_type_apart,
    test_runs_execute_in_turn_on_a_warm_pilot,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
#: Waiting runs at once in the memory test, and the most private memory each may add.
WAITING = 24
MAX_MIB_PER_WAITING_RUN = 10.0


@pytest.fixture(scope="module")
def local_pilots(stack: Stack) -> Iterator[Pilots]:
    pilots = start_pilots(
        stack,
        "local",
        P3S_PILOTS__QUERY_SECONDS="30",
        P3S_PILOTS__ENGINE="shared",
        P3S_PILOTS__SLOTS=str(WAITING),
    )
    try:
        yield pilots
    finally:
        stop_pilots(pilots)


def _uss_mib(proc: psutil.Process) -> float:
    return proc.memory_full_info().uss / 2**20


def test_waiting_jobs_share_one_engine_process_at_a_few_mib_each(
    local_pilots: Pilots, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    # A first job brings the engine up (the imports it touches once, for all runs).
    (first,) = run(submit(local_pilots, [job("warm-engine", log)]))
    run(wait_for_runs([first.id], 120))
    engine = psutil.Process(int(records(log)[0][5])).parent()
    pilot = records(log)[0][3]
    idle_mib = _uss_mib(engine)

    # All on the engine's pilot: the scaler may keep a second pilot, and each has an engine.
    waiting = run(submit(local_pilots, [job(f"wait-{i}", log, sleep=60) for i in range(WAITING)]))

    def all_started() -> list[list[str]] | None:
        found = [r for r in records(log) if r[1] == "start" and r[0].startswith("wait-")]
        return found if len(found) == WAITING else None

    started = wait_for(all_started, 240, f"{WAITING} payloads started")
    parents = {psutil.Process(int(r[5])).ppid() for r in started}
    on_engine = [r for r in started if r[3] == pilot]
    assert on_engine, started
    # One engine process per pilot runs every job of that pilot: no child per run.
    assert len(parents) <= 2, parents
    assert {psutil.Process(int(r[5])).ppid() for r in on_engine} == {engine.pid}
    busy_mib = _uss_mib(engine)
    per_run = (busy_mib - idle_mib) / len(on_engine)
    print(
        f"\nshared engine: {idle_mib:.1f} MiB idle, {busy_mib:.1f} MiB with {len(on_engine)} "
        f"runs waiting: {per_run:.2f} MiB per waiting run"
    )
    assert per_run <= MAX_MIB_PER_WAITING_RUN, (idle_mib, busy_mib, len(on_engine))

    done = run(wait_for_runs([r.id for r in waiting], 240))
    assert [r.state.type.value for r in done] == ["COMPLETED"] * WAITING
    # Each executed once.
    starts = sorted(r[0] for r in records(log) if r[1] == "start" and r[0].startswith("wait-"))
    assert starts == sorted(f"wait-{i}" for i in range(WAITING))
