"""Pilot benchmark: dispatch latency to a warm pilot beside a process worker, and throughput.

Brings up its own embedded system (Prefect server on SQLite, the p3s pool with its process
worker, and a local pilot pool) under a temporary home and a free port, then measures, in the
same run:

* baseline: a bare loop of ``subprocess.run`` of the same trivial payload;
* latency: jobs submitted one at a time (each waits for its payload to start) to the process
  worker and to a warm pilot: submit -> payload start, p50 and p95;
* throughput with 4 pilots: N trivial jobs at once, jobs/s until the last one finishes;
* a queue of 1000 jobs with as many pilots as asked for (``--many-pilots``), with the Prefect
  server's CPU (percent of one core) and resident memory sampled with psutil meanwhile;
* Prefect's ceiling on this machine: empty flow runs created and run in-process by 4 clients;
  and Prefect's ceiling for deployment runs: the same, each created from a deployment in a
  pool of its client's own, fetched and claimed (``Pending``) as any worker takes its runs;
* where the CPU goes, per job of the 4-pilot throughput and per run of Prefect's ceiling: the
  server, the database (PostgreSQL's processes), the pilot worker with its pilots, and this
  process with its clients: the server's CPU per job beside its CPU per empty run says how
  much of the gap to the ceiling is the server's work.

Run: ``.venv/bin/python bench/pilots.py [--latency-jobs 30] [--throughput-jobs 200]
[--queue-jobs 1000] [--many-pilots 8]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    Sampler,
    baseline,
    free_port,
    own_cpu,
    pct,
    pg,
    postgres_cpu,
    shaped_runs,
    take,
    tree_cpu,
    wait_started,
)

PAYLOAD = """#!/bin/sh
date +%s.%N > "$P3S_BENCH_DIR/$P3S_JOB_UUID"
"""


async def latency(job, marks: Path, n: int, deployment: str) -> list[float]:
    from p3s.jobs.client import submit_jobs, wait_for_jobs

    out = []
    ids = []
    for _ in range(n):
        t0 = time.time()
        (run,) = await submit_jobs([job], deployment=deployment)
        ids.append(run.id)
        out.append(await wait_started(marks / str(run.id)) - t0)
    await wait_for_jobs(ids, 600)
    return out


async def throughput(job, n: int, deployment: str) -> tuple[float, int]:
    from p3s.jobs.client import submit_jobs, wait_for_jobs

    t0 = time.time()
    runs = await submit_jobs([job] * n, deployment=deployment)
    done = await wait_for_jobs([r.id for r in runs], 3600, poll_s=2.0)
    return n / (time.time() - t0), sum(r.state.type.value == "COMPLETED" for r in done)


def prefect_ceiling(n_procs: int, n: int, deployment: bool = False) -> float:
    """Empty flow runs per second that this server takes from ``n_procs`` client processes,
    each creating and running its runs in-process one after another: what Prefect's own
    per-run work (API calls, states, events) allows here, with no worker, pilot or payload.
    With ``deployment``, each client creates its runs from a deployment in a pool of its own,
    fetches and claims them as a worker does: the least any worker's run costs."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=shaped_runs,
            args=(n, 0, deployment, out),
            kwargs={"pool": f"bench-ceiling-{i}"},
        )
        for i in range(n_procs)
    ]
    t0 = time.perf_counter()
    for proc in procs:
        proc.start()
    for _ in procs:
        take(out, 600)
    elapsed = time.perf_counter() - t0
    for proc in procs:
        proc.join()
    return n_procs * n / elapsed


class CpuSplit:
    """CPU seconds spent by each part of the system between enter and exit."""

    def __init__(self, roots: dict[str, int], postgres: bool) -> None:
        self.roots, self.postgres = roots, postgres
        self.spent: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = tree_cpu(self.roots)
        now["this process and its clients"] = own_cpu()
        if self.postgres:
            now["database"] = postgres_cpu()
        return now

    def __enter__(self) -> CpuSplit:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.spent = {k: end[k] - self._start[k] for k in end if k in self._start}

    def per(self, n: int) -> str:
        parts = ", ".join(f"{k} {v / n:.3f}" for k, v in self.spent.items())
        return f"CPU-s each: {parts}; total {sum(self.spent.values()) / n:.3f}"


def wait_pilots(settings, pool: str, n: int, timeout_s: float = 300) -> None:
    from p3s.pilots.status import read_status

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = read_status(settings, pool)
        if counts and counts.idle + counts.running >= n:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{n} pilots not up within {timeout_s} s")


