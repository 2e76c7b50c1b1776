"""The DQM flows as deployments on a real Prefect server, run by the stack's worker.

One small simulated file (reduced geometry, 2 events) goes through all four deployments, as
``prefect deployment run`` would start them, and the stack's worker runs them. Four damaged
files (corrupt ADC bytes, truncated, wrong version, not HDF5) each run one DQM flow in the test
process meanwhile, as flow runs of the same server (a worker process per run would add
seconds each and show nothing more).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import pytest
from p3s.payloads.rawformat import Geometry, raw_filename
from p3s.payloads.simulate import simulate_file

from p3s.dqm.catalog import Catalog
from p3s.files import storage
from p3s.system.datatypes import DQM_DEPLOYMENTS
from tests.conftest import Stack, wait_for_runs
from tests.dqm.conftest import drain_prefect_clients

# The Prefect database does not change this path: it runs on the SQLite stack only (the
# PostgreSQL stack runs tests/integration/test_jobs_on_server.py, the catalog is tested on
# PostgreSQL in test_catalog.py); this keeps the suite within its time budget.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
PAYLOADS = list(DQM_DEPLOYMENTS)
GOOD = raw_filename(42, 7)


def _simulate(path: Path, run: int, subrun: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    simulate_file(
        path,
        run=run,
        subrun=subrun,
        n_events=2,
        n_ticks=1500,
        seed=run,
        geometry=Geometry.reduced(n_apas=1, fibers_per_apa=2),
    )
    return path


def _damaged_files(folder: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (path, deployment, expected words of the fault)."""
    corrupt = _simulate(folder / raw_filename(43, 1), 43, 1)
    with h5py.File(corrupt) as h5:
        info = h5["events/000001/adc"].id.get_chunk_info(1)
    with corrupt.open("r+b") as handle:
        handle.seek(info.byte_offset + info.size // 2)
        handle.write(b"\xa5" * 16)
    truncated = _simulate(folder / raw_filename(44, 1), 44, 1)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    version = _simulate(folder / raw_filename(45, 1), 45, 1)
    with h5py.File(version, "r+") as h5:
        h5.attrs["format_version"] = 2
    not_hdf5 = folder / raw_filename(46, 1)
    not_hdf5.write_text("run,subrun\n46,1\n" * 100)
    return {
        corrupt.name: (corrupt, "dqm-tpc-monitor/inbox", "/events/000001/adc"),
        truncated.name: (truncated, "dqm-beam/inbox", "truncated or corrupt"),
        version.name: (version, "dqm-beam/inbox", "format_version 2 is not supported"),
        not_hdf5.name: (not_hdf5, "dqm-beam/inbox", "not an HDF5 file"),
    }


@dataclass
class Outcome:
    stack: Stack
    runs: dict[tuple[str, str], Any]  # (deployment, file name) -> FlowRun
    damaged: dict[str, tuple[Path, str, str]]
    good_url: str


async def _create_runs(requests: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = []
        for deployment, parameters in requests:
            found = await client.read_deployment_by_name(deployment)
            runs.append(
                await client.create_flow_run_from_deployment(found.id, parameters=parameters)
            )
        return runs


def _run_in_process(deployment: str, file_url: str) -> Any:
    """Run a DQM flow in this process as a flow run of the stack's server; return the run."""
    from p3s.flows.dqm import DQM_FLOWS
    from prefect.client.orchestration import get_client

    payload = deployment.split("/")[0].removeprefix("dqm-").replace("-", "_")
    state = DQM_FLOWS[payload](file_url=file_url, return_state=True)

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(state.state_details.flow_run_id)

    return asyncio.run(read())


@pytest.fixture(scope="module")
def outcome(stack: Stack) -> Iterator[Outcome]:
    """The good file through the four deployments (the worker runs them) while the damaged
    files run in this process, each as a flow run of the same server."""
    from p3s.system.settings import get_settings

    get_settings.cache_clear()  # this process now works for the stack: read its settings
    folder = stack.settings.data / "dqm-test"
    good = _simulate(folder / GOOD, 42, 7)
    damaged = _damaged_files(folder)
    good_url = storage.url_for(good)
    requests = [(DQM_DEPLOYMENTS[p], {"file_url": good_url, "n_events": 2}) for p in PAYLOADS]
    created = asyncio.run(_create_runs(requests))
    runs = {(deployment, GOOD): run for (deployment, _), run in zip(requests, created, strict=True)}
    for name, (path, deployment, _) in damaged.items():
        runs[(deployment, name)] = _run_in_process(deployment, storage.url_for(path))
    finished = asyncio.run(wait_for_runs([r.id for r in runs.values()], timeout_s=300))
    try:
        yield Outcome(stack, dict(zip(runs, finished, strict=True)), damaged, good_url)
    finally:
        drain_prefect_clients()
        get_settings.cache_clear()


def test_each_payload_completes_and_writes_its_products_to_the_outbox(outcome: Outcome) -> None:
    outbox = outcome.stack.settings.data / "outbox" / "run000042" / "0007"
    for payload in PAYLOADS:
        run = outcome.runs[(DQM_DEPLOYMENTS[payload], GOOD)]
        assert run.state.type.value == "COMPLETED", (payload, run.state.message)
        assert run.run_count == 1
        folder = outbox / payload
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["run"] == 42 and summary["subrun"] == 7
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [*summary["products"], "summary.json"]
        ), "every product, and no temporary, is in the outbox"
        assert any(name.endswith(".root") for name in summary["products"]) or payload == "beam"


def test_catalog_has_the_file_results_purity_channels_and_products(outcome: Outcome) -> None:
    catalog = Catalog(outcome.stack.settings.catalog)
    try:
        assert catalog.payload_outcomes(GOOD) == dict.fromkeys(PAYLOADS, "completed")
        (raw,) = [f for f in catalog.files(run=42) if f["name"] == GOOD]
        good = Path(outcome.good_url.removeprefix("file://"))
        assert (raw["url"], raw["subrun"]) == (outcome.good_url, 7)
        assert (raw["size"], raw["adler32"]) == (good.stat().st_size, storage.adler32(good))
        purity = catalog.purity(run=42)
        assert [row["tpc"] for row in purity] == [1]
        assert purity[0]["count"] > 0 and 0.5 < purity[0]["lifetime_ms"] < 20
        channels = catalog.channels(42)
        assert [(c["apa"], c["plane"]) for c in channels] == [(0, "U"), (0, "V"), (0, "X")]
        assert sum(c["n_channels"] for c in channels) == 256
        products = catalog.products(42)
        assert {p["payload"] for p in products} == set(PAYLOADS)
        for product in products:
            local = Path(product["url"].removeprefix("file://"))
            assert local.stat().st_size == product["size"]
            assert storage.adler32(local) == product["adler32"]
        results = {r["payload"]: r for r in catalog.results(GOOD)}
        for payload in PAYLOADS:
            run = outcome.runs[(DQM_DEPLOYMENTS[payload], GOOD)]
            assert results[payload]["flow_run_id"] == str(run.id)
    finally:
        catalog.dispose()


def test_each_completed_run_evaluated_its_quality_checks_into_the_catalog(
    outcome: Outcome,
) -> None:
    from p3s.dqm.checks import load_checks

    checks = load_checks()
    catalog = Catalog(outcome.stack.settings.catalog)
    try:
        results = catalog.dq_checks(42)
        flags = {f["area"]: f for f in catalog.dq_flags(42)}
    finally:
        catalog.dispose()
    # Every payload with a check file left its results, labelled with the file's version.
    assert {(r["payload"], r["version"]) for r in results} == {
        (p, checks[p].version) for p in PAYLOADS
    }
    assert {"APA 0", "TPC 1", "run"} <= set(flags)
    worst = max((r["quality"] for r in results), key=("good", "medium", "bad").index)
    assert flags["run"]["quality"] == worst
    assert {r["file"] for r in results} == {GOOD}


def test_each_run_publishes_one_summary_with_its_page_link_and_the_purity_rows(
    outcome: Outcome,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from p3s.dqm.links import page_url

    async def artifacts(run_id: Any) -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )

    for payload in PAYLOADS:
        run = outcome.runs[(DQM_DEPLOYMENTS[payload], GOOD)]
        (summary,) = asyncio.run(artifacts(run.id))  # one artifact per run: one API request
        assert summary.key == f"{payload.replace('_', '-')}-summary-run000042-0007"
        assert summary.type == "markdown"
        assert "run 42 subrun 7" in str(summary.data)
        assert f"({page_url(outcome.stack.settings, payload, 42, 7)})" in str(summary.data)
    purity_run = outcome.runs[(DQM_DEPLOYMENTS["purity"], GOOD)]
    (summary,) = asyncio.run(artifacts(purity_run.id))
    rows = [line for line in str(summary.data).splitlines() if line.startswith("| 1 |")]
    assert rows, summary.data  # TPC 1's lifetime row
    lifetime_ms, tracks = rows[0].split("|")[2], rows[0].split("|")[4]
    assert float(lifetime_ms) > 0 and int(tracks) > 0


def test_each_run_logs_what_its_payload_cost(outcome: Outcome) -> None:
    """One line per run: the payload's CPU (its thread) and wall seconds, for its author and for
    bench/orchestration.py."""
    from p3s.tasks.analyse import PAYLOAD_COST, parse_payload_cost
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def messages(run_id: Any) -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
        return [log.message for log in logs]

    assert parse_payload_cost(PAYLOAD_COST % ("beam", GOOD, 1.5, 2.25)) == ("beam", GOOD, 1.5, 2.25)
    for payload in PAYLOADS:
        run = outcome.runs[(DQM_DEPLOYMENTS[payload], GOOD)]
        deadline = time.monotonic() + 30
        while not (
            found := [c for m in asyncio.run(messages(run.id)) if (c := parse_payload_cost(m))]
        ):
            assert time.monotonic() < deadline, (payload, asyncio.run(messages(run.id)))
            time.sleep(0.5)  # logs are sent in batches
        (cost,) = found
        assert (cost.payload, cost.file_name) == (payload, GOOD), cost
        assert cost.cpu_s > 0 and cost.wall_s > 0, cost


def _finished_events(file_name: str, expected: int) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async def read() -> list[Any]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["p3s.dqm.finished"]),
                    resource=EventResourceFilter(id=[f"p3s.dqm.{p}.{file_name}" for p in PAYLOADS]),
                ),
                limit=50,
            )
        return [e for e in page.events if e.resource.get("p3s.file.name") == file_name]

    deadline = time.monotonic() + 60
    while True:  # events are written in batches, shortly after they are sent
        events = asyncio.run(read())
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_each_finished_run_emits_p3s_dqm_finished(outcome: Outcome) -> None:
    events = _finished_events(GOOD, len(PAYLOADS))
    by_payload = {e.resource["p3s.payload"]: e for e in events}
    assert sorted(by_payload) == sorted(PAYLOADS)
    for payload, event in by_payload.items():
        assert event.resource.id == f"p3s.dqm.{payload}.{GOOD}"
        assert event.resource["p3s.outcome"] == "completed"
        assert event.resource["p3s.file.url"] == outcome.good_url
        assert event.resource["p3s.outbox.url"].endswith(f"/run000042/0007/{payload}")
        assert event.payload["run"] == 42 and event.payload["subrun"] == 7


