"""Concurrency benchmark: 1000 jobs queued at once and running at the same time on pilots.

p3s ran 1000 concurrent jobs on 300 to 600 pilots. This brings up the production
configuration of the Prefect server (a fresh PostgreSQL database and Redis messaging, on this
host) under a temporary home, starts ``--pilots`` local pilots with ``--slots`` flow-run slots
each, submits ``--jobs`` p3s jobs at once whose payload marks its start, sleeps ``--sleep`` s
and marks its end, and measures in the same run:

* concurrency: the most payloads between their start and end marks at one moment (from the
  marks), and the most flow runs Running at once (Prefect's count, sampled);
* accounting: every job Completed, each payload executed exactly once (one start and one end
  mark per job), none lost;
* rates: jobs started per second until the last start, completed per second overall;
* the Prefect server's CPU (% of one core) and memory, PostgreSQL's, and the machine's memory
  in use, sampled meanwhile.

The baseline is the same number of bare ``subprocess.Popen`` of the payload started at once,
with the same sleep: concurrency and start rate without Prefect, pilots or jobs.

Memory is what bounds the runs waiting at once on one host: each flow-run child copies about
30 MiB of its fork server's pages. The memory per waiting run (all started, none ended yet) is
reported beside a bare waiting payload's. The run stops (``p3s down``) if the machine's
available memory falls under ``--min-free-mib``, so that it never drives the host into the
out-of-memory killer.

Run: ``.venv/bin/python bench/concurrency.py [--jobs 1000] [--pilots 10] [--slots 100]
[--sleep 600]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import Sampler, free_port, pg

PAYLOAD = """#!/bin/sh
echo "start $(date +%s.%N)" >> "$P3S_BENCH_DIR/$P3S_JOB_UUID"
sleep "$P3S_BENCH_SLEEP"
echo "end $(date +%s.%N)" >> "$P3S_BENCH_DIR/$P3S_JOB_UUID"
"""
REDIS_DB = 9  # a Redis database of its own, emptied before and after


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) open at one moment."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = best = 0
    for _, step in edges:
        open_now += step
        best = max(best, open_now)
    return best


def read_marks(marks: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Each job's start and end marks, by file name (the job's uuid)."""
    out = {}
    for path in marks.iterdir():
        starts, ends = [], []
        for line in path.read_text().splitlines():
            word, _, value = line.partition(" ")
            (starts if word == "start" else ends).append(float(value))
        out[path.name] = (starts, ends)
    return out


def tree_uss_mib(root_pid: int) -> float:
    """Private memory (USS, MiB) of a process and all its descendants: on a host shared with
    other work, the machine's memory in use moves by more than the runs measured."""
    import psutil

    total = 0
    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        try:
            total += proc.memory_full_info().uss
        except psutil.Error:
            continue
    return total / 2**20


def bare_baseline(
    script: Path, marks: Path, n: int, sleep_s: float
) -> tuple[int, float, float, float]:
    """``n`` bare processes of the payload started at once: peak overlap, starts per second,
    the machine's memory per waiting process and a waiting payload's own USS (MiB)."""
    import psutil

    def used_mib() -> float:
        vm = psutil.virtual_memory()
        return (vm.total - vm.available) / 2**20

    env = {**os.environ, "P3S_BENCH_DIR": str(marks), "P3S_BENCH_SLEEP": str(sleep_s)}
    before = used_mib()
    t0 = time.time()
    procs = [
        subprocess.Popen([str(script)], env={**env, "P3S_JOB_UUID": f"base-{i}"}) for i in range(n)
    ]
    time.sleep(min(2.0, sleep_s / 2))
    per_process = (used_mib() - before) / n
    uss = statistics.mean(tree_uss_mib(proc.pid) for proc in procs)
    for proc in procs:
        proc.wait()
    found = read_marks(marks)
    intervals = [(s[0], e[0]) for s, e in found.values() if s and e]
    last_start = max(s[0] for s, _ in found.values())
    for path in marks.iterdir():
        path.unlink()
    return peak_overlap(intervals), n / max(1e-9, last_start - t0), per_process, uss


