"""The data-quality pages in headless Chromium: the landing page lists only what is wrong, the
TPC monitor page overlays the reference run, the trends page has every run.

Beside the site's own runs (7301 through the DQM deployments, 7302 corrupt: its four flow runs
failed), 21 simulated runs go through the real TPC monitor into the stack's catalog: 7400 (the
reference run) to 7419 clean, 7420 with 40 more noisy channels in APA 1; their checks are
evaluated as the DQM flows do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from p3s.payloads import tpc_monitor
from p3s.payloads.rawformat import Geometry
from p3s.ui_extensions.landing import WINDOW_HOURS
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from selenium.webdriver.common.by import By

from p3s.dqm.catalog import Catalog
from p3s.dqm.quality import evaluate_file
from tests.dqm.simruns import process, simulate_run
from tests.ui.conftest import ARTIFACTS, Site, images, open_page

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
GOOD_RUNS = list(range(7400, 7420))
REFERENCE, BAD = 7400, 7420
GEOMETRY = Geometry.reduced(n_apas=2, fibers_per_apa=2)
FOLD = (1400, 1000)


@pytest.fixture(scope="module")
def runs(site: Site) -> Iterator[Catalog]:
    settings = site.stack.settings
    folder = settings.data / "ui-quality"
    catalog = Catalog(settings.catalog)
    payloads = {"tpc_monitor": tpc_monitor.analyse}
    for run in [*GOOD_RUNS, BAD]:
        raw = simulate_run(
            folder, run, n_events=1, n_ticks=1500, geometry=GEOMETRY,
            extra_noisy={1: 40} if run == BAD else None,
        )  # fmt: skip
        process(catalog, raw, folder / "outbox", payloads)
    catalog.set_reference(REFERENCE, "tpc_monitor")
    for run in [*GOOD_RUNS, BAD]:
        for row in catalog.completed(run=run):
            evaluate_file(catalog, row["file"], row["payload"])
    try:
        yield catalog
    finally:
        catalog.unset_reference("tpc_monitor")
        catalog.dispose()


async def _failed_files(since_hours: float) -> set[str]:
    """Raw files (or run names) of the failed or crashed flow runs the Prefect API has."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    flt = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["FAILED", "CRASHED"])),
        expected_start_time=FlowRunFilterExpectedStartTime(
            after_=now - timedelta(hours=since_hours), before_=now
        ),
    )
    async with get_client() as client:
        found = await client.read_flow_runs(flow_run_filter=flt, limit=200)
    return {str(r.parameters.get("file_url", "")).rpartition("/")[2] or r.name for r in found}


