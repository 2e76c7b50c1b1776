"""Helpers every benchmark shares: free ports, percentiles, the bare subprocess baseline.

The benchmarks run as scripts (``python bench/NAME.py``), so this folder is on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

from p3s.ports import free_port  # noqa: F401  (re-exported for the benchmarks)


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
