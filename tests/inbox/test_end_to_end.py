"""The inbox on the real stack: a dropped file runs four DQM flows through event triggers, then
moves to used/ and its outputs are replicated; a corrupt file goes to quarantine with a reason;
a file removed between claim and stage-in fails its runs with a message that says so."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from p3s.files.inbox import InboxScanner, prefect_emitter
from p3s.files.lifecycle import Layout
from p3s.files.transport import MANIFEST
from p3s.stack.demo import drop_into_inbox, wait_for_dqm_runs, wait_until_settled
from p3s.system.datatypes import DQM_DEPLOYMENTS
from tests.conftest import Stack
from tests.inbox.conftest import put, raw_name

# The inbox path does not depend on the Prefect database: run it on the SQLite stack only
# (the PostgreSQL stack runs the DQM flows in A's tests); this keeps the suite's time down.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]


def _run_number(stack: Stack, base: int) -> int:
    # Keep run numbers apart should the module run on both backends.
    return base + (500 if stack.backend == "postgresql" else 0)


def _wait_for_files(folder: Path, names: set[str], timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if names <= {p.name for p in folder.iterdir()} if folder.exists() else False:
            return
        time.sleep(0.5)
    found = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    raise AssertionError(f"{folder} holds {found}, expected {sorted(names)}")


async def _quarantine_events(name: str, timeout_s: float = 60) -> int:
    """How many p3s.file.quarantined events name the file (waits for the first)."""
    from prefect.client.orchestration import get_client

    body = {
        "filter": {
            "event": {"name": ["p3s.file.quarantined"]},
            "resource": {"id": [f"p3s.file.{name}"]},
            "occurred": {"since": "2000-01-01T00:00:00Z"},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            found = (await client.request("POST", "/events/filter", json=body)).json()["events"]
            if found or time.monotonic() > deadline:
                return len(found)
            await asyncio.sleep(1)


async def _flow_runs_naming(name: str) -> list[str]:
    """The names of every flow run on the server whose name mentions ``name``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=name)), limit=50
        )
    return sorted(r.name for r in runs)


def test_a_dropped_file_runs_four_dqm_flows_then_is_used_and_replicated_and_a_corrupt_one_is_quarantined(  # noqa: E501
    stack: Stack,
) -> None:
    settings = stack.settings
    layout = Layout.of(settings)
    data = settings.data
    run = _run_number(stack, 101)
    good = drop_into_inbox(settings, run, n_events=2, seed=run)
    corrupt = raw_name(run + 1)
    put(layout, corrupt, b"this is not HDF5 at all" * 100)
    bystander = data / "claimed" / "bystander-notes.txt"
    bystander.write_text("someone else's file")

    good_runs = asyncio.run(wait_for_dqm_runs(good, DQM_DEPLOYMENTS, timeout_s=300))
    assert {p: r.state.name for p, r in good_runs.items()} == dict.fromkeys(
        DQM_DEPLOYMENTS, "Completed"
    )
    for run_ in good_runs.values():
        assert run_.parameters["file_url"] == layout.claimed.child(good)
        # What the scan found travelled with the event.
        assert (run_.parameters["run"], run_.parameters["subrun"]) == (run, 1)
        assert run_.parameters["datatype"] == "np04-raw"

    bad_runs = asyncio.run(wait_for_dqm_runs(corrupt, DQM_DEPLOYMENTS, timeout_s=300))
    for payload, run_ in bad_runs.items():
        assert run_.state.type.value == "FAILED", payload
        assert "corrupt" in (run_.state.message or ""), run_.state.message

    assert wait_until_settled(settings, good) == "used"
    assert wait_until_settled(settings, corrupt) == "quarantine"
    reason = (data / "quarantine" / f"{corrupt}.reason").read_text()
    assert corrupt in reason and "corrupt" in reason
    lines = reason.splitlines()[1:]
    assert sorted(line.split(":")[0] for line in lines) == sorted(DQM_DEPLOYMENTS)
    assert asyncio.run(_quarantine_events(corrupt)) == 1  # said once, for the service log
    # Nothing else was disturbed.
    assert bystander.read_text() == "someone else's file"
    assert (data / "used" / good).exists() and not (data / "quarantine" / good).exists()
    assert not (data / "claimed" / good).exists() and not (data / "claimed" / corrupt).exists()

    # One flow run per payload and file: the life cycle and transport ran inside them.
    assert asyncio.run(_flow_runs_naming(good)) == sorted(r.name for r in good_runs.values())

    # Every completed output set is replicated, with a manifest of adler32 checksums.
    for payload in DQM_DEPLOYMENTS:
        folder = f"run{run:06d}/0001/{payload}"
        source = data / "outbox" / folder
        replica = data / "replica" / folder
        _wait_for_files(replica, {MANIFEST})
        copied = sorted(str(p.relative_to(replica)) for p in replica.rglob("*") if p.is_file())
        original = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
        assert copied == sorted([*original, MANIFEST])
        for rel in original:
            assert (replica / rel).read_bytes() == (source / rel).read_bytes()
    assert not (data / "replica" / f"run{run + 1:06d}").exists()  # nothing of the corrupt one


def test_a_file_removed_between_claim_and_stage_in_fails_its_runs_saying_so(
    stack: Stack, tmp_path: Path
) -> None:
    # A private inbox (so the stack's watcher does not race this test), the stack's server.
    layout = Layout(f"file://{tmp_path / 'site'}")
    name = raw_name(_run_number(stack, 201))
    put(layout, name)
    scanner = InboxScanner(
        layout,
        stack.settings.inbox.datatypes,
        prefect_emitter(stack.api_url),
        settle_seconds=0.0,
    )
    report = scanner.scan(first_pass=True)
    assert report.announced == [name]
    (tmp_path / "site" / "claimed" / name).unlink()  # gone before any flow could stage it in

    runs = asyncio.run(wait_for_dqm_runs(name, DQM_DEPLOYMENTS, timeout_s=300))
    for payload, run_ in runs.items():
        message = run_.state.message or ""
        assert run_.state.type.value == "FAILED", (payload, run_.state)
        assert "removed" in message and name in message, message