def start_pilots(control, base_env: dict, n_min: int, n_max: int, engine: str = "fork"):
    from p3s.system.settings import Settings

    env = {
        **base_env,
        "P3S_PILOTS__MIN_PILOTS": str(n_min),
        "P3S_PILOTS__MAX_PILOTS": str(n_max),
        "P3S_PILOTS__MEMORY": "1GiB",
        "P3S_PILOTS__ENGINE": engine,
    }
    os.environ.update(env)
    settings = Settings()
    control.start_pilot_worker(settings, lambda line: print("  ", line), extra_env=env)
    wait_pilots(settings, settings.pilots.pool_name, n_min)
    return settings


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output is a file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=30)
    parser.add_argument("--process-latency-jobs", type=int, default=10)
    parser.add_argument("--throughput-jobs", type=int, default=200)
    parser.add_argument("--queue-jobs", type=int, default=1000)
    parser.add_argument("--many-pilots", type=int, default=8)
    parser.add_argument(
        "--engines",
        default="shared,fork",
        help="P3S_PILOTS__ENGINE values whose 4-pilot throughput is measured, in this run "
        "(the first also serves the latency and queue figures)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="Prefect database on PostgreSQL at 127.0.0.1:5432 (SQLite locks up under load)",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="p3s-bench-pilots-"))
    scripts, marks = home / "payloads", home / "marks"
    scripts.mkdir()
    marks.mkdir()
    script = scripts / "mark_start.sh"
    script.write_text(PAYLOAD)
    script.chmod(0o755)
    base_env = {
        "P3S_HOME": str(home),
        "P3S_SERVER__PORT": str(free_port()),
        "P3S_UI__PORT": str(free_port()),
        "P3S_PAYLOAD_ROOTS": str(scripts),
        "P3S_POOL__CONCURRENCY": "4",
        # The baseline: the p3s pool served by Prefect's process worker; the pilots get a
        # pool of their own.
        "P3S_POOL__WORKER": "process",
        "P3S_PILOTS__POOL_NAME": "p3s-pilots",
        "P3S_PILOTS__CLUSTER": "local",
        "P3S_PILOTS__IDLE_SECONDS": "600",
    }
    dbname = f"p3s_bench_{os.getpid()}"
    if args.postgres:
        asyncio.run(pg(f'CREATE DATABASE "{dbname}"'))
        base_env["P3S_SERVER__DATABASE_URL"] = (
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
        )
    os.environ.update(base_env)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from p3s.jobs.model import P3SJob
    from p3s.stack import control
    from p3s.system.prefect_env import apply_client_environment
    from p3s.system.settings import Settings

    settings = Settings()
    apply_client_environment(settings)
    base_lat, base_rate = baseline(script, marks, 100)
    print(f"Prefect database: {'PostgreSQL' if args.postgres else 'SQLite'}")
    print(
        f"baseline (bare subprocess loop): start latency p50 {pct(base_lat, 0.5) * 1e3:.1f} ms, "
        f"p95 {pct(base_lat, 0.95) * 1e3:.1f} ms; {base_rate:.1f} jobs/s"
    )
    job = P3SJob(
        name="bench",
        timeout=60,
        jobtype="bench",
        payload=str(script),
        priority=5,
        env={"P3S_BENCH_DIR": str(marks)},
    )
    pilot_deployment = f"p3s-job/{settings.pilots.pool_name}"
    try:
        control.up(settings, lambda line: print("  ", line))
        control.setup_pilot_pool(settings, lambda line: print("  ", line))
        engines = args.engines.split(",")
        pilots = start_pilots(control, base_env, 4, 4, engines[0])
        server_pid = control.server_process(settings).process().pid

        proc_lat = asyncio.run(latency(job, marks, args.process_latency_jobs, "p3s-job/adhoc"))
        print(
            f"process worker, {len(proc_lat)} jobs one at a time: submit -> payload start "
            f"p50 {pct(proc_lat, 0.5):.2f} s, p95 {pct(proc_lat, 0.95):.2f} s"
        )
        pilot_lat = asyncio.run(latency(job, marks, args.latency_jobs, pilot_deployment))
        p50 = pct(pilot_lat, 0.5)
        print(
            f"warm pilot, {len(pilot_lat)} jobs one at a time: submit -> payload start "
            f"p50 {p50:.2f} s, p95 {pct(pilot_lat, 0.95):.2f} s "
            f"(process worker / pilot p50: {pct(proc_lat, 0.5) / p50:.1f}x)"
        )
        rates: dict[str, float] = {}
        server_per_job: dict[str, float] = {}
        for engine in engines:
            if engine != engines[0]:
                control.pilot_worker_process(pilots).stop()
                pilots = start_pilots(control, base_env, 4, 4, engine)
            roots = {
                "server": server_pid,
                "pilot worker and pilots": control.pilot_worker_process(pilots).process().pid,
            }
            with Sampler(server_pid) as sampler, CpuSplit(roots, args.postgres) as split:
                rate, ok = asyncio.run(throughput(job, args.throughput_jobs, pilot_deployment))
            print(
                f"4 pilots ({engine} engine), {args.throughput_jobs} trivial jobs at once: "
                f"{rate:.2f} jobs/s ({ok} completed; bare loop {base_rate:.1f} jobs/s); "
                f"server {sampler.summary()}; {split.per(args.throughput_jobs)}"
            )
            rates[engine] = rate
            server_per_job[engine] = split.spent["server"] / args.throughput_jobs
        per_client = max(10, args.throughput_jobs // 4)
        with (
            Sampler(server_pid) as sampler,
            CpuSplit({"server": server_pid}, args.postgres) as split,
        ):
            ceiling = prefect_ceiling(4, per_client)
        server_per_run = split.spent["server"] / (4 * per_client)
        print(
            f"Prefect's ceiling here: empty flow runs created and run in-process by 4 "
            f"clients: {ceiling:.2f} runs/s; server {sampler.summary()}; "
            f"{split.per(4 * per_client)} (4 pilots reach "
            + ", ".join(f"{rates[e] / ceiling:.0%} of it with the {e} engine" for e in engines)
            + ")"
        )
        # The same empty runs, created from deployments and claimed from pools as any worker
        # takes its runs: what the deployment and work-pool path alone leaves of the ceiling.
        with CpuSplit({"server": server_pid}, args.postgres) as split:
            worker_ceiling = prefect_ceiling(4, per_client, deployment=True)
        print(
            f"Prefect's ceiling for deployment runs: empty runs created from a deployment, "
            f"fetched and claimed from a pool, run in-process by 4 clients: "
            f"{worker_ceiling:.2f} runs/s = {worker_ceiling / ceiling:.2f}x the ceiling; "
            f"{split.per(4 * per_client)} (4 pilots reach "
            + ", ".join(f"{rates[e] / worker_ceiling:.0%} of it with {e}" for e in engines)
            + ")"
        )

        figures = [
            {
                "figure": "warm pilot submit -> start p50 (s)",
                "value": pct(pilot_lat, 0.5),
                "baseline": pct(proc_lat, 0.5),
                "baseline_label": "process worker",
            },
            {
                "figure": "warm pilot submit -> start p95 (s)",
                "value": pct(pilot_lat, 0.95),
                "baseline": pct(proc_lat, 0.95),
                "baseline_label": "process worker",
            },
        ]
        figures += [
            {
                "figure": f"4 pilots, {args.throughput_jobs} trivial jobs (jobs/s)"
                + ("" if engine == "fork" else f", {engine} engine"),
                "value": rate,
                "baseline": ceiling,
                "baseline_label": "Prefect ceiling: empty in-process runs, 4 clients",
            }
            for engine, rate in rates.items()
        ]
        figures += [
            {
                "figure": "Prefect's ceiling for deployment runs, 4 clients (runs/s)",
                "value": worker_ceiling,
                "baseline": ceiling,
                "baseline_label": "Prefect ceiling: empty in-process runs, 4 clients",
            }
        ]
        figures += [
            {
                "figure": f"4 pilots, {args.throughput_jobs} trivial jobs (jobs/s), {engine} "
                "engine, beside Prefect's deployment runs",
                "value": rate,
                "baseline": worker_ceiling,
                "baseline_label": "Prefect's empty deployment runs claimed from a pool, 4 clients",
            }
            for engine, rate in rates.items()
        ]
        figures += [
            {
                "figure": "server CPU-s per trivial job on 4 pilots"
                + ("" if engine == "fork" else f", {engine} engine"),
                "value": cpu_s,
                "baseline": server_per_run,
                "baseline_label": "per empty in-process run (Prefect's ceiling)",
            }
            for engine, cpu_s in server_per_job.items()
        ]
        if args.queue_jobs > 0:
            control.pilot_worker_process(pilots).stop()
            pilots = start_pilots(control, base_env, args.many_pilots, args.many_pilots, engines[0])
            with Sampler(server_pid) as sampler:
                rate, ok = asyncio.run(throughput(job, args.queue_jobs, pilot_deployment))
            print(
                f"{args.many_pilots} pilots, {args.queue_jobs} queued trivial jobs: "
                f"{rate:.2f} jobs/s ({ok} completed); server {sampler.summary()}"
            )
            figures.append(
                {
                    "figure": f"{args.queue_jobs} queued jobs on {args.many_pilots} pilots "
                    "(jobs/s)",
                    "value": rate,
                    "baseline": base_rate,
                    "baseline_label": "bare subprocess loop",
                }
            )
        # One machine-readable line for bench/run_all.py.
        print("BENCH " + json.dumps({"bench": "pilots", "figures": figures}))
    finally:
        control.down(settings, lambda line: None)
        if args.postgres:
            asyncio.run(pg(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
