"""p3s jobs as flow runs on a real Prefect server (SQLite and PostgreSQL), run by a real worker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from p3s.jobs.model import P3SJob, expand_jobs, load_jobs
from tests.conftest import SCRIPTS, Stack, wait_for_runs

pytestmark = pytest.mark.integration
REFERENCE_JOBS = Path(__file__).resolve().parents[1] / "data" / "p3s-reference" / "jobs"
BIN = Path(sys.executable).parent


def job(name: str, payload: str, timeout: int = 60, **env: str) -> P3SJob:
    return P3SJob(
        name=name,
        timeout=timeout,
        jobtype="test",
        payload=payload,
        priority=3,
        env={"P3S_INPUT_FILE": "none", **env},
    )


def submit_and_wait(jobs: list[P3SJob], timeout_s: float = 240) -> list:
    from p3s.jobs.client import submit_jobs

    async def _go():
        runs = await submit_jobs(jobs)
        return await wait_for_runs([r.id for r in runs], timeout_s)

    return asyncio.run(_go())


def show(run_id) -> tuple:
    from p3s.jobs.client import show_job

    return asyncio.run(show_job(str(run_id)))


def run_logs(run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def _logs():
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
        return [log.message for log in logs]

    return asyncio.run(_logs())


def test_job_sees_its_env_and_output_reaches_run_logs_and_files(stack: Stack) -> None:
    (run,) = submit_and_wait(
        [job("env-check", f"{SCRIPTS}/show_env.sh first second", P3S_TEST_VALUE="hello p3s")]
    )
    assert run.state.type.value == "COMPLETED", run.state.message
    assert "jobtype:test" in run.tags and run.name == "env-check"
    assert run.work_queue_name == "priority-3"
    view, _ = show(run.id)
    assert view.p3s_state == "finished" and view.errcode == 0
    stdout = Path(view.stdout).read_text()
    assert f"P3S_JOB_UUID={run.id}" in stdout
    assert "P3S_TEST_VALUE=hello p3s" in stdout
    assert "args=first second" in stdout
    assert Path(view.stderr).read_text().strip() == "to stderr"
    # The payload's output is streamed into the Prefect run logs too (logs arrive in batches).
    for _ in range(20):
        messages = run_logs(run.id)
        if any("P3S_TEST_VALUE=hello p3s" in m for m in messages):
            break
        asyncio.run(asyncio.sleep(0.5))
    assert any("P3S_TEST_VALUE=hello p3s" in m for m in messages)
    assert any("[stderr] to stderr" in m for m in messages)


def test_failing_payload_fails_the_run_with_its_exit_code(stack: Stack) -> None:
    (run,) = submit_and_wait([job("fails", f"{SCRIPTS}/exit_with.sh 3")])
    assert run.state.type.value == "FAILED"
    assert "code 3" in run.state.message
    view, _ = show(run.id)
    assert view.p3s_state == "failed" and view.errcode == 3


def test_time_limit_kills_a_runaway_payload(stack: Stack, tmp_path: Path) -> None:
    pid_file = tmp_path / "runaway.pid"
    (run,) = submit_and_wait(
        [job("runaway", f"{SCRIPTS}/runaway.sh", timeout=3, P3S_PID_FILE=str(pid_file))]
    )
    assert run.state.type.value == "FAILED" and run.state.name == "TimeLimit"
    assert "time limit of 3 s" in run.state.message and "errcode 77" in run.state.message
    view, _ = show(run.id)
    assert view.p3s_state == "timelimit" and view.errcode == 77
    # The payload ignored SIGTERM: SIGKILL must have ended it.
    assert not psutil.pid_exists(int(pid_file.read_text()))


def test_payload_outside_the_roots_is_refused_before_it_runs(stack: Stack, tmp_path: Path) -> None:
    # submit_jobs does not vet payloads by default (p3s job submit does): these runs reach the
    # flow, which must refuse them itself, as it does for runs created by any other means.
    marker = tmp_path / "ran"
    outside = tmp_path / "outside.sh"
    outside.write_text(f"#!/bin/sh\ntouch {marker}\n")
    outside.chmod(0o755)
    escape = f"{SCRIPTS}/{os.path.relpath(outside, SCRIPTS)}"  # climbs out of a root with ..
    shell = job("shell", f"{SCRIPTS}/show_env.sh", P3S_EXECMODE="SHELL")
    runs = submit_and_wait([job("outside", str(outside)), job("escape", escape), shell])
    for run in runs:
        assert run.state.type.value == "FAILED" and run.state.name == "Refused", run.name
        assert show(run.id)[0].p3s_state == "nonstarter"
    messages = {run.name: run.state.message for run in runs}
    assert "outside the payload roots" in messages["outside"]
    assert "outside the payload roots" in messages["escape"]
    assert "P3S_EXECMODE=SHELL" in messages["shell"]
    assert not marker.exists()


def test_reference_jobs_run(stack: Stack) -> None:
    jobs = load_jobs(REFERENCE_JOBS / "three_simple_jobs.json")
    runs = submit_and_wait(expand_jobs(jobs, filenames=["a.h5"]))
    assert sorted(r.state.type.value for r in runs) == ["COMPLETED"] * 3
    printenv = next(r for r in runs if r.name == "printenv")
    assert "P3S_INPUT_FILE=a.h5" in Path(show(printenv.id)[0].stdout).read_text()
    assert printenv.work_queue_name == "priority-10"

    def job_list(*args: str, columns: int = 80) -> str:
        listed = subprocess.run(
            [str(BIN / "p3s"), "job", "list", "--jobtype", "test", "--state", "finished", *args],
            env={**os.environ, **stack.env, "COLUMNS": str(columns)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        return listed.stdout

    rows = [json.loads(line) for line in job_list("--json").splitlines()]
    assert {str(r.id) for r in runs} <= {row["id"] for row in rows}
    assert {row["p3s_state"] for row in rows} == {"finished"}
    # The table keeps every id whole, whatever the terminal's width; a wide one shows more.
    for columns, headers in ((80, ["job id", "p3s", "prio", "name"]), (160, ["Prefect"])):
        table = job_list(columns=columns)
        assert all(len(line) <= columns for line in table.splitlines())
        assert all(str(r.id) in table for r in runs)
        header = next(line for line in table.splitlines() if "job id" in line)
        assert all(h in header for h in headers)


def test_fifty_jobs_at_once_all_finish_exactly_once(stack: Stack, tmp_path: Path) -> None:
    record = tmp_path / "executions.txt"
    jobs = expand_jobs(
        [job("many", f"{SCRIPTS}/record_uuid.sh", P3S_RECORD_FILE=str(record))], replicas=50
    )
    runs = submit_and_wait(jobs, timeout_s=600)
    assert len(runs) == 50
    assert [r.state.type.value for r in runs] == ["COMPLETED"] * 50
    executions = record.read_text().split()
    assert sorted(executions) == sorted(str(r.id) for r in runs)  # each once, none lost


def test_prefect_deployment_run_starts_a_job(stack: Stack) -> None:
    payload = {
        "name": "via-prefect-cli",
        "timeout": "30",
        "jobtype": "cli",
        "priority": "2",
        "payload": f"{SCRIPTS}/show_env.sh",
        "state": "defined",
        "env": {"P3S_INPUT_FILE": "x.h5"},
    }
    result = subprocess.run(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            "p3s-job/adhoc",
            "--param",
            f"job={json.dumps(payload)}",
        ],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = next(line.split()[-1] for line in result.stdout.splitlines() if "UUID" in line)
    (run,) = asyncio.run(wait_for_runs([run_id]))
    assert run.state.type.value == "COMPLETED", run.state.message
    assert run.name == "via-prefect-cli" and "jobtype:cli" in run.tags


def test_cli_refuses_a_malformed_job_file_and_creates_nothing(stack: Stack, tmp_path: Path) -> None:
    from p3s.jobs.client import list_jobs

    before = len(asyncio.run(list_jobs(limit=1000)))
    bad = tmp_path / "bad.json"
    bad.write_text(
        '[\n  {"name": "ok", "timeout": 5, "jobtype": "t", "payload": "/bin/true"},\n'
        '  {"name": "bad", "timeout": "soon", "jobtype": "t", "payload": "/bin/true"}\n]'
    )
    result = subprocess.run(
        [str(BIN / "p3s"), "job", "submit", str(bad)],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "line 3" in result.stderr and "job [1]" in result.stderr and "timeout" in result.stderr
    assert len(asyncio.run(list_jobs(limit=1000))) == before


def test_cli_refuses_bad_env_names_and_payloads_outside_the_roots_and_creates_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    from p3s.jobs.client import list_jobs

    before = len(asyncio.run(list_jobs(limit=1000)))
    marker = tmp_path / "ran"
    outside = tmp_path / "outside.sh"
    outside.write_text(f"#!/bin/sh\ntouch {marker}\n")
    outside.chmod(0o755)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(
        "[\n"
        f'  {{"name": "ok", "timeout": 5, "jobtype": "t", "payload": "{SCRIPTS}/show_env.sh"}},\n'
        '  {"name": "ok-too", "timeout": 5, "jobtype": "t", "payload": "/bin/true",\n'
        '   "env": {"X": "a; touch /tmp/never $(reboot)"}},\n'
        '  {"name": "bad-env", "timeout": 5, "jobtype": "t", "payload": "/bin/true",\n'
        '   "env": {"BAD NAME;rm -rf /": "x"}},\n'
        f'  {{"name": "outside", "timeout": 5, "jobtype": "t", "payload": "{outside}"}}\n'
        "]\n"
    )
    result = subprocess.run(
        [str(BIN / "p3s"), "job", "submit", str(jobs)],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    refusal = result.stderr[result.stderr.index("refused: ") :].splitlines()
    assert len(refusal) == 2, result.stderr  # every fault of the file, and only those
    assert refusal[0] == (
        f"refused: {jobs}: line 6: job [2] field 'env[\"BAD NAME;rm -rf /\"]': not a valid "
        "environment variable name (letters, digits and '_', not starting with a digit)"
    )
    assert refusal[1].startswith(
        f"{jobs}: line 7: job [3] field 'payload': payload '{outside.resolve()}' is outside the "
        "payload roots ("
    )
    assert "job [0]" not in result.stderr and "job [1]" not in result.stderr
    assert len(asyncio.run(list_jobs(limit=1000))) == before  # no job of the file submitted
    assert not marker.exists()


def test_cancel_stops_a_running_payload(stack: Stack, tmp_path: Path) -> None:
    from p3s.jobs.client import cancel_job, submit_jobs

    pid_file = tmp_path / "running.pid"
    (run,) = asyncio.run(
        submit_jobs(
            [job("to-cancel", f"{SCRIPTS}/runaway.sh", timeout=600, P3S_PID_FILE=str(pid_file))]
        )
    )
    for _ in range(120):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        asyncio.run(asyncio.sleep(0.5))
    payload_pid = int(pid_file.read_text())
    assert psutil.pid_exists(payload_pid)
    asyncio.run(cancel_job(str(run.id)))
    (final,) = asyncio.run(wait_for_runs([run.id], 120))
    assert final.state.type.value == "CANCELLED"
    assert show(run.id)[0].p3s_state == "cancelled"
    for _ in range(40):  # the payload ignores SIGTERM: its group gets SIGKILL after the grace
        if not psutil.pid_exists(payload_pid):
            break
        asyncio.run(asyncio.sleep(0.25))
    assert not psutil.pid_exists(payload_pid)


def test_higher_priority_is_served_first(stack: Stack, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from p3s.jobs.client import submit_jobs

    pool = stack.settings.pool.name
    record = tmp_path / "order.txt"

    async def _set(**update) -> None:
        async with get_client() as client:
            await client.update_work_pool(pool, WorkPoolUpdate(**update))

    jobs = [
        P3SJob(
            name=f"prio-{p}",
            timeout=60,
            jobtype="prio",
            priority=p,
            payload=f"{SCRIPTS}/record_uuid.sh",
            env={"P3S_RECORD_FILE": str(record)},
        )
        for p in (0, 5, 10)
    ]
    # Queue all three while the pool is paused, then let one run at a time.
    asyncio.run(_set(is_paused=True, concurrency_limit=1))
    try:
        runs = asyncio.run(submit_jobs(jobs))
        asyncio.run(_set(is_paused=False))
        asyncio.run(wait_for_runs([r.id for r in runs]))
    finally:
        asyncio.run(_set(is_paused=False, concurrency_limit=stack.settings.pool.concurrency))
    by_id = {str(r.id): r.name for r in runs}
    assert [by_id[line] for line in record.read_text().split()] == ["prio-10", "prio-5", "prio-0"]


def small_raw_file(folder: Path, run: int = 7) -> Path:
    from p3s.payloads.rawformat import Geometry, raw_filename
    from p3s.payloads.simulate import simulate_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / raw_filename(run, 1)
    simulate_file(
        path,
        run=run,
        subrun=1,
        n_events=2,
        n_ticks=1500,
        seed=run,
        geometry=Geometry.reduced(n_apas=1, fibers_per_apa=2),
    )
    return path


def test_p3s_reference_dqm_jobs_run_as_they_are(stack: Stack) -> None:
    """evdisp_main.json and monitor_main.json, CERN paths and all, run the real payloads."""
    data = stack.settings.data
    raw = small_raw_file(data / "input")
    jobs = [
        *load_jobs(REFERENCE_JOBS / "evdisp_main.json"),
        *load_jobs(REFERENCE_JOBS / "monitor_main.json"),
    ]
    runs = submit_and_wait(expand_jobs(jobs, filenames=[raw.name]))
    for run in runs:
        assert run.state.type.value == "COMPLETED", (run.name, run.state.message)
    evdisp = data / "evdisp" / "run000007" / "0001" / "evdisplay"
    monitor = data / "monitor" / "run000007" / "0001" / "tpc_monitor"
    for products, name in ((evdisp, "evdisplay"), (monitor, "tpc_monitor")):
        summary = json.loads((products / "summary.json").read_text())
        assert summary["run"] == 7 and (products / f"{name}.root").exists()


def test_every_dqm_payload_runs_as_a_p3s_job(stack: Stack, tmp_path: Path) -> None:
    from p3s.payloads import PAYLOADS as DQM_PAYLOADS

    from p3s.stack.demo import dqm_jobs

    raw = small_raw_file(tmp_path / "raw", run=8)
    runs = submit_and_wait(dqm_jobs(raw, tmp_path / "outbox", n_events=2))
    assert [r.state.type.value for r in runs] == ["COMPLETED"] * len(DQM_PAYLOADS)
    for name in DQM_PAYLOADS:
        products = tmp_path / "outbox" / "run000008" / "0001" / name
        assert json.loads((products / "summary.json").read_text())["payload"] == name


def test_a_corrupt_input_fails_its_job_once_with_the_fault(stack: Stack, tmp_path: Path) -> None:
    from p3s.stack.demo import dqm_jobs

    raw = small_raw_file(tmp_path / "raw", run=9)
    with open(raw, "r+b") as handle:  # damage the HDF5 superblock
        handle.write(b"\0" * 64)
    (run,) = submit_and_wait(dqm_jobs(raw, tmp_path / "outbox")[3:])
    assert run.state.type.value == "FAILED" and "code 65" in run.state.message
    assert run.run_count == 1  # a corrupt file is a payload error: never retried
    assert raw.name in Path(show(run.id)[0].stderr).read_text()


def test_cli_submit_with_filenames_replicas_and_wait(stack: Stack) -> None:
    result = subprocess.run(
        [
            str(BIN / "p3s"),
            "job",
            "submit",
            str(REFERENCE_JOBS / "three_simple_jobs.json"),
            "--filename",
            "a.h5,b.h5",
            "-N",
            "2",
            "--dunetpcver",
            "v9",
            "--wait",
        ],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "12 job(s) submitted" in result.stdout
    assert result.stdout.count(": finished") == 12
