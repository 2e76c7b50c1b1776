"""Dispatch benchmark: submit -> payload start latency and throughput of trivial p3s jobs.

Brings up its own embedded system (Prefect server on SQLite, the p3s work pool and worker) under
a temporary home and a free port, then measures, in the same run:

* baseline: a bare loop of ``subprocess.run`` of the same trivial payload;
* latency: jobs submitted one at a time (each waits for its payload to start), p50 and p95 of
  submit -> payload start, with where the time goes (Scheduled -> Pending -> Running -> start);
* throughput: N jobs submitted at once, jobs per second until the last one finishes.

Run: ``.venv/bin/python bench/dispatch.py [--latency-jobs 100] [--throughput-jobs 500]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import baseline, free_port, pct, wait_started

PAYLOAD = """#!/bin/sh
date +%s.%N > "$P3S_BENCH_DIR/$P3S_JOB_UUID"
"""


async def segments(client, run_id) -> dict[str, float]:
    """Seconds spent between the run's states, from its state history."""
    states = await client.read_flow_run_states(run_id)
    first = {}
    for s in states:
        first.setdefault(s.type.value, s.timestamp.timestamp())
    return first


async def measure(job, marks: Path, n_latency: int, n_throughput: int) -> dict:
    from prefect.client.orchestration import get_client

    from p3s.jobs.client import submit_jobs
    from tests.conftest import wait_for_runs

    out: dict = {"latency": [], "segments": []}
    async with get_client() as client:
        for _ in range(n_latency):
            t0 = time.time()
            (run,) = await submit_jobs([job], client=client)
            start = await wait_started(marks / str(run.id))
            out["latency"].append(start - t0)
            out["segments"].append((run.id, t0, start))
        await wait_for_runs([r for r, _, _ in out["segments"]], 600)
        parts = {"submit->Pending": [], "Pending->Running": [], "Running->payload": []}
        for run_id, t0, start in out["segments"]:
            first = await segments(client, run_id)
            parts["submit->Pending"].append(first["PENDING"] - t0)
            parts["Pending->Running"].append(first["RUNNING"] - first["PENDING"])
            parts["Running->payload"].append(start - first["RUNNING"])
        out["parts"] = {k: statistics.median(v) for k, v in parts.items()}

        t0 = time.time()
        runs = await submit_jobs([job] * n_throughput, client=client)
        done = await wait_for_runs([r.id for r in runs], 3600)
        out["throughput"] = n_throughput / (time.time() - t0)
        out["throughput_ok"] = sum(r.state.type.value == "COMPLETED" for r in done)
    return out


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output is a file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--throughput-jobs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--worker",
        choices=["pilots", "process"],
        default="pilots",
        help="what serves the p3s pool (p3s up's default: pilots)",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="p3s-bench-"))
    scripts, marks = home / "payloads", home / "marks"
    scripts.mkdir()
    marks.mkdir()
    script = scripts / "mark_start.sh"
    script.write_text(PAYLOAD)
    script.chmod(0o755)
    os.environ.update(
        {
            "P3S_HOME": str(home),
            "P3S_SERVER__PORT": str(free_port()),
            "P3S_UI__PORT": str(free_port()),
            "P3S_PAYLOAD_ROOTS": str(scripts),
            "P3S_POOL__CONCURRENCY": str(args.concurrency),
            "P3S_POOL__WORKER": args.worker,
        }
    )
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from p3s.jobs.model import P3SJob
    from p3s.stack import control
    from p3s.system.prefect_env import apply_client_environment
    from p3s.system.settings import Settings

    settings = Settings()
    apply_client_environment(settings)
    base_lat, base_rate = baseline(script, marks, max(args.latency_jobs, 100))
    print(
        f"baseline (bare subprocess loop): start latency p50 {pct(base_lat, 0.5) * 1e3:.1f} ms, "
        f"p95 {pct(base_lat, 0.95) * 1e3:.1f} ms; {base_rate:.1f} jobs/s"
    )
    try:
        control.up(settings, lambda line: print("  ", line))
        job = P3SJob(
            name="bench",
            timeout=60,
            jobtype="bench",
            payload=str(script),
            priority=5,
            env={"P3S_BENCH_DIR": str(marks), "P3S_INPUT_FILE": "none"},
        )
        res = asyncio.run(measure(job, marks, args.latency_jobs, args.throughput_jobs))
    finally:
        control.down(settings, lambda line: None)
    lat = res["latency"]
    p50, p95 = pct(lat, 0.5), pct(lat, 0.95)
    print(f"p3s ({args.worker}, concurrency {args.concurrency}), {len(lat)} jobs one at a time:")
    print(
        f"  submit -> payload start p50 {p50:.2f} s, p95 {p95:.2f} s "
        f"(ratio to baseline p50: {p50 / pct(base_lat, 0.5):.0f}x)"
    )
    print(
        "  where the time goes (medians): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in res["parts"].items())
    )
    print(
        f"  throughput, {args.throughput_jobs} jobs at once: {res['throughput']:.2f} jobs/s "
        f"({res['throughput_ok']} completed; baseline {base_rate:.1f} jobs/s, "
        f"ratio {base_rate / res['throughput']:.0f}x slower)"
    )
    bare = "bare subprocess loop"
    figures = [
        {"figure": "submit -> start p50 (s)", "value": p50, "baseline": pct(base_lat, 0.5)},
        {"figure": "submit -> start p95 (s)", "value": p95, "baseline": pct(base_lat, 0.95)},
        {
            "figure": f"{args.throughput_jobs} jobs at once (jobs/s)",
            "value": res["throughput"],
            "baseline": base_rate,
        },
    ]
    for figure in figures:
        figure["baseline_label"] = bare
    print("BENCH " + json.dumps({"bench": "dispatch", "figures": figures}))


if __name__ == "__main__":
    main()
