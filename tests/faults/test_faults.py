"""Faults injected into a running p3s system (tests/faults/conftest.py), one per test, each
followed by an accounting of every job and file: processed exactly once, or failed with a
reason an operator can read; nothing left Scheduled, Pending or Running."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest

from p3s.jobs.model import P3SJob
from p3s.stack import control
from tests.conftest import final_task_runs
from tests.faults.accounting import FINAL, FaultRecord, final_runs
from tests.faults.conftest import FAULT_PAYLOADS, FaultSystem
from tests.pilots.conftest import wait_for as poll_until
from tests.xrootd_server import XRootDServer

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.postgres]
RECORD = str(FAULT_PAYLOADS / "exec_record.sh")


def _noop(_: str) -> None:
    pass


def job(name: str, log: Path, sleep: float = 0) -> P3SJob:
    return P3SJob(
        name=name,
        timeout=300,
        jobtype="fault-test",
        payload=RECORD,
        priority=5,
        env={"P3S_EXEC_LOG": str(log), "P3S_SLEEP": str(sleep), "P3S_INPUT_FILE": "none"},
    )


def submit(jobs: list[P3SJob]) -> list[uuid.UUID]:
    from p3s.jobs.client import submit_jobs

    return [run.id for run in asyncio.run(submit_jobs(jobs))]


def starts(log: Path) -> list[list[str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split() for line in lines if line.split()[1] == "start"]


#: The pilot tests' poll, at the interval these tests used.
wait_for = partial(poll_until, interval_s=0.3)


def settle_jobs(fault: FaultRecord, ids: list[uuid.UUID], log: Path, timeout_s: float = 600):
    runs = asyncio.run(final_runs(ids, timeout_s))
    fault.account_jobs(runs, ids, log)
    return runs


def assert_accounted(fault: FaultRecord) -> None:
    assert not fault.problems(), fault.problems()
    assert fault.completed + sum(fault.failed.values()) == fault.submitted
    fault.outcome = "passed"


def unfinished_runs() -> list[Any]:
    """Every flow run of the system not yet in a final state (the backlog)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType as Types
    from prefect.client.schemas.objects import StateType

    async def _read() -> list[Any]:
        live = [t for t in StateType if t.value not in FINAL]
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=Types(any_=live))),
                limit=200,
            )

    return asyncio.run(_read())


# --------------------------------------------------------------------------------------------
# 1. The Prefect server restarted while 200 jobs are queued


def start_again_what_the_outage_ended(fault: FaultRecord, settings: Any) -> None:
    """After a server outage, start again what `p3s up` would: only the services (pilot
    worker, inbox watcher) that did not outlive it; the report says which."""
    services = {
        "pilot worker": control.pilot_worker_process(settings, settings.pool.name),
        "inbox watcher": control.inbox_watcher_process(settings),
    }
    gone = [name for name, proc in services.items() if proc.process() is None]
    if gone:
        fault.inject(f"{' and '.join(gone)} exited during the outage: started again")
        control.start_worker(settings, _noop)
        control.start_inbox_watcher(settings, _noop)
    fault.notes.append(
        f"services that did not outlive the server's outage: {', '.join(gone) or 'none'}"
    )


def test_prefect_server_restarted_with_200_jobs_queued(
    fault_system: FaultSystem, fault: FaultRecord, tmp_path: Path
) -> None:
    """The Prefect server restarted while 200 jobs are queued"""
    settings = fault_system.settings
    log = tmp_path / "exec.log"
    ids = submit([job(f"server-{i}", log) for i in range(200)])
    wait_for(lambda: starts(log), 180, "the pilots took a job")  # the pool is serving
    fault.inject(f"200 jobs queued ({len(starts(log))} started); Prefect server stopped")
    assert control.server_process(settings).stop()
    time.sleep(5)
    fault.inject(f"Prefect server started again after 5 s down ({len(starts(log))} started)")
    control.start_server(settings, _noop)
    time.sleep(5)
    start_again_what_the_outage_ended(fault, settings)
    settle_jobs(fault, ids, log)
    assert_accounted(fault)


# --------------------------------------------------------------------------------------------
# 2. The database restarted while jobs run


def _postgres(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        timeout=120,
    )


def _postgres_online() -> bool:
    answer = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True)
    return "online" in answer.stdout