class TreeSampler:
    """USS of the pilot worker's process tree (pilots, fork servers, flow-run processes,
    payloads) with the number of payloads started, every ``interval_s``, in a thread."""

    def __init__(self, root_pid: int, marks: Path, interval_s: float = 10.0) -> None:
        self.root_pid, self.marks, self.interval_s = root_pid, marks, interval_s
        self.samples: list[tuple[float, float, int, int]] = []  # time, MiB, started, ended
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            found = read_marks(self.marks)
            started = sum(1 for s, _ in found.values() if s)
            ended = sum(1 for _, e in found.values() if e)
            self.samples.append((time.time(), tree_uss_mib(self.root_pid), started, ended))
            if self._stop.wait(self.interval_s):
                return

    def per_waiting_run(self) -> tuple[float, int]:
        """(USS added per waiting run, runs waiting) at the last sample before any ended."""
        base = self.samples[0][1]
        before = [s for s in self.samples if s[3] == 0 and s[2] > 0]
        if not before:
            return 0.0, 0
        _, mib, started, _ = max(before, key=lambda s: s[2])
        return (mib - base) / started, started

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class RunningCounter:
    """Samples how many flow runs of a deployment Prefect holds Running, in a thread."""

    def __init__(self, deployment_id, interval_s: float = 5.0) -> None:
        self.deployment_id = deployment_id
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        running = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
        )
        ours = DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))
        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.interval_s):
                try:
                    n = client.count_flow_runs(flow_run_filter=running, deployment_filter=ours)
                except Exception:
                    continue
                self.samples.append((time.time(), n))

    def __enter__(self) -> RunningCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class MemorySampler:
    """The machine's memory in use (MiB), sampled in a thread; below ``min_free_mib`` of
    available memory it interrupts the benchmark (SIGINT to this process: ``p3s down``)."""

    def __init__(self, interval_s: float = 2.0, min_free_mib: float = 0.0) -> None:
        import psutil

        self.psutil = psutil
        self.interval_s = interval_s
        self.min_free_mib = min_free_mib
        self.used: list[float] = []
        self.times: list[float] = []
        self.aborted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            vm = self.psutil.virtual_memory()
            self.used.append((vm.total - vm.available) / 2**20)
            self.times.append(time.time())
            if vm.available / 2**20 < self.min_free_mib and not self.aborted:
                self.aborted = True
                print(f"available memory {vm.available / 2**20:.0f} MiB: stopping the run")
                os.kill(os.getpid(), signal.SIGINT)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def postmaster_pid() -> int:
    """The PostgreSQL server's main process (its backends are its children)."""
    import psutil

    for p in psutil.process_iter(["name", "ppid"]):
        if (p.info["name"] or "").startswith("postgres"):
            parent = psutil.Process(p.info["ppid"])
            if not (parent.name() or "").startswith("postgres"):
                return p.pid
    raise RuntimeError("no PostgreSQL server process found")