def _rows_in_first_screen(driver: Any, css: str) -> list[dict[str, Any]]:
    """Each row of a table: its text and whether it lies wholly within the first screen."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(r => "
        "({text: r.innerText, run: r.dataset.run, what: r.dataset.what, "
        "inside: r.getBoundingClientRect().bottom <= window.innerHeight}))",
        css,
    )


def test_landing_page_shows_the_bad_and_the_failed_run_above_the_fold_and_no_good_run(
    site: Site, runs: Catalog, browser: Any
) -> None:
    flagged = {f["run"] for f in runs.dq_flags(worse_than_good=True) if f["area"] == "run"}
    assert BAD in flagged and not flagged & set(GOOD_RUNS)
    failed = asyncio.run(_failed_files(WINDOW_HOURS))
    assert site.corrupt in failed
    browser.set_window_size(*FOLD)
    browser.get(f"{site.url}/")
    quality = _rows_in_first_screen(browser, "table#quality-problems tr[data-run]")
    failures = _rows_in_first_screen(browser, "table#failed-runs tr[data-what]")
    browser.save_screenshot(str(ARTIFACTS / "landing-first-screen.png"))
    assert {int(r["run"]) for r in quality} == flagged
    assert {r["what"] for r in failures} == failed
    bad_row = next(r for r in quality if int(r["run"]) == BAD)
    corrupt_row = next(r for r in failures if r["what"] == site.corrupt)
    assert bad_row["inside"] and corrupt_row["inside"], "both are in the first screen"
    assert "APA 1 bad: " in bad_row["text"]
    assert "noisy_fraction in APA 1 is " in bad_row["text"]
    assert "above the limit 5 % (noisy-fraction)" in bad_row["text"]
    assert "Corrupt" in corrupt_row["text"]
    page = browser.find_element(By.TAG_NAME, "main").text
    for run in GOOD_RUNS:
        assert str(run) not in page, f"good run {run} takes no row"
    assert not browser.find_elements(By.ID, "all-fine")
    links = {
        a.get_attribute("href").removeprefix(site.url)
        for a in browser.find_elements(By.CSS_SELECTOR, f"tr[data-run='{BAD}'] a")
    }
    assert links == {f"/quality/{BAD}", f"/tpc/{BAD}/1"}
    landing = httpx.get(f"{site.url}/api/landing.json", timeout=60).json()
    assert {r["run"] for r in landing["quality"]} == flagged
    assert {r["what"] for r in landing["failed"]} == failed
    summary = httpx.get(f"{site.url}/api/summary.json", timeout=60).json()
    assert [s["name"] for s in landing["status"]] == [
        s["name"] for s in summary["status"] if s["verdict"] == "FAIL"
    ]
    open_page(browser, f"{site.url}/", "landing")


def test_tpc_monitor_page_overlays_the_reference_run(
    site: Site, runs: Catalog, browser: Any
) -> None:
    open_page(browser, f"{site.url}/tpc/{BAD}/1", "tpc-monitor-reference")
    note = browser.find_element(By.CSS_SELECTOR, "#reference + p").text
    assert f"Dashed: reference run {REFERENCE}" in note
    overlays = [i for i in images(browser) if i["src"].startswith("/plots/overlay/")]
    # Noise RMS of 2 APAs x 3 planes and the profiled FFT of 2 x 2 fibers.
    assert len(overlays) == 6 + 4
    assert all(i["width"] > 0 for i in overlays), overlays
    alts = {e.get_attribute("alt") for e in browser.find_elements(By.CSS_SELECTOR, "img.overlay")}
    assert f"apa1/fiber021/profiled_fft with reference run {REFERENCE}" in alts
    # Without a reference run the page says how to set one and overlays nothing.
    runs.unset_reference("tpc_monitor")
    try:
        open_page(browser, f"{site.url}/tpc/{BAD}/1", "tpc-monitor-no-reference")
        assert not [i for i in images(browser) if i["src"].startswith("/plots/overlay/")]
        assert "p3s dqm reference set RUN" in browser.find_element(By.TAG_NAME, "main").text
    finally:
        runs.set_reference(REFERENCE, "tpc_monitor")


def test_trends_page_shows_every_run_and_every_key_number(
    site: Site, runs: Catalog, browser: Any
) -> None:
    open_page(browser, f"{site.url}/trends", "trends")
    flags = {f["run"]: f["quality"] for f in runs.dq_flags() if f["area"] == "run"}
    cells = browser.find_elements(By.CSS_SELECTOR, "table#quality-runs tr:first-child td")
    assert [int(c.text) for c in cells] == sorted(flags)
    assert set(GOOD_RUNS) | {BAD} <= set(flags)
    shown = images(browser)
    assert all(i["width"] > 0 for i in shown), [i["src"] for i in shown if i["width"] == 0]
    srcs = {i["src"] for i in shown}
    for quantity in ("mean_rms", "mean_pedestal", "dead_fraction", "noisy_fraction"):
        assert f"/plots/trend/tpc_monitor/{quantity}.png" in srcs
    assert "/plots/quality-strip.png" in srcs
    data = httpx.get(f"{site.url}/api/trends.json", timeout=60).json()
    noisy = data["trends"]["tpc_monitor"]["noisy_fraction"]
    assert noisy["unit"] == "%"
    apa1 = dict(map(tuple, noisy["places"]["APA 1"]))
    assert set(GOOD_RUNS) | {BAD} <= set(apa1)
    assert apa1[BAD] > 10 > max(apa1[r] for r in GOOD_RUNS)
    assert data["quality"]["areas"]["run"][data["quality"]["runs"].index(BAD)] == "bad"


def test_a_runs_quality_page_lists_its_flags_and_every_check(
    site: Site, runs: Catalog, browser: Any
) -> None:
    open_page(browser, f"{site.url}/quality/{BAD}", "quality-run")
    flags = {
        row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[1].text
        for row in browser.find_elements(By.CSS_SELECTOR, "table#flags tr")
        if row.find_elements(By.TAG_NAME, "td")
    }
    assert flags == {f["area"]: f["quality"] for f in runs.dq_flags(BAD)}
    assert flags["APA 1"] == "bad" and flags["APA 0"] == "good"
    checks = browser.find_elements(By.CSS_SELECTOR, "table#checks tr td:last-child")
    assert len(checks) == len(runs.dq_checks(BAD))
    assert any("above the limit 5 % (noisy-fraction)" in c.text for c in checks)
    assert httpx.get(f"{site.url}/quality/99999", timeout=30).status_code == 404
