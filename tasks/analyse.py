"""A DQM payload run in-process on a staged-in file, as a Prefect task without retries.

A payload error or a bad input (:class:`~p3s.payloads.rawformat.RawFormatError`: corrupt,
truncated, wrong version, not HDF5) would fail again on the same bytes: it is never retried.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from p3s.payloads.runner import run_payload
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

#: The payload's cost, logged by every run: payload, file, CPU-s of the payload's thread, wall s.
PAYLOAD_COST = "payload %s on %s: %.3f CPU-s, %.3f s"
_PAYLOAD_COST = re.compile(r"payload (\S+) on (\S+): ([0-9.]+) CPU-s, ([0-9.]+) s")


class PayloadCost(NamedTuple):
    """A run's :data:`PAYLOAD_COST` line read back."""

    payload: str
    file_name: str
    cpu_s: float
    wall_s: float


def parse_payload_cost(message: str) -> PayloadCost | None:
    """The cost in a :data:`PAYLOAD_COST` log line; None for any other message."""
    if not (m := _PAYLOAD_COST.fullmatch(message)):
        return None
    return PayloadCost(m[1], m[2], float(m[3]), float(m[4]))


@dataclass(frozen=True)
class Analysis:
    """What a payload wrote: run, subrun, its JSON summary, and the product files in order."""

    run: int
    subrun: int
    summary: dict[str, Any]
    products: list[Path]


@task(name="payload", retries=0, persist_result=False, cache_policy=NO_CACHE)
def analyse(payload: str, raw_file: Path, scratch_dir: Path, n_events: int | None) -> Analysis:
    """Run ``payload`` on ``raw_file``; products go under ``scratch_dir`` (summary.json last).

    Args:
        payload: one of ``p3s.payloads.runner.PAYLOADS``.
        raw_file: the local copy of the raw file.
        scratch_dir: local folder for the products (``runRRRRRR/SSSS/PAYLOAD`` below it).
        n_events: analyse the first ``n_events`` events only (None: the payload's default).
    """
    cpu, wall = time.thread_time(), time.perf_counter()
    result, _outdir, paths = run_payload(payload, raw_file, scratch_dir, n_events=n_events)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    # This thread's CPU only (the run's log and event threads excluded): what the payload
    # costs, for its author and for bench/orchestration.py, which reads this line back.
    get_run_logger().info(PAYLOAD_COST, payload, raw_file.name, cpu, wall)
    return Analysis(int(result.run), int(result.subrun), result.summary, paths)