def test_damaged_files_fail_once_naming_the_fault_and_stay_in_place(outcome: Outcome) -> None:
    catalog = Catalog(outcome.stack.settings.catalog)
    try:
        for name, (path, deployment, fault) in outcome.damaged.items():
            run = outcome.runs[(deployment, name)]
            assert run.state.type.value == "FAILED", (name, run.state.message)
            assert run.state.name == "Corrupt"
            assert run.run_count == 1, f"{name} was retried"
            assert name in run.state.message and fault in run.state.message
            assert path.exists(), "the flow does not move or delete its input"
            payload = deployment.split("/")[0].removeprefix("dqm-").replace("-", "_")
            assert catalog.payload_outcomes(name) == {payload: "corrupt"}
            (event,) = _finished_events(name, 1)
            assert event.resource["p3s.outcome"] == "corrupt"
            assert fault in event.payload["reason"]
            assert "p3s.outbox.url" not in event.resource
    finally:
        catalog.dispose()


def test_a_transport_failing_every_try_fails_the_run_saying_so_and_keeps_its_products(
    outcome: Outcome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output transport is a task of the DQM run: when every try fails, the run ends
    ``TransportFailed`` naming the cause, and what the payload produced stays recorded."""
    from p3s.system.settings import get_settings

    blocked = tmp_path / "replica-is-a-file"
    blocked.write_text("a file where the replica folder should be")
    monkeypatch.setenv("P3S_INBOX__REPLICA_URL", f"file://{blocked}")
    monkeypatch.setenv("P3S_STORAGE__ATTEMPTS", "2")
    monkeypatch.setenv("P3S_STORAGE__BACKOFF_SECONDS", "0.1")
    get_settings.cache_clear()
    try:
        path = _simulate(outcome.stack.settings.data / "dqm-test" / raw_filename(47, 1), 47, 1)
        run = _run_in_process("dqm-beam/inbox", storage.url_for(path))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert run.state.type.value == "FAILED" and run.state.name == "TransportFailed"
    assert "replicating them failed after retries" in (run.state.message or "")
    catalog = Catalog(outcome.stack.settings.catalog)
    try:
        (row,) = [r for r in catalog.completed() if r["file"] == path.name]
    finally:
        catalog.dispose()
    assert row["payload"] == "beam"
    assert blocked.read_text() == "a file where the replica folder should be"  # not disturbed
