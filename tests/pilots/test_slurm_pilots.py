"""DQM jobs on pilots that are real Slurm batch jobs (SLURMCluster), and a pilot's batch job
cancelled (scancel) while it runs a payload: the run completes elsewhere, once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from p3s.jobs.model import P3SJob
from tests.conftest import wait_for_runs
from tests.pilots.conftest import PILOT_PAYLOADS, Pilots, run, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
MARK = str(PILOT_PAYLOADS / "mark.sh")


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from p3s.payloads.simulate import simulate_file

    path = tmp_path_factory.mktemp("raw") / "np04_raw_run004201_0001_dl1.h5"
    simulate_file(path, run=4201, subrun=1, n_events=1, n_ticks=2000, seed=4)
    return path


def dqm_job(name: str, payload: str, raw: Path, outbox: Path, log: Path, sleep: float = 0):
    return P3SJob(
        name=name,
        timeout=300,
        jobtype="dqm",
        payload=MARK,
        priority=5,
        env={
            "P3S_EXEC_LOG": str(log),
            "P3S_TAG": name,
            "P3S_SLEEP": str(sleep),
            "P3S_DQM": payload,
            "P3S_INPUT_FILE": str(raw),
            "P3S_OUTPUT_DIR": str(outbox),
        },
    )


def records(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


async def submit(pilots: Pilots, jobs: list[P3SJob]):
    from p3s.jobs.client import submit_jobs

    return await submit_jobs(jobs, deployment=pilots.deployment)


async def runs_in_state(pool: str, state: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )

    async with get_client() as client:
        return await client.count_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))
            ),
        )


def test_dqm_jobs_run_on_slurm_pilots(slurm_pilots: Pilots, raw_file: Path, tmp_path) -> None:
    log, outbox = tmp_path / "exec.log", tmp_path / "outbox"
    jobs = [dqm_job(p, p, raw_file, outbox, log) for p in ("beam", "tpc_monitor")]
    runs = run(submit(slurm_pilots, jobs))
    done = run(wait_for_runs([r.id for r in runs], 300))
    assert [r.state.type.value for r in done] == ["COMPLETED"] * 2, [r.state for r in done]
    # Each payload ran inside a Slurm batch job (a pilot), and wrote its products.
    for rec in records(log):
        assert rec[4] != "none", rec
    assert (outbox / "run004201" / "0001" / "beam").is_dir()
    assert (outbox / "run004201" / "0001" / "tpc_monitor").is_dir()
    assert slurm_pilots.counts()["cluster"] == "slurm"


def test_scancel_of_a_busy_pilot(slurm_pilots: Pilots, raw_file: Path, tmp_path) -> None:
    log, outbox = tmp_path / "exec.log", tmp_path / "outbox"
    lost_before = slurm_pilots.counts().get("lost", 0)
    (flow_run,) = run(submit(slurm_pilots, [dqm_job("doomed", "beam", raw_file, outbox, log, 8)]))
    first = wait_for(lambda: records(log), 240, "the payload started on a pilot")[0]
    batch_job = first[4]
    assert batch_job != "none"
    # Slurm signals the job's processes in turn: here the worst order, the payload first (its
    # death must not become the run's outcome), then, 0.5 s later, the rest of the job.
    os.killpg(int(first[5]), signal.SIGTERM)
    time.sleep(0.5)
    subprocess.run(["scancel", batch_job], check=True)

    (done,) = run(wait_for_runs([flow_run.id], 300))
    assert done.state.type.value == "COMPLETED", done.state
    starts = [r for r in records(log) if r[1] == "start"]
    ends = [r for r in records(log) if r[1] == "end"]
    # Two executions in turn, on two batch jobs; only the final one reached its end ...
    assert len(starts) == 2 and starts[1][4] not in ("none", batch_job), starts
    assert len(ends) == 1 and ends[0][4] == starts[1][4], ends
    # ... and only it wrote products: every product is newer than the final execution's start.
    products = [p for p in (outbox / "run004201" / "0001" / "beam").rglob("*") if p.is_file()]
    assert products
    assert all(p.stat().st_mtime >= float(starts[1][2]) for p in products)
    assert run(runs_in_state(slurm_pilots.pool, "RUNNING")) == 0
    wait_for(lambda: slurm_pilots.counts().get("lost", 0) > lost_before, 60, "the loss counted")


def test_dqm_flows_run_on_slurm_pilots(slurm_pilots: Pilots, raw_file: Path) -> None:
    """The DQM flows themselves (flows/dqm.py) as runs of their deployments on the pilot pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def go():
        async with get_client() as client:
            runs = []
            for flow_name in ("dqm-beam", "dqm-tpc-monitor"):
                deployment = await client.read_deployment_by_name(
                    f"{flow_name}/{slurm_pilots.pool}"
                )
                runs.append(
                    await client.create_flow_run_from_deployment(
                        deployment.id, parameters={"file_url": str(raw_file), "n_events": 1}
                    )
                )
            done = await wait_for_runs([r.id for r in runs], 300)
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs]))
            )
            return done, [log.message for log in logs]

    done, messages = run(go())
    assert [r.state.type.value for r in done] == ["COMPLETED"] * 2, [r.state for r in done]
    assert sum("p3s pilot SLURMCluster-" in m for m in messages) == 2
