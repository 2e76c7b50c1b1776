"""The ``p3s-job`` flow: one p3s job (payload, env, time limit) as one Prefect flow run."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.context import get_run_context
from prefect.states import Completed, Failed, State

from p3s.jobs.model import P3SJob
from p3s.jobs.policy import PayloadRefused, map_prefix, resolve_command
from p3s.jobs.process import TIMELIMIT_ERRCODE, PayloadOutcome, execute_payload
from p3s.system.settings import get_settings

#: Name of the failed state of a payload stopped at its limit (p3s's "timelimit").
TIMELIMIT_STATE = "TimeLimit"
#: Name of the failed state of a payload the policy refused (p3s's "nonstarter").
REFUSED_STATE = "Refused"


def job_environment(job: P3SJob, job_uuid: str, path_map: dict[str, str]) -> dict[str, str]:
    """The payload's environment: the worker's, the job's env over it (site paths mapped to
    local ones), p3s's ids, and the Python that runs p3s (for payloads written in Python)."""
    return {
        **os.environ,
        **{key: map_prefix(value, path_map) for key, value in job.env.items()},
        "P3S_JOB_UUID": job_uuid,
        "P3S_PILOT_UUID": f"{socket.gethostname()}:{os.getpid()}",
        "P3S_PYTHON": sys.executable,
    }


def final_state(job: P3SJob, outcome: PayloadOutcome) -> State[Any]:
    """Map a payload outcome onto the run's final state, with p3s's errcode in the message."""
    if outcome.timed_out:
        return Failed(
            name=TIMELIMIT_STATE,
            message=f"time limit of {job.timeout} s exceeded: payload stopped "
            f"(errcode {TIMELIMIT_ERRCODE})",
        )
    if outcome.exit_code != 0:
        return Failed(message=f"payload exited with code {outcome.exit_code}")
    return Completed(message="payload exited with code 0")


# No ``flow_run_name``: the engine would rename every run (a request) to the name that
# `p3s job submit` gave it already; a run started otherwise is named below with its tags.
@flow(name="p3s-job", persist_result=False, validate_parameters=True)
def p3s_job(job: P3SJob) -> State[Any]:
    """Run one p3s job: vet its payload, run it under its time limit, record its exit code."""
    settings = get_settings()
    logger = get_run_logger()
    run = get_run_context().flow_run
    run_id = str(run.id)
    if run.name != job.name or not set(job.tags) <= set(run.tags):
        # Started with `prefect deployment run`: the name and tags `p3s job submit` gives.
        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, name=job.name, tags=sorted({*run.tags, *job.tags}))
    try:
        command = resolve_command(
            job.payload,
            job.env,
            roots=settings.payload_roots,
            prefix_map=settings.path_map,
        )
    except PayloadRefused as exc:
        logger.error("job %r refused, nothing was run: %s", job.name, exc)
        return Failed(name=REFUSED_STATE, message=f"refused: {exc}")
    logger.info("job %r (%s, priority %s): %s", job.name, job.jobtype, job.priority, command.argv)
    outcome = execute_payload(
        command,
        job_environment(job, run_id, settings.path_map),
        timeout_s=job.timeout,
        log_dir=settings.job_logs / run_id,
        logger=logger,
        kill_grace_s=settings.kill_grace_seconds,
        stop_settle_s=settings.stop_settle_seconds,
    )
    create_table_artifact(
        [{"name": job.name, "jobtype": job.jobtype, **outcome.as_record()}],
        key=None,
        description=f"p3s job {job.name}: errcode {outcome.errcode}",
    )
    return final_state(job, outcome)
