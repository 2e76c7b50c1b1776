"""Pool sizing from the backlog (p3s's p3calc) and the jobtype tag."""

from __future__ import annotations

from p3s.pilots.limits import jobtype_of
from p3s.pilots.scaling import decide, required_pilots, roll_call


def test_required_follows_backlog_within_bounds() -> None:
    assert required_pilots(100, 0, 1, 0, 600) == 100
    assert required_pilots(100, 0, 4, 0, 600) == 25
    assert required_pilots(0, 0, 1, 2, 10) == 2
    assert required_pilots(5000, 3, 1, 0, 600) == 600


def test_grows_at_once_with_a_p3calc_message() -> None:
    d = decide(
        backlog=100,
        in_flight=0,
        slots_per_pilot=1,
        min_pilots=0,
        max_pilots=600,
        held=99,
        idle_for={},
        idle_seconds=30,
    )
    assert d.submit == 1 and not d.retire
    assert d.message.startswith("required 100, running 99, submitting 1")


def test_shrinks_only_by_pilots_idle_long_enough() -> None:
    d = decide(
        backlog=0,
        in_flight=1,
        slots_per_pilot=1,
        min_pilots=1,
        max_pilots=10,
        held=4,
        idle_for={"a": 50.0, "b": 5.0, "c": 100.0},
        idle_seconds=30,
    )
    # Required 1 (the run in flight): 3 surplus, but only a and c have been idle 30 s.
    assert d.retire == ("c", "a") and d.submit == 0


def test_pilots_not_started_are_dropped_first() -> None:
    d = decide(
        backlog=0,
        in_flight=0,
        slots_per_pilot=1,
        min_pilots=0,
        max_pilots=10,
        held=3,
        idle_for={"a": 999.0},
        starting=("s1", "s2"),
        idle_seconds=30,
    )
    assert d.retire == ("s1", "s2", "a")


def test_no_change_when_sized_right() -> None:
    d = decide(
        backlog=2,
        in_flight=2,
        slots_per_pilot=2,
        min_pilots=0,
        max_pilots=10,
        held=2,
        idle_for={},
        idle_seconds=30,
    )
    assert not d.changes


def test_jobtype_tag() -> None:
    assert jobtype_of(["p3s-job", "jobtype:evdisp"]) == "evdisp"
    assert jobtype_of(["p3s"]) is None


def test_below_target_is_reported_once_per_episode() -> None:
    from p3s.pilots.scaling import BelowTarget

    watch = BelowTarget(tolerance_s=60)
    assert watch.update(0, connected=1, required=3) is None  # a gap starts
    assert watch.update(59, connected=2, required=3) is None  # not for long enough
    assert watch.update(61, connected=2, required=3) == 61  # reported
    assert watch.update(300, connected=2, required=3) is None  # once per episode
    assert watch.update(301, connected=3, required=3) is None  # the episode ends
    assert watch.update(302, connected=0, required=1) is None  # a new one
    assert watch.update(363, connected=0, required=1) == 61


def test_a_pool_with_more_free_slots_than_a_page_asks_for_one_page() -> None:
    """Prefect's API refuses a limit above 200 (422): a pool of 4 x 100 free slots asked for
    400 on every poll and dispatched nothing."""
    import asyncio

    from p3s.pilots.dispatch import FETCH_LIMIT
    from p3s.pilots.worker import PilotWorker

    asked: list[int] = []

    async def fetch(limit: int) -> list:
        asked.append(limit)
        return []

    async def no_limits() -> None:
        return None

    dispatch = PilotWorker(work_pool_name="p3s-pilots").dispatch
    dispatch.free_slots = lambda: 400  # type: ignore[method-assign]
    dispatch.fetch = fetch  # type: ignore[method-assign]
    dispatch.refresh_limits = no_limits  # type: ignore[method-assign]
    asyncio.run(dispatch.fetch_and_submit())
    assert asked == [FETCH_LIMIT] and FETCH_LIMIT <= 200


def test_a_pilot_retired_while_starting_is_not_lost_when_it_connects_and_closes() -> None:
    """Seen in `p3s demo`: the pool retired pilot 3 while it was starting; it connected once
    out of the cluster's spec, Dask closed it, and it was reported lost (a false alarm)."""
    seen, retiring = {"0", "1", "2"}, {"3"}  # just retired: no longer held, not connected
    seen, retiring, lost = roll_call(seen, retiring, {"0", "1", "2", "3"}, {"0", "1", "2"})
    assert (lost, retiring) == ([], {"3"})
    seen, retiring, lost = roll_call(seen, retiring, {"0", "1", "2"}, {"0", "1", "2"})
    assert (lost, retiring, seen) == ([], set(), {"0", "1", "2"})


def test_a_pilot_gone_without_retirement_is_lost_once() -> None:
    seen, retiring, lost = roll_call({"0", "1"}, set(), {"0"}, {"0", "1"})
    assert lost == ["1"]
    assert roll_call(seen, retiring, {"0"}, {"0", "1"})[2] == []