async def submit_and_wait(job, n: int, deployment: str, timeout_s: float) -> list:
    from p3s.jobs.client import submit_jobs, wait_for_jobs

    runs = await submit_jobs([job] * n, deployment=deployment)
    # A slow poll: reading 1000 runs every second would load the server being measured.
    return await wait_for_jobs([r.id for r in runs], timeout_s, poll_s=15.0)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--pilots", type=int, default=10)
    parser.add_argument("--slots", type=int, default=100, help="flow-run slots per pilot")
    parser.add_argument("--sleep", type=float, default=600.0, help="payload sleep (s)")
    parser.add_argument(
        "--min-free-mib", type=float, default=1536, help="stop the run below this much"
    )
    parser.add_argument(
        "--engine",
        choices=["fork", "shared"],
        default="shared",
        help="P3S_PILOTS__ENGINE: one engine process per pilot (the default), or a forked "
        "child per run",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="p3s-bench-concurrency-"))
    scripts, marks = home / "payloads", home / "marks"
    scripts.mkdir()
    marks.mkdir()
    script = scripts / "sleep_marked.sh"
    script.write_text(PAYLOAD)
    script.chmod(0o755)
    dbname = f"p3s_bench_{os.getpid()}"
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    env = {
        "P3S_HOME": str(home),
        "P3S_SERVER__PORT": str(free_port()),
        "P3S_UI__PORT": str(free_port()),
        "P3S_SERVER__DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}",
        "P3S_SERVER__REDIS_URL": redis_url,
        "P3S_PAYLOAD_ROOTS": str(scripts),
        "P3S_POOL__WORKER": "process",
        "P3S_PILOTS__POOL_NAME": "p3s-pilots",
        "P3S_PILOTS__CLUSTER": "local",
        "P3S_PILOTS__IDLE_SECONDS": "3600",
        "P3S_PILOTS__MIN_PILOTS": str(args.pilots),
        "P3S_PILOTS__MAX_PILOTS": str(args.pilots),
        "P3S_PILOTS__SLOTS": str(args.slots),
        "P3S_PILOTS__MEMORY": "4GiB",
        "P3S_PILOTS__ENGINE": args.engine,
    }
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    asyncio.run(pg(f'CREATE DATABASE "{dbname}"'))
    os.environ.update(env)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pilots import wait_pilots

    from p3s.jobs.model import P3SJob
    from p3s.stack import control
    from p3s.system.prefect_env import apply_client_environment
    from p3s.system.settings import Settings

    settings = Settings()
    apply_client_environment(settings)
    base_peak, base_rate, base_mib, base_uss = bare_baseline(
        script, marks, args.jobs, min(args.sleep, 30.0)
    )
    print(
        f"baseline: {args.jobs} bare processes at once: peak {base_peak} concurrent, "
        f"{base_rate:.0f} starts/s, {base_mib:.2f} MiB each while waiting (machine), "
        f"{base_uss:.2f} MiB USS each"
    )
    job = P3SJob(
        name="concurrent",
        timeout=int(args.sleep) + 3600,
        jobtype="bench",
        payload=str(script),
        priority=5,
        env={"P3S_BENCH_DIR": str(marks), "P3S_BENCH_SLEEP": str(args.sleep)},
    )
    pool = settings.pilots.pool_name
    try:
        control.up(settings, lambda line: print("  ", line))
        control.setup_pilot_pool(settings, lambda line: print("  ", line))
        control.start_pilot_worker(settings, lambda line: print("  ", line), extra_env=env)
        wait_pilots(settings, pool, args.pilots, timeout_s=600)
        print(f"{args.pilots} pilots with {args.slots} slots each are up")
        server_pid = control.server_process(settings).process().pid
        pilot_worker_pid = control.pilot_worker_process(settings).process().pid

        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"p3s-job/{pool}")
        t0 = time.time()
        with (
            Sampler(server_pid, interval_s=2.0) as server,
            Sampler(postmaster_pid(), interval_s=2.0) as database,
            MemorySampler(min_free_mib=args.min_free_mib) as memory,
            RunningCounter(deployment.id) as running,
            TreeSampler(pilot_worker_pid, marks) as tree,
        ):
            done = asyncio.run(
                submit_and_wait(job, args.jobs, f"p3s-job/{pool}", args.sleep + 7200)
            )
        wall = time.time() - t0
    finally:
        control.down(settings, lambda line: None)
        asyncio.run(pg(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        redis.Redis.from_url(redis_url).flushdb()

    completed = sum(r.state.type.value == "COMPLETED" for r in done)
    found = read_marks(marks)
    once = sum(len(s) == 1 and len(e) == 1 for s, e in found.values())
    twice = sum(len(s) > 1 for s, _ in found.values())
    intervals = [(s[0], e[-1]) for s, e in found.values() if s and e]
    peak = peak_overlap(intervals)
    peak_running = max((n for _, n in running.samples), default=0)
    last_start = max((s[0] for s, _ in found.values() if s), default=t0)
    start_rate = len(found) / max(1e-9, last_start - t0)
    print(
        f"{args.jobs} jobs on {args.pilots} pilots x {args.slots} slots ({args.engine} engine), "
        f"sleep {args.sleep:.0f} "
        f"s: {completed} Completed, {once} payloads executed exactly once, {twice} more than "
        f"once, {args.jobs - len(found)} never started; peak {peak} payloads at once (Prefect "
        f"Running max {peak_running}); all started {last_start - t0:.0f} s after submission "
        f"({start_rate:.2f} starts/s); all finished in {wall:.0f} s ({args.jobs / wall:.2f} "
        f"jobs/s)"
    )
    at_submission = memory.used[0] if memory.used else 0.0
    peak_memory = max(memory.used, default=0.0)
    per_run = (peak_memory - at_submission) / max(1, peak)
    # Once every payload has started, the runs only wait: memory then, before the first
    # ends, is what a waiting run holds.
    first_end = min((e[0] for _, e in found.values() if e), default=0.0)
    before = [u for t, u in zip(memory.times, memory.used, strict=True) if t <= first_end]
    waiting = sum(1 for s0, _ in intervals if s0 <= first_end)
    settled = before[-1] if before else peak_memory
    per_waiting = (settled - at_submission) / max(1, waiting)
    print(
        f"Prefect server {server.summary()}; PostgreSQL {database.summary()}; "
        f"machine memory in use max {peak_memory:.0f} MiB "
        f"(mean {statistics.mean(memory.used) if memory.used else 0:.0f}, at submission "
        f"{at_submission:.0f}): {per_run:.1f} MiB more per payload running at the peak; "
        f"{settled:.0f} MiB with {waiting} waiting before the first ended: {per_waiting:.1f} "
        "MiB per waiting run"
    )
    tree_per_run, tree_waiting = tree.per_waiting_run()
    print(
        f"pilots' process tree (USS): {tree.samples[0][1]:.0f} MiB at submission, "
        f"{tree_per_run:.2f} MiB more per waiting run with {tree_waiting} waiting (a bare "
        f"waiting payload: {base_uss:.2f} MiB; {args.engine} engine)"
    )
    engine = "" if args.engine == "fork" else f", {args.engine} engine"
    figures = [
        {
            "figure": f"peak concurrent payloads of {args.jobs} "
            f"({args.pilots} pilots x {args.slots} slots)",
            "value": peak,
            "baseline": base_peak,
            "baseline_label": "bare processes at once",
        },
        {
            "figure": f"{args.jobs} jobs: executed exactly once",
            "value": once,
            "baseline": args.jobs,
            "baseline_label": "jobs submitted",
        },
        {
            "figure": f"{args.jobs} queued jobs: starts per second",
            "value": start_rate,
            "baseline": base_rate,
            "baseline_label": "bare processes at once",
        },
        {
            "figure": f"machine memory in use max (MiB), {args.jobs} jobs",
            "value": peak_memory,
            "baseline": at_submission,
            "baseline_label": "at submission",
        },
        {
            "figure": "memory per waiting run (MiB)"
            + ("" if args.engine == "fork" else f", {args.engine} engine"),
            "value": per_waiting,
            "baseline": base_mib,
            "baseline_label": "bare payload process, waiting",
        },
        {
            "figure": f"pilots' USS per waiting run (MiB){engine}",
            "value": tree_per_run,
            "baseline": base_uss,
            "baseline_label": "bare payload process, waiting (USS)",
        },
        {
            "figure": f"Prefect server RSS max (MiB), {args.jobs} jobs",
            "value": max(server.rss, default=0),
            "baseline": server.rss[0] if server.rss else 0,
            "baseline_label": "at submission",
        },
    ]
    print("BENCH " + json.dumps({"bench": "concurrency", "figures": figures}))


if __name__ == "__main__":
    main()