def test_database_restarted_while_jobs_run(
    fault_system: FaultSystem, fault: FaultRecord, tmp_path: Path
) -> None:
    """PostgreSQL restarted while jobs run"""
    log = tmp_path / "exec.log"
    ids = submit([job(f"database-{i}", log, sleep=1) for i in range(24)])
    wait_for(lambda: len(starts(log)) >= 2, 180, "two jobs started")
    try:
        fault.inject(f"PostgreSQL restarted ({len(starts(log))} jobs started)")
        _postgres("restart")
    finally:
        if not _postgres_online():  # whatever happened, leave the machine's database running
            _postgres("start")
    settle_jobs(fault, ids, log)
    assert_accounted(fault)


# --------------------------------------------------------------------------------------------
# 3. The pilot worker, then one pilot, SIGKILLed mid-run


def test_pilot_worker_killed_mid_run_and_started_again(
    fault_system: FaultSystem, fault: FaultRecord, tmp_path: Path
) -> None:
    """The pilot worker SIGKILLed mid-run, then started again"""
    settings = fault_system.settings
    log = tmp_path / "exec.log"
    ids = submit([job(f"worker-{i}", log, sleep=4) for i in range(12)])
    wait_for(lambda: len(starts(log)) >= 2, 180, "two jobs started")
    worker = control.pilot_worker_process(settings, settings.pool.name).process()
    assert worker is not None
    tree = worker.children(recursive=True)
    fault.inject(
        f"pilot worker (pid {worker.pid}, {len(tree)} child processes) SIGKILLed "
        f"({len(starts(log))} jobs started)"
    )
    os.kill(worker.pid, signal.SIGKILL)
    time.sleep(3)
    survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    fault.inject(f"pilot worker started again ({len(survivors)} of its children still alive)")
    control.start_worker(settings, _noop)
    try:
        settle_jobs(fault, ids, log)
    finally:
        left = [p for p in survivors if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if left:
            fault.notes.append(
                f"{len(left)} processes of the killed worker outlived its runs: "
                + ", ".join(f"{p.pid} {' '.join(p.cmdline())[:60]}" for p in left[:4])
            )
            for proc in left:
                proc.kill()
    assert_accounted(fault)


def test_pilot_killed_mid_run(
    fault_system: FaultSystem, fault: FaultRecord, tmp_path: Path
) -> None:
    """A pilot (a Dask worker process) SIGKILLed mid-run"""
    log = tmp_path / "exec.log"
    ids = submit([job(f"pilot-{i}", log, sleep=4) for i in range(8)])
    first = wait_for(lambda: starts(log), 180, "a job started")[0]
    # payload -> flow-run child -> fork server -> Dask worker (the pilot)
    pilot = psutil.Process(int(first[3])).parent().parent().parent()
    assert "distributed" in " ".join(pilot.cmdline()) or "spawn" in " ".join(pilot.cmdline())
    fault.inject(f"pilot (pid {pilot.pid}) running job {first[0]} SIGKILLed")
    pilot.kill()
    settle_jobs(fault, ids, log)
    assert_accounted(fault)
    killed = fault.killed_executions
    assert killed >= 1, "the killed pilot's execution was not seen"


# --------------------------------------------------------------------------------------------
# 4. The storage server restarted while DQM flows stage in


def _dqm_run_ids(file_urls: list[str]) -> list[uuid.UUID]:
    from prefect.client.orchestration import get_client

    from p3s.system.datatypes import DQM_DEPLOYMENTS

    async def _create() -> list[uuid.UUID]:
        ids = []
        async with get_client() as client:
            for deployment_name in DQM_DEPLOYMENTS.values():
                deployment = await client.read_deployment_by_name(deployment_name)
                for url in file_urls:
                    run = await client.create_flow_run_from_deployment(
                        deployment.id, parameters={"file_url": url}
                    )
                    ids.append(run.id)
        return ids

    return asyncio.run(_create())


def _simulate(path: Path, run: int, subrun: int = 1) -> None:
    from p3s.payloads.rawformat import Geometry
    from p3s.payloads.simulate import simulate_file

    path.parent.mkdir(parents=True, exist_ok=True)
    simulate_file(
        path, run=run, subrun=subrun, n_events=1, n_ticks=1000, seed=run,
        geometry=Geometry.reduced(n_apas=1, fibers_per_apa=1),
    )  # fmt: skip


def account_flow_runs(fault: FaultRecord, runs: dict[uuid.UUID, Any], ids: list[uuid.UUID]):
    """Account for flow runs without an execution log (their run_count counts executions)."""
    fault.recovered_at = time.monotonic()
    fault.submitted += len(ids)
    for run_id in ids:
        run = runs.get(run_id)
        if run is None or run.state is None or run.state.type.value not in FINAL:
            fault.lost.append(f"{run_id} ({run.state.name if run and run.state else 'unknown'})")
            continue
        fault.executions += run.run_count
        if run.state.type.value == "COMPLETED":
            fault.completed += 1
        else:
            reason = (run.state.message or "").strip()
            if not reason:
                fault.unexplained.append(f"{run_id} {run.state.name} without a message")
            fault.failed[f"{run.state.name}: {reason[:160] or '(no message)'}"] += 1


def test_storage_server_restarted_during_stage_in(
    fault_system: FaultSystem, fault: FaultRecord, xrootd_server: XRootDServer
) -> None:
    """The XRootD storage server restarted while DQM flows stage in"""
    from p3s.payloads.rawformat import raw_filename

    from p3s.dqm.catalog import Catalog
    from p3s.files import storage
    from p3s.system.datatypes import DQM_DEPLOYMENTS

    numbers = [61, 62]
    names = [raw_filename(n, 1) for n in numbers]
    for number, name in zip(numbers, names, strict=True):
        _simulate(xrootd_server.local(f"faults/{name}"), number)
    xrootd_server.chown(xrootd_server.local("faults"))
    ids = _dqm_run_ids([xrootd_server.url(f"faults/{name}") for name in names])

    def running() -> bool:
        runs = asyncio.run(final_runs(ids, 0))
        return any(r.state and r.state.type.value == "RUNNING" for r in runs.values())

    wait_for(running, 180, "a DQM run started", interval_s=0.2)
    fault.inject(f"XRootD server restarted, 3 s down ({len(ids)} DQM runs on root:// URLs)")
    xrootd_server.restart(down_s=3.0)
    runs = asyncio.run(final_runs(ids, 600))
    account_flow_runs(fault, runs, ids)
    assert_accounted(fault)
    assert fault.completed == len(ids), fault.failed

    catalog = Catalog(fault_system.settings.catalog)
    try:
        for number in numbers:
            products = catalog.products(number)
            keys = Counter((p["file"], p["payload"], p["name"]) for p in products)
            assert {k: n for k, n in keys.items() if n > 1} == {}, "catalog rows duplicated"
            assert {p["payload"] for p in products} == set(DQM_DEPLOYMENTS), products
            for product in products:  # every catalogued product is where the catalog says
                assert storage.adler32(product["url"]) == product["adler32"], product["url"]
    finally:
        catalog.dispose()
    fault.notes.append(f"catalog: products of runs {numbers} unique and present in the outbox")
    retried = [t for t in _stage_ins(ids) if t.run_count >= 2]
    fault.notes.append(f"stage-in tasks that were retried across the restart: {len(retried)}")


def _stage_ins(flow_run_ids: list[uuid.UUID]) -> list[Any]:
    tasks = asyncio.run(final_task_runs(flow_run_ids))
    return [t for t in tasks if t.name.startswith("stage-in")]


# --------------------------------------------------------------------------------------------
# 5. The inbox fed faster than the pool drains it

# 12 files queue 48 DQM runs at once (each settling its file and replicating its products)
# for 4 pilots; P3S_FAULTS_INBOX_FILES=30 gives the longer flood.
INBOX_FILES = int(os.environ.get("P3S_FAULTS_INBOX_FILES", "12"))


def _dqm_runs_by_file() -> dict[tuple[str, str], list[Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from p3s.system.datatypes import DQM_DEPLOYMENTS

    async def _read() -> dict[tuple[str, str], list[Any]]:
        found: dict[tuple[str, str], list[Any]] = {}
        async with get_client() as client:
            for payload, deployment_name in DQM_DEPLOYMENTS.items():
                deployment = await client.read_deployment_by_name(deployment_name)
                offset = 0
                while True:
                    page = await client.read_flow_runs(
                        deployment_filter=DeploymentFilter(
                            id=DeploymentFilterId(any_=[deployment.id])
                        ),
                        limit=200,
                        offset=offset,
                    )
                    for run in page:
                        name = str((run.parameters or {}).get("file_url", "")).rpartition("/")[2]
                        found.setdefault((name, payload), []).append(run)
                    if len(page) < 200:
                        break
                    offset += 200
        return found

    return asyncio.run(_read())


def _drop_raw_files(settings: Any, names_and_runs: list[tuple[str, int]]) -> None:
    """Simulate small raw files and put each into the inbox complete at once (hidden under a
    temporary name, then renamed), as a transfer tool does."""
    from p3s.files import storage
    from p3s.files.lifecycle import Layout

    layout = Layout.of(settings)
    settings.scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.scratch) as tmp:
        for name, run in names_and_runs:
            _simulate(Path(tmp) / name, run)
        for name, _ in names_and_runs:
            storage.stage_out(Path(tmp) / name, layout.inbox.child(name))


def account_files(fault: FaultRecord, settings: Any, names: list[str]) -> None:
    """Wait until every file is settled and the backlog drained, then account for each file:
    in used/ once with each DQM flow Completed after one run, or quarantined with a reason."""
    from p3s.files.lifecycle import Layout
    from p3s.system.datatypes import DQM_DEPLOYMENTS

    layout = Layout.of(settings)

    def settled() -> bool:
        return all(layout.where(name) in ("used", "quarantine") for name in names)

    wait_for(settled, 900, "every file used or quarantined", interval_s=2)
    wait_for(lambda: not unfinished_runs(), 300, "the backlog drained", interval_s=2)
    fault.recovered_at = time.monotonic()
    fault.submitted = len(names)

    runs = _dqm_runs_by_file()
    for name in names:
        where = layout.where(name)
        per_payload = {p: runs.get((name, p), []) for p in DQM_DEPLOYMENTS}
        fault.executions += sum(len(r) for r in per_payload.values())
        twice = {p: len(r) for p, r in per_payload.items() if len(r) != 1}
        if twice:
            fault.duplicates.append(f"{name}: DQM runs per flow {twice}")
        states = {p: r[0].state.name for p, r in per_payload.items() if r}
        if where == "used" and set(states.values()) == {"Completed"} and not twice:
            fault.completed += 1
        else:
            reason_file = settings.data / "quarantine" / f"{name}.reason"
            reason = reason_file.read_text().strip() if reason_file.exists() else ""
            fault.failed[f"{where}: {reason[:160] or states}"] += 1
            if not reason:
                fault.unexplained.append(f"{name} in {where}/ with DQM states {states}")
    used = {p.name for p in (settings.data / "used").iterdir()}
    assert set(names) <= used  # each file in used/ (a folder holds a name once)
    assert not (layout.inbox.names() | layout.claimed.names()) & set(names)
    fault.notes.append(
        f"{len(names)} files -> {fault.executions} DQM runs; none left in the inbox or "
        "claimed/; no flow run left Scheduled, Pending or Running"
    )


def test_inbox_fed_faster_than_the_pool_drains_it(
    fault_system: FaultSystem, fault: FaultRecord
) -> None:
    """The inbox fed faster than the pool drains it"""
    from p3s.payloads.rawformat import raw_filename

    settings = fault_system.settings
    names = [raw_filename(700 + i, 1) for i in range(INBOX_FILES)]
    _drop_raw_files(settings, [(name, 700 + i) for i, name in enumerate(names)])
    fault.inject(f"{len(names)} reduced-geometry raw files dropped into the inbox at once")
    account_files(fault, settings, names)
    assert_accounted(fault)
    assert fault.completed == len(names), fault.failed


# --------------------------------------------------------------------------------------------
# 6. The Prefect server down while 20 files arrive in the inbox

SERVER_DOWN_FILES = 20


def test_prefect_server_down_while_20_files_arrive(
    fault_system: FaultSystem, fault: FaultRecord
) -> None:
    """The Prefect server down while 20 files arrive in the inbox"""
    from p3s.payloads.rawformat import raw_filename

    from p3s.files.lifecycle import Layout

    settings = fault_system.settings
    layout = Layout.of(settings)
    names = [raw_filename(800 + i, 1) for i in range(SERVER_DOWN_FILES)]
    assert control.server_process(settings).stop()
    down_at = time.monotonic()
    fault.inject("Prefect server stopped")
    _drop_raw_files(settings, [(name, 800 + i) for i, name in enumerate(names)])
    fault.inject(f"{len(names)} reduced-geometry raw files dropped into the inbox while down")
    time.sleep(5)  # the watcher scans every 0.5 s meanwhile; no announcement can succeed
    assert not layout.announced.names() & set(names)
    claimed = len(layout.claimed.names() & set(names))
    fault.notes.append(
        f"while the server was down: {claimed} claimed, none announced, "
        f"{len(layout.inbox.names() & set(names))} still in the inbox"
    )
    control.start_server(settings, _noop)
    fault.inject(f"Prefect server started again after {time.monotonic() - down_at:.0f} s down")
    start_again_what_the_outage_ended(fault, settings)
    account_files(fault, settings, names)
    assert_accounted(fault)
    assert fault.completed == len(names), fault.failed
