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
