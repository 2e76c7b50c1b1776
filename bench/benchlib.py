"""Helpers every benchmark shares: free ports, percentiles, the bare subprocess baseline.

The benchmarks run as scripts (``python bench/NAME.py``), so this folder is on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from p3s.system.ports import free_port  # noqa: F401  (re-exported for the benchmarks)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(script: Path, marks: Path, n: int) -> tuple[list[float], float]:
    """Bare subprocess loop: per-job latency to payload start (s), and jobs per second."""
    latencies = []
    started = time.time()
    for i in range(n):
        t0 = time.time()
        env = {**os.environ, "P3S_BENCH_DIR": str(marks), "P3S_JOB_UUID": f"base-{i}"}
        subprocess.run([str(script)], env=env, check=True)
        latencies.append(float((marks / f"base-{i}").read_text()) - t0)
    return latencies, n / (time.time() - started)


async def wait_started(path: Path, timeout_s: float = 300, poll_s: float = 0.01) -> float:
    """Wait for a payload's start mark (a Unix time written into ``path``) and return it."""
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"payload {path.name} did not start in {timeout_s} s")
        await asyncio.sleep(poll_s)
    return float(path.read_text())


async def pg(sql: str) -> None:
    """Run one SQL statement on the local PostgreSQL (trust auth) as postgres."""
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Sampler:
    """Samples a process tree's CPU (% of one core) and resident memory in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.cpu: list[float] = []
        self.rss: list[float] = []
        self._known: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self):
        # The same Process objects from one sample to the next: cpu_percent compares a
        # process's CPU times with those of its previous call on the same object.
        for child in self.proc.children(recursive=True):
            self._known.setdefault(child.pid, child)
        self._known = {pid: p for pid, p in self._known.items() if p.is_running()}
        return [self.proc, *self._known.values()]

    def _run(self) -> None:
        for p in self._tree():
            p.cpu_percent(None)
        while not self._stop.wait(self.interval_s):
            try:
                tree = self._tree()
                self.cpu.append(sum(p.cpu_percent(None) for p in tree))
                self.rss.append(sum(p.memory_info().rss for p in tree) / 2**20)
            except Exception:
                continue

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.cpu:
            return "no samples"
        return (
            f"CPU mean {statistics.mean(self.cpu):.0f} % of a core "
            f"(max {max(self.cpu):.0f} %), RSS max {max(self.rss):.0f} MiB"
        )


def shaped_runs(
    n: int, tasks: int, deployment: bool, out: Any, go: Any = None, pool: str = ""
) -> None:
    """Prefect's own flow runs, for its floor and ceiling: run in a forked child, it makes
    ``n`` flow runs of ``tasks`` tasks that do nothing, run in-process one after another with
    the pilots' engine patches. Created directly, or (``deployment``) from a deployment in a
    pool of their own (``pool``), fetched and claimed (``Pending``) as a worker does. With
    ``go``, three runs first (the flow's registration, the connections), then ``None`` on
    ``out`` and a wait for ``go``. Puts its CPU seconds for the ``n`` runs on ``out``."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.events.worker import EventsWorker
    from prefect.flow_engine import run_flow
    from prefect.logging.handlers import APILogWorker
    from prefect.states import Pending

    from p3s.pilots.run_process import skip_engine_waits

    skip_engine_waits()  # as in a pilot's child
    # Quiet on the console (Prefect attaches its console handler at the first run); the logs
    # still go to the API, as a pilot child's do.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)

    @task(persist_result=False, cache_policy=NO_CACHE)
    def step(i: int) -> int:
        return i

    @flow(name=f"bench-{tasks}-tasks", persist_result=False)
    def shaped() -> None:
        for i in range(tasks):
            step(i)

    pool = pool or f"bench-{tasks}-tasks"

    def one_run(client: Any, deployment_id: Any) -> Any:
        if deployment_id is None:
            return client.create_flow_run(shaped)
        client.create_flow_run_from_deployment(deployment_id)
        (fetched,) = client.get_scheduled_flow_runs_for_work_pool(pool)
        client.set_flow_run_state(fetched.flow_run.id, Pending())
        return fetched.flow_run

    def runs(client: Any, deployment_id: Any, k: int) -> None:
        for _ in range(k):
            run_flow(shaped, flow_run=one_run(client, deployment_id), return_type="state")

    def drain() -> None:
        # A multiprocessing child ends with os._exit: Prefect's at-exit drains would not run.
        EventsWorker.drain_all()
        APILogWorker.drain_all()

    try:
        with get_client(sync_client=True) as client:
            deployment_id = None
            if deployment:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
                deployment_id = client.create_deployment(
                    flow_id=client.create_flow_from_name(shaped.name),
                    name=pool,  # one per pool: a deployment's name is unique per flow
                    work_pool_name=pool,
                    parameter_openapi_schema={"type": "object", "properties": {}},
                )
            if go is not None:
                runs(client, deployment_id, 3)
                drain()
                out.put(None)
                go.wait()
            c0 = time.process_time()
            runs(client, deployment_id, n)
            spent = time.process_time() - c0
            out.put(spent)
            drain()  # after the count: a ceiling's rate is its runs'; its server CPU has them all
    except BaseException as exc:  # the parent waits on `out`: tell it instead of hanging
        out.put(RuntimeError(f"Prefect's runs failed: {exc!r}"))
        raise


def take(out: Any, timeout: float) -> Any:
    """The next value a :func:`shaped_runs` child put on ``out``; its failure raised here."""
    value = out.get(timeout=timeout)
    if isinstance(value, Exception):
        raise value
    return value


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) of each root process and all its descendants, alive or
    ended and reaped (a reaped child's time is in its parent's ``children_*`` times)."""
    import psutil

    found: dict[str, float] = {}
    for name, pid in roots.items():
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        total = 0.0
        for proc in tree:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        found[name] = total
    return found


def postgres_cpu() -> float:
    """CPU seconds (user + system) of this host's PostgreSQL processes, alive now."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def own_cpu() -> float:
    """CPU seconds of this process and its children that have ended (and been waited for)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
