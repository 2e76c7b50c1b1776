"""The content app's pieces that need no service: windows from history buckets, HTTP Basic
parsing, page links, TPC labels and the cached plots."""

from __future__ import annotations

import base64

import pytest
from p3s.ui_extensions import plots
from p3s.ui_extensions.access import basic_credentials
from p3s.ui_extensions.content import tpc_label
from p3s.ui_extensions.dashboard import STATES, WINDOWS, window_counts

from p3s.dqm.links import flow_run_ui_url, page_path, page_url
from p3s.system.settings import Settings


def _bucket(*states: tuple[str, str, int]) -> dict:
    return {"states": [{"state_type": t, "state_name": n, "count_runs": c} for t, n, c in states]}


def test_window_counts_sum_the_last_minutes_and_name_p3s_states() -> None:
    fine = [_bucket() for _ in range(120)]
    fine[-1] = _bucket(("COMPLETED", "Completed", 2), ("FAILED", "TimeLimit", 1))
    fine[-5] = _bucket(("FAILED", "Failed", 3), ("CRASHED", "Crashed", 1))
    fine[-30] = _bucket(("SCHEDULED", "Late", 4), ("FAILED", "Refused", 1))
    fine[0] = _bucket(("RUNNING", "Running", 5))  # 120 minutes old
    day = [_bucket(("COMPLETED", "Completed", 9), ("PENDING", "Pending", 6))]
    counts = window_counts(fine, day)
    assert list(counts) == list(WINDOWS)
    assert counts["1 min"] == {**dict.fromkeys(STATES, 0), "finished": 2, "timelimit": 1}
    assert counts["10 min"] == {
        **dict.fromkeys(STATES, 0),
        "finished": 2,
        "timelimit": 1,
        "failed": 3,
        "pilotTO": 1,
    }
    assert counts["1 h"]["defined"] == 4 and counts["1 h"]["nonstarter"] == 1
    assert counts["1 h"]["running"] == 0 and counts["2 h"]["running"] == 5
    assert counts["24 h"] == {**dict.fromkeys(STATES, 0), "finished": 9, "dispatched": 6}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic " + base64.b64encode(b"user:pa:ss").decode(), "user:pa:ss"),
        ("basic " + base64.b64encode(b"a:b").decode(), "a:b"),
        ("Bearer abc", None),
        ("Basic !!!", None),
        ("Basic", None),
        (None, None),
    ],
)
def test_basic_credentials(header: str | None, expected: str | None) -> None:
    assert basic_credentials(header) == expected


def test_links_follow_the_base_url_and_name_each_payloads_page() -> None:
    settings = Settings(ui={"base_url": "https://np04-dqm.cern.ch/p3s/"})
    assert page_url(settings, "tpc_monitor", 4649, 3) == "https://np04-dqm.cern.ch/p3s/tpc/4649/3"
    assert page_path("purity", 4649, 3) == "/purity?run=4649"
    assert page_path("evdisplay", 1, 2) == "/evdisplay/1/2"
    assert page_path("beam", 1, 2) == "/beam/1/2"
    with pytest.raises(ValueError, match="no content page for payload 'x'"):
        page_path("x", 1, 1)
    assert Settings(ui={"host": "127.0.0.1", "port": 4300}).ui_url == "http://127.0.0.1:4300"
    api = Settings(server={"api_url": "http://prefect:4200/api"})
    assert flow_run_ui_url(api, "abc") == "http://prefect:4200/runs/flow-run/abc"


def test_tpc_labels_name_the_apa_that_reads_the_tpc() -> None:
    assert [tpc_label(t) for t in (1, 2, 5, 6, 9, 10)] == [
        f"TPC {t} (APA {a})" for a, t in enumerate((1, 2, 5, 6, 9, 10))
    ]
    assert tpc_label(3) == "TPC 3"


def test_plots_are_png_and_drawn_again_only_when_the_data_change() -> None:
    points = [("2018-10-02T18:07:00Z", 3.3, 1.1), ("2018-10-02T19:07:00Z", 3.1, 0.9)]
    first = plots.lifetime_vs_time("TPC 1 (APA 0)", points)
    assert first.startswith(b"\x89PNG")
    assert plots.lifetime_vs_time("TPC 1 (APA 0)", points) is first  # from the cache
    assert plots.lifetime_vs_time("TPC 1 (APA 0)", points[:1]) is not first
    rows = [
        {"apa": "0", "plane": str(p), "wire": str(w), "dead": str(w == 3), "noisy": str(w == 5)}
        for p in range(3)
        for w in range(8)
    ]
    assert plots.channel_map("run 1", rows).startswith(b"\x89PNG")
    assert plots.noisy_trend([(1, 2, 0), (2, 5, 1)]).startswith(b"\x89PNG")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_summary_is_computed_once_for_many_pages_and_served_stale_while_it_refreshes() -> None:
    import asyncio

    from p3s.ui_extensions.shared_refresh import SharedRefresh

    async def scenario() -> None:
        clock = _Clock()
        calls: list[str | None] = []
        release = asyncio.Event()

        async def compute(credentials: str | None) -> int:
            calls.append(credentials)
            await release.wait()
            return len(calls)

        shared = SharedRefresh(compute, fresh_s=15, stale_s=90, clock=clock)
        # No value yet: five pages wait for one computation.
        pages = [asyncio.create_task(shared.get("u:p")) for _ in range(5)]
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*pages) == [1] * 5 and calls == ["u:p"]
        clock.now += 10  # fresh: served as it is
        assert await shared.get("u:p") == 1 and len(calls) == 1
        release.clear()
        clock.now += 20  # stale: served at once, one refresh starts
        assert [await shared.get("u:p") for _ in range(3)] == [1, 1, 1]
        await asyncio.sleep(0)
        assert len(calls) == 2
        release.set()
        await asyncio.sleep(0.01)
        assert await shared.get("u:p") == 2
        clock.now += 200  # too old to show: waited for
        assert await shared.get("u:p") == 3

    asyncio.run(scenario())


def test_a_failed_summary_reaches_the_page_that_waits_and_the_next_request_tries_again() -> None:
    import asyncio

    from p3s.ui_extensions.shared_refresh import SharedRefresh

    async def scenario() -> None:
        answers = [RuntimeError("the Prefect API is down"), 7]

        async def compute(credentials: str | None) -> int:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        shared = SharedRefresh(compute, fresh_s=15, stale_s=90, clock=_Clock())
        with pytest.raises(RuntimeError, match="API is down"):
            await shared.get(None)
        assert await shared.get(None) == 7

    asyncio.run(scenario())
