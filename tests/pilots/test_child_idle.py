"""An idle flow-run child's wait for its pilot's next run (no server needed)."""

from __future__ import annotations

from multiprocessing import Pipe

import pytest


def test_an_idle_child_leaves_when_no_run_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    from p3s.pilots import execute
    from p3s.system.settings import get_settings

    monkeypatch.setenv("P3S_PILOTS__CHILD_IDLE_SECONDS", "0.05")
    get_settings.cache_clear()
    try:
        ours, theirs = Pipe()
        assert execute._next_run(theirs) is None  # nothing within the idle time
        ours.send(("run", "id", "flows/job.py:p3s_job", "claim", None))
        assert execute._next_run(theirs) == ("run", "id", "flows/job.py:p3s_job", "claim", None)
        ours.close()  # the pilot has no more runs for it
        assert execute._next_run(theirs) is None
    finally:
        get_settings.cache_clear()  # the next test reads its own environment
