"""API requests per flow run on a pilot, counted against the real server.

The executing process of a run (a pilot's flow-run child,
:func:`p3s.pilots.execute.serve_runs`, serving its first run after the fork server's imports
and handshakes) runs in a subprocess whose every httpx request
and websocket connection is recorded. The run is created from its deployment already claimed
(``Pending`` with the claim naming this execution), as the pilot worker leaves it, so the count
is the executing side of one run. Beside it, Prefect's own minimum: an empty flow called
in-process (the engine creates its run and runs it) in the same kind of process.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from p3s.jobs.model import P3SJob
from tests.conftest import Stack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]

#: Requests of one trivial p3s job's run on a pilot (measured: 8 HTTP requests and the two
#: events websockets; 16 and 2 before). A request more per run is a regression on the hot
#: path: look at the list.
TRIVIAL_JOB_MAX = 10
#: A DQM run (measured: 11 with its one artifact; 19 before, with three artifacts and the
#: per-run reads). A run longer than the log batch interval may post its logs twice: the bound
#: is Prefect's own empty run (13), which a DQM run on a pilot must not exceed.
DQM_MAX = 13

TRACER = r"""
import json, os, sys
import httpx

mode, out = sys.argv[1], sys.argv[2]
if mode == "child":
    import p3s.pilots.preload  # noqa: F401 - the fork server's imports and handshakes

seen = []


def record(kind, method, url):
    seen.append(f"{method} {url.path}" if kind == "http" else f"WS {url}")


sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send


def traced_sync(self, request, *args, **kwargs):
    record("http", request.method, request.url)
    return sync_send(self, request, *args, **kwargs)


async def traced_async(self, request, *args, **kwargs):
    record("http", request.method, request.url)
    return await async_send(self, request, *args, **kwargs)


httpx.Client.send, httpx.AsyncClient.send = traced_sync, traced_async

from prefect._internal import websockets as prefect_ws
from prefect.events import clients as event_clients

connect = prefect_ws.websocket_connect


def traced_connect(uri, **kwargs):
    record("ws", None, uri.split("/api", 1)[-1])
    return connect(uri, **kwargs)


prefect_ws.websocket_connect = event_clients.websocket_connect = traced_connect
import prefect._internal.observers as observers  # the suspension observer's subscription

if hasattr(observers, "websocket_connect"):
    observers.websocket_connect = traced_connect

code = 0
try:
    if mode == "child":
        import pickle
        import threading
        from multiprocessing import Pipe
        from p3s.pilots.execute import serve_runs

        run_id, entrypoint, claim, related = sys.argv[3:7]
        with open(related, "rb") as handle:
            related = pickle.load(handle)
        pilot_end, child_end = Pipe()
        said = []

        def as_the_pilot():  # one run, then no more once its logs and events are sent
            pilot_end.send(("run", run_id, entrypoint, claim, related))
            while (message := pilot_end.recv())[0] != "idle":
                said.append(message)
            pilot_end.close()

        threading.Thread(target=as_the_pilot, daemon=True).start()
        serve_runs("request-count", os.getppid(), child_end)
        code = next((m[2] for m in said if m[0] == "done"), 1)
    else:  # Prefect alone, as a fresh process runs a flow
        from prefect import flow
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        @flow(name="empty", persist_result=False)
        def empty() -> None:
            pass

        empty()
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
except SystemExit as exc:
    code = exc.code
with open(out, "w") as handle:
    json.dump({"code": code, "requests": seen}, handle)
"""


def _traced(stack: Stack, tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / f"requests-{uuid.uuid4().hex[:8]}.json"
    env = {**os.environ, **stack.env, "PREFECT_API_URL": stack.api_url}
    proc = subprocess.run(
        [sys.executable, "-c", TRACER, args[0], str(out), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["code"] == 0, (report, proc.stderr[-3000:])
    return report["requests"]


async def _claimed_run(
    deployment: str, parameters: dict[str, Any], claim: str, **options: Any
) -> tuple[Any, str, dict[str, Any]]:
    """A run of ``deployment`` as the pilot worker hands it to a pilot: claimed, with its
    entrypoint and its related objects (read by the worker, once for all its runs)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    from p3s.pilots.dispatch import related_objects

    async with get_client() as client:
        found = await client.read_deployment_by_name(deployment)
        run = await client.create_flow_run_from_deployment(
            found.id,
            parameters=parameters,
            state=Pending(message=f"claimed for {claim}"),
            **options,
        )
        return run, found.entrypoint, await related_objects(client, run, {})


async def _read_run(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(run_id)


def _run_claimed(
    stack: Stack, tmp_path: Path, deployment: str, parameters: dict, **options: Any
) -> list[str]:
    claim = f"request-count-{uuid.uuid4().hex[:8]}"
    run, entrypoint, related = asyncio.run(_claimed_run(deployment, parameters, claim, **options))
    assert len(related) == 4, related  # flow, deployment, work queue, work pool
    related_file = tmp_path / f"related-{claim}.pickle"
    related_file.write_bytes(pickle.dumps(related))
    requests = _traced(stack, tmp_path, "child", str(run.id), entrypoint, claim, str(related_file))
    done = asyncio.run(_read_run(run.id))
    assert done.state.is_completed(), done.state
    return requests


def _report(what: str, requests: list[str]) -> None:
    # Shown with -s, and kept in the failure message of the bounds below.
    print(f"\n{what}: {len(requests)} requests\n  " + "\n  ".join(requests))


def test_requests_of_a_trivial_job_run_on_a_pilot(stack: Stack, tmp_path: Path) -> None:
    job = P3SJob(name="count-me", jobtype="count", payload="/bin/true", timeout=60)
    requests = _run_claimed(  # as `p3s job submit` creates it
        stack, tmp_path, "p3s-job/adhoc", {"job": job.model_dump()}, name=job.name, tags=job.tags
    )
    minimum = _traced(stack, tmp_path, "empty")
    _report("trivial p3s job on a pilot", requests)
    _report("Prefect's minimum: an empty flow created and run in-process", minimum)
    # No per-run handshakes, no server default storage, no reread of the flow, deployment,
    # work queue or pool (the fork server and the pilot worker hold them for all runs).
    once_per_pilot = ("/admin/", "/csrf-token", "/flows/", "/deployments/", "/work_")
    assert not [r for r in requests if r.startswith("GET") and any(p in r for p in once_per_pilot)]
    # The run is read three times: the claim check, the suspension observer, the engine.
    assert sum(r.startswith("GET /api/flow_runs/") for r in requests) <= 3, requests
    assert sum(r.startswith("POST /api/logs/") for r in requests) == 1, requests
    assert len(requests) <= TRIVIAL_JOB_MAX, requests
    # A deployment's run on a pilot costs no more than an empty flow run in a fresh process.
    assert len(requests) <= len(minimum), (requests, minimum)


def test_requests_of_a_dqm_run_on_a_pilot(stack: Stack, tmp_path: Path) -> None:
    from p3s.payloads.rawformat import Geometry, raw_filename
    from p3s.payloads.simulate import simulate_file

    from p3s.files import storage

    path = stack.settings.data / "request-count" / raw_filename(51, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    simulate_file(
        path,
        run=51,
        subrun=1,
        n_events=1,
        n_ticks=1500,
        seed=51,
        geometry=Geometry.reduced(n_apas=1, fibers_per_apa=2),
    )
    parameters = {"file_url": storage.url_for(path), "n_events": 1}
    requests = _run_claimed(stack, tmp_path, "dqm-purity/inbox", parameters)
    _report("DQM purity run on a pilot", requests)
    assert 0 < len(requests) <= DQM_MAX, requests
