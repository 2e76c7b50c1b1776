"""Local pilots with a forked child per run (``P3S_PILOTS__ENGINE=fork``; the default is shared).

The behaviour tests of test_local_pilots.py run here again, unchanged, on pilots whose p3s jobs
each run in a child forked from the pilot's fork server, with its own Prefect engine: warm
reuse, priorities, jobtype limits, cancellation, a killed pilot, a killed pilot worker, a run
whose execution ends before it starts. A pytest run of its own in scripts/test.sh
(``-m fork_engine``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.conftest import Stack
from tests.pilots.conftest import Pilots, run, start_pilots, stop_pilots
from tests.pilots.test_local_pilots import (  # noqa: F401 - collected here, on forked children
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
    pytest.mark.fork_engine,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]


@pytest.fixture(scope="module", autouse=True)
def _no_limit_left_from_test_local_pilots(stack: Stack) -> None:
    """The jobtype limit test creates its limit; in a session with test_local_pilots.py it
    exists already (the stack is the session's): remove it so the test creates it again."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def delete() -> None:
        async with get_client() as client:
            with contextlib.suppress(ObjectNotFound):
                await client.delete_global_concurrency_limit_by_name("jobtype:limited")

    run(delete())


@pytest.fixture(scope="module")
def local_pilots(stack: Stack) -> Iterator[Pilots]:
    pilots = start_pilots(stack, "local", P3S_PILOTS__QUERY_SECONDS="30", P3S_PILOTS__ENGINE="fork")
    try:
        yield pilots
    finally:
        stop_pilots(pilots)
