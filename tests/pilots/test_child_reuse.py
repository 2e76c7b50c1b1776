"""Flow-run children reused for many runs of their pilot (``P3S_PILOTS__REUSE_RUNS``).

One pilot with one slot, so that its runs follow one another in its one child: the runs share
the child's pid (each run's log names it), up to the bound; a child cancelled, SIGTERMed or
left by a killed pilot is never reused, and the pilot's next run still completes. Beside it, a
pool with ``REUSE_RUNS=1`` forks a child per run, as before.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path

import psutil
import pytest

from tests.conftest import Stack, wait_for_runs
from tests.pilots.conftest import Pilots, cancel, run, start_pilots, stop_pilots, wait_for
from tests.pilots.test_local_pilots import alive, job, records, submit

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
#: Runs a child serves in the reusing pool: small, so that the bound is reached in a test.
REUSE = 3
CHILD = re.compile(r"runs this flow run \(child pid (\d+), its run (\d+),")


def one_slot_pilot(stack: Stack, pool: str, reuse: int) -> Pilots:
    # Children serve every flow but the p3s jobs of a shared engine (the default): the jobs
    # here, the quickest runs there are, go to children with the fork engine.
    return start_pilots(
        stack,
        "local",
        P3S_PILOTS__ENGINE="fork",
        P3S_PILOTS__POOL_NAME=pool,
        P3S_PILOTS__SLOTS="1",
        P3S_PILOTS__MAX_PILOTS="1",
        P3S_PILOTS__REUSE_RUNS=str(reuse),
        P3S_PILOTS__QUERY_SECONDS="30",
    )


@pytest.fixture(scope="module")
def reusing_pilot(stack: Stack) -> Iterator[Pilots]:
    pilots = one_slot_pilot(stack, "pilots-reuse", REUSE)
    try:
        yield pilots
    finally:
        stop_pilots(pilots)


@pytest.fixture(scope="module")
def fresh_child_pilot(stack: Stack) -> Iterator[Pilots]:
    pilots = one_slot_pilot(stack, "pilots-no-reuse", 1)
    try:
        yield pilots
    finally:
        stop_pilots(pilots)


def child_of(run_id) -> tuple[int, int]:
    """The pid of the child that ran ``run_id`` and how many runs it had taken, as the run's
    log says it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def logs() -> list[str]:
        async with get_client() as client:
            found = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            return [log.message for log in found]

    def found() -> tuple[int, int] | None:
        said = [(int(m[1]), int(m[2])) for line in run(logs()) if (m := CHILD.search(line))]
        assert len(said) <= 1, said
        return said[0] if said else None

    return wait_for(found, 60, f"the child of run {run_id} in its logs")


def child_pid(run_id) -> int:
    return child_of(run_id)[0]


def run_in_turn(pilots: Pilots, log: Path, names: list[str], sleep: float = 0) -> list[int]:
    """Submit the jobs at once (one slot: they run in turn); the child pid of each."""
    return [pid for pid, _ in children_in_turn(pilots, log, names, sleep)]


def children_in_turn(
    pilots: Pilots, log: Path, names: list[str], sleep: float = 0
) -> list[tuple[int, int]]:
    runs = run(submit(pilots, [job(name, log, sleep=sleep) for name in names]))
    done = run(wait_for_runs([r.id for r in runs], 240))
    assert [r.state.type.value for r in done] == ["COMPLETED"] * len(runs), [r.state for r in done]
    return [child_of(r.id) for r in sorted(done, key=lambda r: r.start_time)]


def test_a_pilots_runs_share_its_child_up_to_the_bound(
    reusing_pilot: Pilots, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    children = children_in_turn(reusing_pilot, log, [f"reuse-{i}" for i in range(REUSE + 1)])
    pids = [pid for pid, _ in children]
    served = [len(list(group)) for _, group in groupby(pids)]
    # Runs in turn in one child, never more than REUSE in one, then a fresh child.
    assert max(served) >= 2 and max(served) <= REUSE, children
    assert len(set(pids)) == len(served), children  # a child that left is never back
    assert all(n <= REUSE for _, n in children), children
    # Each run saw its own pilot's name, set in the child once for all its runs.
    assert {r[3] for r in records(log)} != {"none"}


def test_reuse_runs_1_forks_a_child_per_run(fresh_child_pilot: Pilots, tmp_path: Path) -> None:
    pids = run_in_turn(fresh_child_pilot, tmp_path / "exec.log", ["fresh-0", "fresh-1"])
    assert pids[0] != pids[1]


def test_a_cancelled_run_kills_its_reused_child_and_the_next_run_works(
    reusing_pilot: Pilots, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    (before, served) = children_in_turn(reusing_pilot, log, ["before-cancel"])[0]
    (flow_run,) = run(submit(reusing_pilot, [job("cancel-me", log, sleep=300)]))
    wait_for(lambda: [r for r in records(log) if r[0] == "cancel-me"], 120, "the payload started")
    child = child_pid(flow_run.id)
    payload = int([r for r in records(log) if r[0] == "cancel-me"][0][5])

    cancel(flow_run.id)
    (done,) = run(wait_for_runs([flow_run.id], 120))
    assert done.state.type.value == "CANCELLED", done.state
    wait_for(lambda: not alive(payload) and not alive(child), 30, "payload and child stopped")
    (after,) = run_in_turn(reusing_pilot, log, ["after-cancel"])
    assert after != child
    # The cancelled run was in the child of the run before, unless it had served its runs.
    assert child == before or served == REUSE


def test_an_idle_child_exits_on_sigterm_and_is_not_reused(
    reusing_pilot: Pilots, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    (child,) = run_in_turn(reusing_pilot, log, ["before-term"])
    wait_for(lambda: alive(child), 10, "the child idle")
    os.kill(child, signal.SIGTERM)
    wait_for(lambda: not alive(child), 10, "the idle child gone on SIGTERM")
    (after,) = run_in_turn(reusing_pilot, log, ["after-term"])
    assert after != child


def test_a_reused_child_dies_with_its_pilot_idle_or_running(
    reusing_pilot: Pilots, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    # Idle: its pilot killed, it exits at once (it would never get another run).
    (idle,) = run_in_turn(reusing_pilot, log, ["idle-0"])
    pilot = psutil.Process(idle).parent().parent()  # child -> fork server -> Dask worker
    os.kill(pilot.pid, signal.SIGKILL)
    wait_for(lambda: not alive(idle), 10, "the idle child gone with its pilot")
    # Running its second run: its payload dies with it, and the run completes elsewhere.
    wait_for(lambda: reusing_pilot.counts().get("idle", 0) >= 1, 120, "a new pilot")
    (first, served) = children_in_turn(reusing_pilot, log, ["reused-0"])[0]
    assert served == 1  # a fresh pilot's first run
    (flow_run,) = run(submit(reusing_pilot, [job("survivor", log, sleep=3)]))
    start = wait_for(lambda: [r for r in records(log) if r[0] == "survivor"], 120, "its payload")
    child = psutil.Process(int(start[0][5])).parent()
    assert child.pid == first  # the run before's child took it
    os.kill(child.parent().parent().pid, signal.SIGKILL)
    wait_for(lambda: not alive(child.pid), 10, "the running child gone with its pilot")
    (done,) = run(wait_for_runs([flow_run.id], 180))
    assert done.state.type.value == "COMPLETED", done.state
    runs = [r for r in records(log) if r[0] == "survivor"]
    assert [r[1] for r in runs].count("start") == 2 and [r[1] for r in runs].count("end") == 1
