"""What ``p3s demo`` shows a newcomer: a simulated run through every DQM payload, dropped
into the inbox (DQM flow runs created by event triggers) or submitted as p3s jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p3s.jobs.model import P3SJob
from p3s.payloads import PAYLOADS
from p3s.system.settings import PACKAGED_PAYLOADS, Settings

DQM_RUNNER = PACKAGED_PAYLOADS / "bin" / "p3s-dqm"


def dqm_jobs(raw_file: Path, outbox: Path, n_events: int | None = None) -> list[P3SJob]:
    """One p3s job per DQM payload on one raw file; products go to the outbox."""
    env = {"P3S_INPUT_FILE": str(raw_file), "P3S_OUTPUT_DIR": str(outbox)}
    if n_events is not None:
        env["P3S_NEVENTS"] = str(n_events)
    return [
        P3SJob(
            name=f"dqm:{name}:{raw_file.name}",
            timeout=1800,
            jobtype=f"dqm-{name}",
            payload=f"{DQM_RUNNER} {name}",
            priority=5,
            env=env,
        )
        for name in PAYLOADS
    ]


def simulate_run(settings: Settings, run: int, n_events: int, seed: int) -> Path:
    """Write a reduced-geometry raw file for ``run`` into the data root's ``raw/`` folder."""
    from p3s.payloads.rawformat import raw_filename
    from p3s.payloads.simulate import simulate_file

    folder = settings.data / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / raw_filename(run, 1)
    simulate_file(path, run=run, subrun=1, n_events=n_events, seed=seed)
    return path


# --------------------------------------------------------------------------------------------
# The inbox path: a file dropped in the inbox, DQM flow runs created by event triggers


def free_subrun(settings: Settings, run: int) -> int:
    """The first subrun of ``run`` whose raw file name no life-cycle folder holds yet, so that
    a demo run again on the same home delivers a new file, not a second copy of a used one."""
    from p3s.files.lifecycle import Layout
    from p3s.payloads.rawformat import raw_filename

    layout = Layout.of(settings)
    taken = set().union(
        *(layout.area(s).names() for s in ("inbox", "claimed", "used", "quarantine"))
    )
    return next(sub for sub in range(1, 10_000) if raw_filename(run, sub) not in taken)


def drop_into_inbox(
    settings: Settings, run: int, n_events: int, seed: int, subrun: int | None = None
) -> str:
    """Simulate a reduced-geometry raw file and put it into the inbox complete, in one step.

    The file is written in scratch, then staged out to the inbox under a hidden temporary name
    and renamed (the scan ignores hidden names), as a transfer service would. ``subrun`` None:
    the first one of ``run`` not delivered before (:func:`free_subrun`). Returns its name.
    """
    import tempfile

    from p3s.files import storage
    from p3s.files.lifecycle import Layout
    from p3s.payloads.rawformat import raw_filename
    from p3s.payloads.simulate import simulate_file

    if subrun is None:
        subrun = free_subrun(settings, run)
    name = raw_filename(run, subrun)
    settings.scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-", dir=settings.scratch) as tmp:
        local = Path(tmp) / name
        simulate_file(local, run=run, subrun=subrun, n_events=n_events, seed=seed)
        storage.stage_out(local, Layout.of(settings).inbox.child(name))
    return name


async def dqm_runs_of(file_name: str, deployments: dict[str, str]) -> dict[str, Any]:
    """The newest flow run of each DQM deployment whose ``file_url`` names ``file_name``.

    Args:
        file_name: the raw file's name.
        deployments: payload -> deployment (``flow/deployment``), as a data type feeds them.

    Returns:
        payload -> FlowRun, for the runs found so far.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    found: dict[str, Any] = {}
    async with get_client() as client:
        for payload, deployment_name in deployments.items():
            deployment = await client.read_deployment_by_name(deployment_name)
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=200,
            )
            for run in runs:
                url = str((run.parameters or {}).get("file_url", ""))
                if url.rpartition("/")[2] == file_name:
                    found[payload] = run
                    break
    return found


async def wait_for_dqm_runs(
    file_name: str,
    deployments: dict[str, str],
    *,
    timeout_s: float = 900.0,
    poll_s: float = 1.0,
    until: str = "final",
) -> dict[str, Any]:
    """Wait until every DQM deployment has a run for ``file_name`` that is ``until``.

    Args:
        until: "final" (Completed, Failed, Crashed, Cancelled) or "started" (Running or later).

    Raises:
        TimeoutError: naming the runs still missing or unfinished.
    """
    import asyncio
    import time

    from prefect.client.schemas.objects import StateType

    final = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
    deadline = time.monotonic() + timeout_s
    while True:
        runs = await dqm_runs_of(file_name, deployments)
        if until == "final":
            done = {p: r for p, r in runs.items() if r.state and r.state.type in final}
        else:
            done = {p: r for p, r in runs.items() if r.start_time is not None}
        if len(done) == len(deployments):
            return runs
        if time.monotonic() > deadline:
            states = {p: (r.state.name if r.state else None) for p, r in runs.items()}
            missing = sorted(set(deployments) - set(runs))
            raise TimeoutError(
                f"DQM runs of {file_name} not {until} after {timeout_s:.0f} s: "
                f"states {states}, no run yet for {missing}"
            )
        await asyncio.sleep(poll_s)


def wait_until_settled(settings: Settings, file_name: str, timeout_s: float = 300.0) -> str:
    """Wait until the file left claimed/ for used/ or quarantine/; returns that folder."""
    import time

    from p3s.files.lifecycle import Layout

    layout = Layout.of(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        where = layout.where(file_name)
        if where in ("used", "quarantine"):
            return where
        if time.monotonic() > deadline:
            raise TimeoutError(f"{file_name} is still in {where}/ after {timeout_s:.0f} s")
        time.sleep(0.5)
