"""DAG benchmark: orchestration time per node of the ``p3s-workflow`` flow on a fan-out/fan-in
graph of trivial nodes, beside the same graph run with plain Dask futures in the same run.

The graph: one root node, N middle nodes that each depend on the root, one sink that depends on
all of them (N + 2 nodes, 2N edges). Every node is a ``noop``: nothing runs but orchestration.

* ``p3s-workflow``: the template is registered on an embedded Prefect server (SQLite, its own
  temporary home and free port) and the flow runs in this process, as a worker would run it:
  each node is a Prefect task run (state changes and logs sent to the server), parents first.
* baseline: ``dask.distributed`` ``LocalCluster`` (2 worker processes) and ``Client.submit``
  of a trivial function with the same dependencies.

Printed per size: the flow's wall time until it returns (``flow s``) and until every task-run
state event and log line has reached the server (``drained s``), the orchestration time per
node (drained / nodes), the Dask time and per node, and their ratio (drained / Dask).

Run: ``.venv/bin/python bench/dag.py [--nodes 1000] [--nodes 200 ...]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import free_port


def fan_template(n: int, name: str):  # -> p3s.workflows.graphml.Template
    """One root, ``n`` middle nodes, one sink; every node a noop."""
    from p3s.workflows.graphml import EdgeSpec, NodeSpec, Template

    def noop(node_id: str) -> NodeSpec:
        return NodeSpec(id=node_id, jobtype="noop", timelimit=0)

    middles = [f"n{i:05d}" for i in range(n)]
    nodes = [noop("root"), *(noop(m) for m in middles), noop("sink")]

    def edge(source: str, target: str, tag: str, name: str) -> EdgeSpec:
        return EdgeSpec(
            source=source,
            target=target,
            name=name,
            dirpath="/tmp/p3s-dag-bench/",
            datatype="TXT",
            datatag=tag,
        )

    edges = [edge("root", m, "IN", "input.txt") for m in middles]
    edges += [edge(m, "sink", f"OUT_{m}", f"{m}.txt") for m in middles]
    return Template(name=name, nodes=nodes, edges=edges)


def trivial(*_: object) -> int:
    return 0


def run_dask(n: int) -> float:
    """Seconds to run the fan-out/fan-in graph with plain Dask futures."""
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=4, dashboard_address=None, silence_logs=logging.CRITICAL
        ) as cluster,
        Client(cluster) as client,
    ):
        client.submit(trivial, pure=False).result()  # warm up the workers
        started = time.perf_counter()
        root = client.submit(trivial, pure=False)
        middles = [client.submit(trivial, root, pure=False) for _ in range(n)]
        sink = client.submit(trivial, *middles, pure=False)
        sink.result()
        return time.perf_counter() - started


def run_workflow(n: int, home: Path) -> tuple[float, float, str]:
    """Seconds until the p3s-workflow flow returns, and until the server has all its events."""
    from p3s.flows.workflow import p3s_workflow

    from p3s.workflows.graphml import to_graphml
    from p3s.workflows.templates import register_template

    name = f"dag-fan-{n}"
    path = home / f"{name}.graphml"
    path.write_text(to_graphml(fan_template(n, name)))
    register_template(path, overwrite=True)
    Path("/tmp/p3s-dag-bench").mkdir(exist_ok=True)
    Path("/tmp/p3s-dag-bench/input.txt").touch()  # the workflow's input must exist
    started = time.perf_counter()
    state = p3s_workflow(template=name, return_state=True)
    returned = time.perf_counter() - started
    drain()  # every task-run state event and log line delivered to the server
    return returned, time.perf_counter() - started, f"{state.name}: {state.message}"


def drain() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=600)
    APILogWorker.drain_all(timeout=600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nodes", type=int, action="append", help="middle nodes (repeatable; default 1000)"
    )
    args = parser.parse_args()
    sizes = args.nodes or [1000]
    home = Path(tempfile.mkdtemp(prefix="p3s-dag-bench-"))
    os.environ.update(
        {
            "P3S_HOME": str(home),
            "P3S_SERVER__PORT": str(free_port()),
            "P3S_UI__PORT": str(free_port()),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    )
    from p3s.stack.control import down, start_server
    from p3s.system.prefect_env import apply_client_environment
    from p3s.system.settings import get_settings

    settings = get_settings()
    apply_client_environment(settings)
    print(f"starting a Prefect server (SQLite) under {home} ...", flush=True)
    start_server(settings, lambda line: print(line, flush=True))
    try:
        print(
            f"{'nodes':>6} {'flow s':>8} {'drained s':>10} {'ms/node':>8} "
            f"{'dask s':>8} {'ms/node':>8} {'ratio':>7}",
            flush=True,
        )
        figures = []
        for n in sizes:
            dask_s = run_dask(n)
            flow_s, drained_s, final = run_workflow(n, home)
            nodes = n + 2
            print(
                f"{nodes:>6} {flow_s:>8.2f} {drained_s:>10.2f} {1000 * drained_s / nodes:>8.2f} "
                f"{dask_s:>8.2f} {1000 * dask_s / nodes:>8.3f} {drained_s / dask_s:>6.1f}x",
                flush=True,
            )
            print(f"{'':>12} workflow final state: {final}", flush=True)
            figures.append(
                {
                    "figure": f"p3s-workflow, {nodes}-node DAG (ms/node)",
                    "value": 1000 * drained_s / nodes,
                    "baseline": 1000 * dask_s / nodes,
                    "baseline_label": "plain Dask futures",
                }
            )
        print("BENCH " + json.dumps({"bench": "dag", "figures": figures}))
    finally:
        try:
            drain()  # send the last logs while the server is up
        finally:
            down(settings, lambda line: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
