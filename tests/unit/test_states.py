"""p3s state names beside Prefect's."""

from __future__ import annotations

import pytest
from prefect.states import Cancelled, Completed, Crashed, Failed, Pending, Running, Scheduled

from p3s.jobs.client import job_filter
from p3s.jobs.queues import prefect_priority, queue_for_priority
from p3s.jobs.states import p3s_state


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (Scheduled(), "defined"),
        (Pending(), "dispatched"),
        (Running(), "running"),
        (Completed(), "finished"),
        (Failed(), "failed"),
        (Failed(name="TimeLimit"), "timelimit"),
        (Failed(name="Refused"), "nonstarter"),
        (Crashed(), "pilotTO"),
        (Cancelled(), "cancelled"),
        (None, "defined"),
    ],
)
def test_p3s_names(state, expected: str) -> None:
    assert p3s_state(state) == expected


def test_higher_p3s_priority_is_served_first() -> None:
    assert [prefect_priority(p) for p in (10, 5, 0)] == [1, 6, 11]
    assert queue_for_priority(7) == "priority-7"
    with pytest.raises(ValueError, match="0..10"):
        queue_for_priority(11)


def test_filters() -> None:
    flt = job_filter("timelimit", "evdisp")
    assert flt.tags.all_ == ["p3s-job", "jobtype:evdisp"]
    assert flt.state.name.any_ == ["TimeLimit"]
    with pytest.raises(ValueError, match="unknown p3s state"):
        job_filter("exploded")
