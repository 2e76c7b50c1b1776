"""The Prefect server counts its API requests by route and writes them on SIGUSR1
(:mod:`p3s.system.request_counts`), against the real server of the stack."""

from __future__ import annotations

import uuid

import httpx

from p3s.system.request_counts import ask_for_counts


def test_the_server_counts_its_requests_by_route(stack) -> None:
    from p3s.stack import control

    (server,) = [s for s in control.managed(stack.settings) if s.name == "prefect-server"]
    process = server.process()
    assert process is not None
    home = stack.settings.prefect_home
    unknown = [uuid.uuid4() for _ in range(3)]

    def counts_now() -> dict:
        return ask_for_counts(process.pid, home, timeout_s=10)

    before = counts_now()
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        for run_id in unknown:  # three runs, one route
            assert client.get(f"/flow_runs/{run_id}").status_code == 404
        assert client.post("/flow_runs/filter", json={"limit": 1}).status_code == 200
    after = counts_now()

    def grew(route: str) -> int:
        return after["routes"].get(route, 0) - before["routes"].get(route, 0)

    assert grew("GET /api/flow_runs/{id}") == 3, after
    assert grew("POST /api/flow_runs/filter") >= 1  # the pilot worker may filter too
    assert after["total"] - before["total"] >= 4
    assert after["since"] == before["since"]  # one server, counting since it started
    assert not any(str(run_id) in route for route in after["routes"] for run_id in unknown)
