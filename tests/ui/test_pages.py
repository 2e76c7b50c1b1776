"""The content app in headless Chromium after a simulated run went through every DQM payload:
each page shows the catalog's rows and images that really load, DQM runs link to their pages,
the dashboard's counts are the Prefect API's, and the app is read-only."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from p3s.tasks.publish import artifact_key
from p3s.ui_extensions.dashboard import WINDOWS
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from selenium.webdriver.common.by import By

from p3s.dqm.catalog import Catalog
from p3s.dqm.links import page_path
from p3s.jobs.states import P3S_FILTERS
from p3s.system.datatypes import DQM_DEPLOYMENTS
from tests.ui.conftest import RUN, SUBRUN, Site, images, open_page, table_rows

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]


def _catalog(site: Site) -> Catalog:
    return Catalog(site.stack.settings.catalog)


def _all_loaded(driver: Any, expected: int) -> list[dict[str, Any]]:
    found = images(driver)
    assert len(found) == expected, found
    assert all(i["width"] > 0 for i in found), [i["src"] for i in found if i["width"] == 0]
    return found


def test_purity_page_lists_each_tpc_with_its_apa_and_draws_lifetime_per_tpc(
    site: Site, browser: Any
) -> None:
    catalog = _catalog(site)
    try:
        expected = catalog.purity(run=RUN)
        everything = catalog.purity()
    finally:
        catalog.dispose()
    assert {row["tpc"] for row in expected} == {1, 2}  # APA 0 and APA 1
    open_page(browser, f"{site.url}/purity?run={RUN}", "purity")
    rows = table_rows(browser, "table#purity")
    shown = sorted((r[1], r[2], r[5]) for r in rows)
    want = sorted(
        (f"TPC {e['tpc']} (APA {e['tpc'] - 1})", e["timestamp"], str(e["count"])) for e in expected
    )
    assert shown == want
    for row in rows:
        assert row[0] == str(RUN)
        lifetime = next(e for e in expected if f"TPC {e['tpc']} " in row[1] + " ")["lifetime_ms"]
        assert row[3] == ("n/a" if lifetime is None else f"{lifetime:.3g}")
    found = _all_loaded(browser, 2)
    assert sorted(i["src"] for i in found) == [
        f"/plots/lifetime/tpc1.png?run={RUN}",
        f"/plots/lifetime/tpc2.png?run={RUN}",
    ]
    # Unfiltered, the JSON pages through every row of the catalog.
    size = site.settings.ui.page_size
    data = httpx.get(f"{site.url}/api/purity.json").json()
    assert data["total"] == len(everything)
    assert data["pages"] == max(1, math.ceil(len(everything) / size))
    assert len(data["rows"]) == min(size, len(everything))


def test_tpc_monitor_page_shows_ffts_per_fiber_channel_plots_maps_and_the_noisy_trend(
    site: Site, browser: Any
) -> None:
    catalog = _catalog(site)
    try:
        planes = [c for c in catalog.channels(RUN) if c["file"] == site.good]
    finally:
        catalog.dispose()
    open_page(browser, f"{site.url}/tpc/{RUN}/{SUBRUN}", "tpc-monitor")
    rows = table_rows(browser, "table#planes")
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (str(p["apa"]), p["plane"], str(p["n_dead"]), str(p["n_noisy"])) for p in planes
    ]
    assert len(rows) == 6  # two APAs, three planes each
    found = {i["src"] for i in _all_loaded(browser, 2 + 2 + 2)}
    base = f"/products/{RUN}/{SUBRUN}/tpc_monitor"
    assert {
        f"{base}/apa0_fiber000_fft.png",
        f"{base}/apa1_fiber020_fft.png",
        f"{base}/rms_vs_channel.png",
        f"{base}/pedestal_vs_channel.png",
        f"/plots/channel-map/{RUN}/{SUBRUN}.png",
        "/plots/noisy-trend.png",
    } == found


def test_event_display_shows_raw_and_prepared_images_per_event_apa_and_plane(
    site: Site, browser: Any
) -> None:
    open_page(browser, f"{site.url}/evdisplay/{RUN}/{SUBRUN}", "event-display")
    tables = browser.find_elements(By.CSS_SELECTOR, "table.evd")
    assert [t.get_attribute("data-event") for t in tables] == ["0", "1"]
    for table in tables:
        labels = [
            r[0]
            for r in table_rows(
                browser, f"table.evd[data-event='{table.get_attribute('data-event')}']"
            )
        ]
        assert labels == [f"APA {a} {p}" for a in (0, 1) for p in "UVX"]
    found = _all_loaded(browser, 2 * 6 * 2)
    assert sum(i["src"].endswith("_raw.png") for i in found) == 12


def test_beam_page_shows_the_runs_histograms(site: Site, browser: Any) -> None:
    catalog = _catalog(site)
    try:
        pngs = {p["name"] for p in catalog.products(RUN, "beam") if p["name"].endswith(".png")}
    finally:
        catalog.dispose()
    open_page(browser, f"{site.url}/beam/{RUN}", "beam")
    found = _all_loaded(browser, len(pngs))
    assert {i["src"].rpartition("/")[2] for i in found} == pngs
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Beam instrumentation · run {RUN}"


def test_every_dqm_run_links_to_its_content_page(site: Site, browser: Any) -> None:
    async def links() -> dict[str, Any]:
        found = {}
        async with get_client() as client:
            for payload, run in site.runs.items():
                artifacts = await client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])
                    )
                )
                found[payload] = {a.key: a for a in artifacts}
        return found

    by_payload = asyncio.run(links())
    for payload in DQM_DEPLOYMENTS:
        # The run's one artifact, its summary, starts with the link to the content page.
        (artifact,) = by_payload[payload].values()
        assert artifact.key == artifact_key("summary", payload, RUN, SUBRUN)
        assert artifact.type == "markdown"
        path = page_path(payload, RUN, SUBRUN)
        assert f"({site.stack.settings.ui_url}{path})" in artifact.data
        open_page(browser, site.url + path, f"linked-{payload}")
        assert str(RUN) in browser.find_element(By.TAG_NAME, "h1").text
        assert all(i["width"] > 0 for i in images(browser))


def test_runs_page_lists_the_file_with_each_payloads_outcome(site: Site, browser: Any) -> None:
    open_page(browser, f"{site.url}/runs", "runs")
    rows = [r for r in table_rows(browser, "table#runs") if r[2] == site.good]
    assert rows == [[str(RUN), str(SUBRUN), site.good] + ["completed"] * 4]


# -- the dashboard -------------------------------------------------------------------------


def _state_filter(state: str) -> FlowRunFilterState:
    types, name = P3S_FILTERS[state]
    names = FlowRunFilterStateName(any_=[name]) if name else None
    if state == "failed":
        names = FlowRunFilterStateName(not_any_=["TimeLimit", "Refused"])
    return FlowRunFilterState(type=FlowRunFilterStateType(any_=types), name=names)


async def _api_counts(at: datetime, flow: str) -> dict[str, dict[str, int]]:
    """What count_flow_runs says for each window and p3s state (the dashboard's definition)."""
    flow_filter = FlowFilter(name=FlowFilterName(any_=[flow]))
    keys = [(window, state) for window in WINDOWS for state in P3S_FILTERS]
    async with get_client() as client:
        found = await asyncio.gather(
            *(
                client.count_flow_runs(
                    flow_filter=flow_filter,
                    flow_run_filter=FlowRunFilter(
                        expected_start_time=FlowRunFilterExpectedStartTime(
                            after_=at - timedelta(seconds=WINDOWS[window]),
                            before_=at - timedelta(microseconds=1),
                        ),
                        state=_state_filter(state),
                    ),
                )
                for window, state in keys
            )
        )
    counts: dict[str, dict[str, int]] = {window: {} for window in WINDOWS}
    for (window, state), count in zip(keys, found, strict=True):
        counts[window][state] = count
    return counts


#: Rows whose runs are all final once the fixture is done (life-cycle and transport runs that
#: the DQM events trigger may still move while the test reads).
STABLE_ROWS = {"flow dqm-purity": "dqm-purity", "flow dqm-beam": "dqm-beam"}


def test_dashboard_counts_match_the_prefect_api(site: Site, browser: Any) -> None:
    for _ in range(3):  # read again should a run have moved between the two readings
        at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        query = {"at": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        data = httpx.get(f"{site.url}/api/summary.json", params=query, timeout=120).json()
        expected = {row: asyncio.run(_api_counts(at, flow)) for row, flow in STABLE_ROWS.items()}
        if all(data["jobs"][row] == counts for row, counts in expected.items()):
            break
    for row, counts in expected.items():
        assert data["jobs"][row] == counts, row
    for window in WINDOWS:  # every run is in the "all" row
        total = sum(data["jobs"]["all"][window].values())
        assert total >= sum(sum(data["jobs"][row][window].values()) for row in STABLE_ROWS)
    assert data["jobs"]["flow dqm-purity"]["10 min"]["finished"] >= 1
    assert data["jobs"]["flow dqm-purity"]["10 min"]["failed"] >= 1  # the corrupt file
    assert data["files"]["quarantine"] >= 1
    verdicts = {row["name"]: row["verdict"] for row in data["status"]}
    assert verdicts == {
        # the process worker publishes no pilot counts (unless a pilot test on this stack did)
        "pilots": "n/a" if data["pilots"] is None else verdicts["pilots"],
        "inbox files": "OK",
        "inbox storage": "OK",
        "outbox storage": "OK",
    }
    quarantined = [line for line in data["log"] if line["event"] == "file quarantined"]
    assert any(
        line["resource"] == site.corrupt and "corrupt" in line["text"] for line in quarantined
    )

    open_page(browser, f"{site.url}/dashboard?at={query['at']}", "dashboard")
    for window in WINDOWS:
        cells = browser.find_elements(
            By.CSS_SELECTOR,
            f"tr[data-row='flow dqm-purity'][data-window='{window}'] td[data-state]",
        )
        shown = {c.get_attribute("data-state"): int(c.text) for c in cells}
        assert shown == data["jobs"]["flow dqm-purity"][window], window
    log = " ".join(r[2] for r in table_rows(browser, "table#service-log"))
    assert site.corrupt in log
    assert [r[3] for r in table_rows(browser, "table#status")] == list(verdicts.values())


def test_service_log_shows_scaling_lost_pilots_and_alarms_from_the_events_api(site: Site) -> None:
    now = datetime.now(UTC)
    sent = [  # (event, resource id, resource name, message)
        ("p3s.pilots.scaled", "p3s.pilot-pool.ui-test", "", "required 3, running 2, submitting 1"),
        ("p3s.pilot.lost", "p3s.pilot.tcp://10.0.0.9:4711", "", "pilot lost (pilotTO)"),
        ("prefect.automation.triggered", f"prefect.automation.{uuid.uuid4()}", "p3s-ui-test", ""),
        (
            "prefect.automation.triggered",
            f"prefect.automation.{uuid.uuid4()}",
            "x__automation_1",
            "",
        ),
    ]
    events = [
        {
            "id": str(uuid.uuid4()),
            "occurred": now.isoformat(),
            "event": name,
            "resource": {
                "prefect.resource.id": rid,
                **({"prefect.resource.name": rname} if rname else {}),
            },
            "payload": {"message": message} if message else {},
        }
        for name, rid, rname, message in sent
    ]
    httpx.post(f"{site.stack.api_url}/events", json=events, timeout=10).raise_for_status()
    resources: list[str] = []
    texts: list[str] = []
    for _ in range(40):  # the server writes events in batches, shortly after it accepted them
        at = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        log = httpx.get(f"{site.url}/api/summary.json", params={"at": at}, timeout=60).json()["log"]
        resources = [line["resource"] for line in log]
        texts = [f"{line['event']}: {line['text']}" for line in log]
        if all(rid in resources for _, rid, _, _ in sent[:3]):
            break
        time.sleep(0.5)
    assert "p3s.pilots.scaled: required 3, running 2, submitting 1" in texts
    assert "p3s.pilot.lost: pilot lost (pilotTO)" in texts
    assert "prefect.automation.triggered: p3s-ui-test" in texts  # an alarm automation
    assert sent[3][1] not in resources  # a deployment trigger is no alarm


def test_job_list_filters_and_a_job_page_links_to_the_prefect_ui(site: Site, browser: Any) -> None:
    run = site.runs["purity"]
    open_page(browser, f"{site.url}/jobs?flow=dqm-purity&state=finished", "jobs")
    rows = table_rows(browser, "table#job-list")
    assert rows and all(r[1] == "dqm-purity" and r[3] == "finished" for r in rows)
    assert any(r[0] == run.name for r in rows)
    data = httpx.get(
        f"{site.url}/api/jobs.json", params={"flow": "dqm-purity", "state": "failed"}
    ).json()
    assert data["total"] >= 1 and all(r["p3s_state"] == "failed" for r in data["rows"])

    open_page(browser, f"{site.url}/jobs/{run.id}", "job")
    link = browser.find_element(By.ID, "prefect-link").get_attribute("href")
    assert link == f"{site.stack.api_url.removesuffix('/api')}/runs/flow-run/{run.id}"
    content = browser.find_element(By.ID, "content-link").get_attribute("href")
    assert content == site.url + page_path("purity", RUN, SUBRUN)


def test_the_app_is_read_only(site: Site) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        answer = httpx.request(method, f"{site.url}/dashboard", timeout=10)
        assert answer.status_code == 405, method
        assert answer.headers["allow"] == "GET, HEAD"
    assert httpx.head(f"{site.url}/purity", timeout=10).status_code == 200
    # Products are served from the catalog only: no path of the request's own.
    assert (
        httpx.get(
            f"{site.url}/products/{RUN}/{SUBRUN}/tpc_monitor/..%2F..%2Fcatalog.sqlite"
        ).status_code
        == 404
    )
    summary = json.loads(httpx.get(f"{site.url}/api/summary.json", timeout=60).text)
    assert set(summary["windows"]) == set(WINDOWS)
