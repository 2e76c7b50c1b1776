"""The pilot worker through a busy server: a run's state is settled in spite of 5xx answers,
and a run it cannot settle never takes the worker (its pilots, their payloads) down.

Found at 400 flow runs at once on PostgreSQL (bench/concurrency.py): the server's database
pool ran dry and it answered 500 to some requests; one such answer while the worker read a
finished run ended the worker's task group, so the worker stopped, with its 4 pilots and the
400 payloads on them. Here the server is the stack's real one; the transport in front of the
worker's client answers the next N requests with the 500 an overloaded server gives.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.states import Running

from p3s.pilots import api_retry
from p3s.pilots.dispatch import InFlight
from p3s.pilots.worker import PilotWorker
from tests.conftest import Stack

LOG = logging.getLogger("test")


class FailingNext(httpx.AsyncBaseTransport):
    """The real connection to the server, but the next ``fail`` requests get a 500."""

    def __init__(self) -> None:
        self.real = httpx.AsyncHTTPTransport()
        self.fail = 0
        self.failed: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.fail > 0:
            self.fail -= 1
            self.failed.append(f"{request.method} {request.url.path}")
            body = {"exception_message": "Internal Server Error"}
            return httpx.Response(500, json=body, request=request)
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


class EndedTask:
    """A pilot's Dask task that has ended: awaited, it gives ``result``, as a future does."""

    def __init__(self, result: dict, key: str) -> None:
        self.result, self.key = result, key

    def __await__(self):
        async def result() -> dict:
            return self.result

        return result().__await__()


@flow(name="p3s-test-busy-server")
def noop() -> None:
    pass


def status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://server/api/flow_runs/x")
    return httpx.HTTPStatusError("", request=request, response=httpx.Response(code))


def test_transient_errors_are_tried_again_and_others_raised_at_once() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise status_error(500)
        return "answer"

    async def refused() -> str:
        calls.append(1)
        raise status_error(404)

    got = asyncio.run(
        api_retry.patiently(flaky, what="x", patience_s=10, logger=LOG, first_wait_s=0.01)
    )
    assert got == "answer" and len(calls) == 3
    calls.clear()
    with pytest.raises(httpx.HTTPStatusError):
        asyncio.run(api_retry.patiently(refused, what="x", patience_s=10, logger=LOG))
    assert len(calls) == 1  # a 404 is an answer, not a busy server
    assert api_retry.is_transient(httpx.ConnectError("refused"))
    assert api_retry.is_transient(status_error(503)) and api_retry.is_transient(status_error(429))
    assert not api_retry.is_transient(status_error(409)) and not api_retry.is_transient(
        ValueError("x")
    )


async def _settle_through_errors(
    api_url: str, fail: int, patience_s: float, stopping: bool = False
) -> tuple:
    transport = FailingNext()
    async with PrefectClient(api_url, httpx_settings={"transport": transport}) as client:
        run = await client.create_flow_run(noop, state=Running(message="on a pilot"))
        worker = PilotWorker(work_pool_name="p3s-test-busy-server")
        worker._client = client
        worker.settings.pilots.api_patience_seconds = patience_s
        if stopping:  # as teardown leaves it
            worker._stopping = True
        # The run's child died on its pilot without a final state (exit code 1).
        ended = EndedTask({"exit_code": 1, "pilot": "0"}, key=f"p3s-run-{run.id}-0")
        entry = InFlight(run.id, run.name, None, ended)
        transport.fail = fail
        code = await worker.outcomes.watch(entry)
        transport.fail = 0
        after = await client.read_flow_run(run.id)
    return code, after.state, transport.failed


def test_a_run_is_settled_through_the_server_s_500s(stack: Stack) -> None:
    code, state, failed = asyncio.run(_settle_through_errors(stack.api_url, 3, patience_s=60))
    assert len(failed) == 3, failed  # the worker met three 500s ...
    assert code == 1
    assert state.type == StateType.CRASHED, state  # ... and still ended the run Crashed
    assert "exited with code 1" in (state.message or "")


def test_a_run_that_cannot_be_settled_does_not_stop_the_worker(stack: Stack) -> None:
    """Errors past the worker's patience are logged, and the task that met them ends
    normally: it never raises into the worker's task group."""
    code, state, failed = asyncio.run(_settle_through_errors(stack.api_url, 10**6, patience_s=2))
    assert failed and code == 1
    assert state.type == StateType.RUNNING  # left as it was, with an error in the log


def test_a_stopping_worker_tries_once(stack: Stack) -> None:
    """``p3s down`` stops the workers before the server, but a server that is gone already
    must not hold a stopping worker for its patience: one try per call, then the log."""
    code, state, failed = asyncio.run(
        _settle_through_errors(stack.api_url, 10**6, patience_s=600, stopping=True)
    )
    assert len(failed) == 1 and code == 1
    assert state.type == StateType.RUNNING
