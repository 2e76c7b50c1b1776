"""Flow runs on local Dask pilots: warm reuse, priorities, jobtype limits, cancellation from the
API (as the UI does it), a killed pilot, and the pilot counts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from p3s.jobs.model import P3SJob
from tests.conftest import wait_for_runs
from tests.pilots.conftest import PILOT_PAYLOADS, Pilots, cancel, run, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
MARK = str(PILOT_PAYLOADS / "mark.sh")


def job(name: str, log: Path, *, sleep: float = 0, jobtype: str = "pilot-test", priority=5):
    return P3SJob(
        name=name,
        timeout=120,
        jobtype=jobtype,
        payload=MARK,
        priority=priority,
        env={"P3S_EXEC_LOG": str(log), "P3S_TAG": name, "P3S_SLEEP": str(sleep)},
    )


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def records(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


async def submit(pilots: Pilots, jobs: list[P3SJob]):
    from p3s.jobs.client import submit_jobs

    return await submit_jobs(jobs, deployment=pilots.deployment)


def test_runs_execute_in_turn_on_a_warm_pilot(local_pilots: Pilots, tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    runs = run(submit(local_pilots, [job(f"warm-{i}", log) for i in range(4)]))
    done = run(wait_for_runs([r.id for r in runs], 180))
    assert [r.state.type.value for r in done] == ["COMPLETED"] * 4, [r.state for r in done]
    starts = [r for r in records(log) if r[1] == "start"]
    assert sorted(r[0] for r in starts) == [f"warm-{i}" for i in range(4)]
    # Every payload ran on a pilot (a Dask worker), and pilots were reused: 4 runs, <= 2 pilots.
    pilots = {r[3] for r in starts}
    assert "none" not in pilots and len(pilots) <= 2
    counts = local_pilots.counts()
    assert counts["pool"] == local_pilots.pool and counts["total"] >= 1
    assert counts["total"] == counts["starting"] + counts["idle"] + counts["running"]


def test_the_counts_reach_the_prefect_variable(local_pilots: Pilots) -> None:
    """What a content app on another host reads: the pilots held, stopped and lost are
    published at once (idle and running at most every COUNTS_PUBLISH_SECONDS)."""
    from p3s.pilots.status import read_status_from_api

    def same_pilots() -> bool:
        published = run(read_status_from_api(local_pilots.pool))
        here = local_pilots.counts()
        return published is not None and all(
            getattr(published, k) == here.get(k) for k in ("pool", "total", "stopped", "lost")
        )

    wait_for(same_pilots, 60, "the pilot counts in the Prefect variable")
    published = run(read_status_from_api(local_pilots.pool))
    assert published is not None and published.total >= 1
    assert published.total == published.starting + published.idle + published.running


def test_a_scheduled_run_is_dispatched_on_its_event(local_pilots: Pilots, tmp_path: Path) -> None:
    # The fallback poll is 30 s here: the worker fetched this run because the server's
    # prefect.flow-run.Scheduled event told it, and its log says so.
    wait_for(lambda: local_pilots.counts().get("idle", 0) >= 1, 120, "an idle pilot")
    # A pilot that has just joined makes the worker look for runs once more at its next
    # scaling pass (1 s here): let that pass, so that nothing but the event can fetch the run.
    time.sleep(5)
    (submitted,) = run(submit(local_pilots, [job("on-event", tmp_path / "exec.log")]))
    (done,) = run(wait_for_runs([submitted.id], 180))
    assert done.state.type.value == "COMPLETED", done.state
    dispatched = [ln for ln in local_pilots.log().splitlines() if str(submitted.id) in ln]
    # Other wakes (a slot freed, a pilot joined) may share the fetch; the event is among them.
    on_event = [ln for ln in dispatched if "dispatched on" in ln]
    assert any("event prefect.flow-run.Scheduled" in ln for ln in on_event), dispatched


def test_higher_priority_runs_first(local_pilots: Pilots, tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    # Occupy every slot (one or two pilots), then queue a low and a high priority job while the
    # first blocker runs: high starts first. The blockers end 14 s apart, so that slots free one
    # at a time (two freed at once would start both jobs together, in no defined order).
    blockers = run(
        submit(
            local_pilots,
            [job(f"block-{i}", log, sleep=s, priority=10) for i, s in enumerate((6, 20))],
        )
    )
    wait_for(lambda: any(r[1] == "start" for r in records(log)), 120, "a blocker started")
    low = run(submit(local_pilots, [job("low", log, priority=1)]))
    high = run(submit(local_pilots, [job("high", log, priority=9)]))
    run(wait_for_runs([r.id for r in blockers + low + high], 180))
    order = [r[0] for r in records(log) if r[1] == "start" and r[0] in ("low", "high")]
    assert order == ["high", "low"]


def test_jobtype_limit_keeps_runs_of_a_type_apart(local_pilots: Pilots, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async def limit() -> None:
        async with get_client() as client:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name="jobtype:limited", limit=1)
            )

    run(limit())
    time.sleep(6)  # the worker reads the limits at most every 5 s
    log = tmp_path / "exec.log"
    runs = run(
        submit(local_pilots, [job(f"lim-{i}", log, sleep=1.5, jobtype="limited") for i in range(3)])
    )
    done = run(wait_for_runs([r.id for r in runs], 180))
    assert all(r.state.type.value == "COMPLETED" for r in done)
    spans = {}
    for tag, what, when, *_ in records(log):
        spans.setdefault(tag, {})[what] = float(when)
    ordered = sorted(spans.values(), key=lambda s: s["start"])
    for before, after in zip(ordered, ordered[1:], strict=False):
        assert after["start"] >= before["end"], spans


def test_cancelling_stops_the_payload_on_its_pilot(local_pilots: Pilots, tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    (flow_run,) = run(submit(local_pilots, [job("cancel-me", log, sleep=300)]))
    start = wait_for(lambda: records(log), 120, "the payload started")[0]
    payload_pid = int(start[5])
    assert alive(payload_pid)

    cancel(flow_run.id)
    (done,) = run(wait_for_runs([flow_run.id], 120))
    assert done.state.type.value == "CANCELLED", done.state
    wait_for(lambda: not alive(payload_pid), 30, "the payload stopped")
    assert not any(r[1] == "end" for r in records(log))


def test_a_killed_pilot_is_lost_and_its_run_completes_elsewhere(
    local_pilots: Pilots, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    lost_before = local_pilots.counts().get("lost", 0)
    (flow_run,) = run(submit(local_pilots, [job("survivor", log, sleep=3)]))
    start = wait_for(lambda: records(log), 120, "the payload started")[0]
    # payload -> flow-run child -> fork server -> Dask worker (the pilot): kill the pilot.
    child = psutil.Process(int(start[5])).parent()
    pilot = child.parent().parent()
    assert "distributed" in " ".join(pilot.cmdline()) or "spawn" in " ".join(pilot.cmdline())
    os.kill(pilot.pid, signal.SIGKILL)
    (done,) = run(wait_for_runs([flow_run.id], 180))
    assert done.state.type.value == "COMPLETED", done.state
    starts = [r for r in records(log) if r[1] == "start"]
    ends = [r for r in records(log) if r[1] == "end"]
    # Executed twice in turn (the first killed before its end), finished once.
    assert len(starts) == 2 and len(ends) == 1
    assert float(ends[0][2]) > float(starts[1][2])
    wait_for(lambda: local_pilots.counts().get("lost", 0) > lost_before, 30, "the loss counted")


def test_a_killed_pilot_worker_leaves_no_run_behind(local_pilots: Pilots, tmp_path: Path) -> None:
    """SIGKILL of the pilot worker itself (its Dask scheduler and local pilots die with it):
    the restarted worker puts the run it held back to Scheduled, and it completes once."""
    from p3s.stack import control

    log = tmp_path / "exec.log"
    (flow_run,) = run(submit(local_pilots, [job("orphan", log, sleep=3)]))
    start = wait_for(lambda: records(log), 120, "the payload started")[0]
    payload_pid = int(start[5])
    worker = control.pilot_worker_process(local_pilots.settings).process()
    assert worker is not None
    worker.kill()
    wait_for(lambda: not alive(payload_pid), 30, "the payload stopped with its pilot")
    control.start_pilot_worker(local_pilots.settings, lambda _: None, extra_env=local_pilots.env)
    (done,) = run(wait_for_runs([flow_run.id], 240))
    assert done.state.type.value == "COMPLETED", done.state
    starts = [r for r in records(log) if r[1] == "start"]
    ends = [r for r in records(log) if r[1] == "end"]
    assert len(starts) == 2 and len(ends) == 1  # the first execution died unfinished
    assert float(ends[0][2]) > float(starts[1][2])

    async def messages() -> list[str]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return [st.message or "" for st in await client.read_flow_run_states(flow_run.id)]

    assert any("stopped while it held the run" in m for m in run(messages()))


def test_a_run_whose_child_ends_before_it_starts_is_put_back_then_crashed(
    local_pilots: Pilots,
) -> None:
    """A child that ends before its engine sets Running (the Prefect API unreachable, here a
    flow that cannot be loaded) executed nothing: the run goes back to Scheduled twice, then
    ends Crashed saying why, instead of being retried for ever."""
    from prefect.client.orchestration import get_client

    from p3s.pilots.outcomes import NOT_STARTED_RETRIES

    async def create() -> object:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("p3s-unloadable")
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name=local_pilots.pool,
                entrypoint="flows/no_such_module.py:no_such_flow",
                work_pool_name=local_pilots.pool,
            )
            return await client.create_flow_run_from_deployment(deployment_id)

    async def history(run_id) -> list:
        async with get_client() as client:
            return await client.read_flow_run_states(run_id)

    submitted = run(create())
    (done,) = run(wait_for_runs([submitted.id], 180))
    assert done.state.type.value == "CRASHED", done.state
    assert "exited with code 1" in done.state.message, done.state.message
    put_back = [
        s for s in run(history(submitted.id)) if "before the run started" in (s.message or "")
    ]
    assert len(put_back) == NOT_STARTED_RETRIES, [s.message for s in put_back]
    assert all(s.name == "AwaitingRetry" for s in put_back)
    assert done.run_count == 0  # the engine never ran it


CHILD_REQUESTS = r"""
import httpx, json, sys
import p3s.pilots.preload  # noqa: F401 - what a pilot's fork server imports first
from prefect.settings import get_current_settings

seen = []
original = httpx.Client.send
httpx.Client.send = lambda self, request, *a, **k: (seen.append(request.url.path),
                                                    original(self, request, *a, **k))[1]
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:  # as the engine of a flow-run child
    client._client.post("/flow_runs/filter", json={"limit": 1})
client_settings = get_current_settings().client
print(json.dumps({"requests": seen, "version_check": client_settings.server_version_check_enabled,
                  "csrf": client_settings.csrf_support_enabled}))
"""


def test_a_pilots_fork_server_does_the_clients_handshakes_once_for_all_its_children(
    stack,
) -> None:
    """The fork server checks the server's version and CSRF use itself, so a client in a
    flow-run child goes straight to its own requests (no /admin/version, no /csrf-token)."""
    import json
    import subprocess
    import sys

    env = {**os.environ, **stack.env, "PREFECT_API_URL": stack.api_url}
    out = subprocess.run(
        [sys.executable, "-c", CHILD_REQUESTS], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["requests"] == ["/api/flow_runs/filter"]
    assert report["version_check"] is False and report["csrf"] is False
