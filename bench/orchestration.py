"""What orchestration costs beside the physics: CPU and flow runs per raw file, files per second.

Brings up its own embedded system with the code of ``p3s up`` (Prefect server on SQLite, the
p3s pool on warm local pilots, the deployments and their ``p3s.file.arrived`` triggers, the
inbox watcher) under a temporary home and free ports. Then, in the same run:

1. **Payloads alone**: the four DQM payloads one after another in this process on each
   distinct simulated reduced-geometry file (no Prefect, no storage checks, no events): their
   CPU seconds per file, and the payload-only bound on this machine,
   ``cores / payload CPU-s per file`` files per second. Measured before the feed (which sets
   its rate) and again after it: the figures use the mean of the two, since a shared
   machine's speed drifts over the minutes of a run. Then the same in ``--pilots``
   processes at once, as the pilots run them: with every core busy a payload takes more CPU
   (shared caches and memory bandwidth), so both figures are also given against this.
2. **Through the inbox**: ``--files`` files renamed into the inbox at ``--load`` times that
   bound (each a new run number), then drained. Everything the system runs is charged: the
   CPU time of every process ``p3s up`` started and of all their descendants, including those
   that ended meanwhile (the kernel adds a reaped child's time to its parent's), measured as
   the difference between the start and the end of the feed. Per file: everything, and the
   orchestration (everything minus the payloads' own CPU per file), against the payloads' CPU.
3. Sustained files per second (files ended over the time from the first arrival to the last
   end) against the payload-only bound; the backlog sampled every 5 s; the flow runs and the
   server's API requests per file (the server's own count by route, read at the start and the
   end of the feed; ``--detail`` lists the routes).
4. **Prefect's floor**, after the drain, on the same server: ``--floor-runs`` flow runs of
   the DQM runs' shape (six tasks that do nothing) and of none, created directly or from a
   deployment and claimed from a pool as a worker does, run in-process one after another:
   the server's CPU beyond its idle rate and the client's, four runs per file, against the
   payloads' CPU. What Prefect itself spends for runs of that shape, whatever runs them; the
   sustained rate the cores would allow at that floor, ``payload / (payload + floor)`` of the
   bound.

Goals (issue 20): orchestration CPU per file at most 0.25x the payloads'; sustained files/s at
least 0.8x the payload-only bound, backlog bounded.

Run: ``.venv/bin/python bench/orchestration.py [--files 40 | --minutes 10] [--load 0.8]``
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

from benchlib import shaped_runs, take, tree_cpu
from inbox_load import embedded_system_env, feed_and_watch, simulate_files

#: Requests of Prefect's own empty flow run, created and run in-process (counted against the
#: real server by tests/integration/test_api_requests.py).
PREFECT_RUN_REQUESTS = 13

#: Tasks of a DQM run (flows/dqm.py): stage-in, payload, stage-out, quality, file-lifecycle,
#: replicate. Prefect's floor below is measured for runs of this shape.
DQM_TASKS = 6

#: Prefect's floor is measured for these shapes: (tasks per run, created from a deployment).
FLOOR_SHAPES = ((DQM_TASKS, True), (0, True), (DQM_TASKS, False), (0, False))


#: Seconds after which the server has stored what it was sent: its event persister flushes
#: every 5 s, the task-run recorder every 1 s.
_SERVER_FLUSH_S = 7.0


def floor_label(tasks: int, deployment: bool) -> str:
    made = "from a deployment, claimed from a pool" if deployment else "created directly"
    return f"runs of {tasks} empty tasks, {made}, in-process"


def prefect_floor(server_pid: int, n: int, tasks: int, deployment: bool) -> tuple[float, float]:
    """Prefect's own CPU seconds per flow run of ``tasks`` empty tasks on this server: the
    server's beyond its idle rate, and the client's (its engine, in-process; no pilot, payload,
    log line, artifact or event of p3s). What any run of that shape costs here; with
    ``deployment``, any run created from a deployment and claimed from a work pool."""
    import multiprocessing

    def server_cpu() -> float:
        return tree_cpu({"server": server_pid})["server"]

    ctx = multiprocessing.get_context("fork")
    out, go = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=shaped_runs, args=(n, tasks, deployment, out, go))
    child.start()
    take(out, 300)  # its warm-up done
    time.sleep(_SERVER_FLUSH_S)
    s0, t0 = server_cpu(), time.monotonic()
    time.sleep(10)
    idle = (server_cpu() - s0) / (time.monotonic() - t0)
    s0, t0 = server_cpu(), time.monotonic()
    go.set()
    client = take(out, 600)
    child.join()
    time.sleep(_SERVER_FLUSH_S)  # the events and task-run states still in the server's batches
    server = server_cpu() - s0 - idle * (time.monotonic() - t0)
    return server / n, client / n


def payload_cpu(path: Path, outbox: Path) -> tuple[float, float]:
    """CPU seconds (every thread of this process) and wall seconds the four payloads take one
    after another on ``path``, products written under ``outbox``."""
    from p3s.payloads.runner import PAYLOADS, run_payload

    c0, t0 = time.process_time(), time.perf_counter()
    for name in PAYLOADS:
        run_payload(name, path, outbox)
    return time.process_time() - c0, time.perf_counter() - t0


def payload_cpu_of(files: list[Path], outbox: Path) -> list[float]:
    """The payloads' CPU seconds on each file, after a warm-up on the first (one process)."""
    payload_cpu(files[0], outbox)
    return [payload_cpu(f, outbox)[0] for f in files]


def payload_cpu_side_by_side(files: list[Path], outbox: Path, processes: int) -> float:
    """Mean CPU seconds per file of the payloads with ``processes`` of them running at once,
    each in its own process, as the pilots run them: on a machine whose cores are all busy a
    payload takes more CPU than alone (shared caches and memory bandwidth)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(payload_cpu_of, files, outbox / str(i)) for i in range(processes)]
        return statistics.mean(c for job in jobs for c in job.result())


def process_cpu(roots: dict[str, int]) -> dict[tuple[int, str], tuple[float, ...]]:
    """CPU seconds (user, system, reaped children's user, their system) of each live process
    of the trees, by (pid, command line): where the time goes (``--detail``)."""
    import psutil

    found = {}
    for pid in roots.values():
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                t = proc.cpu_times()
                cmd = " ".join(proc.cmdline())[-90:]
            except psutil.NoSuchProcess:
                continue
            found[(proc.pid, cmd)] = (t.user, t.system, t.children_user, t.children_system)
    return found


def forked_cpu(roots: dict[str, int]) -> tuple[float, float]:
    """CPU seconds (user, system) of the pilots' fork servers and every process they forked
    (the flow-run children, ended ones included: a fork server reaps its children)."""
    import psutil

    user = system = 0.0
    for pid in roots.values():
        try:
            tree = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                if "multiprocessing.forkserver" not in " ".join(proc.cmdline()):
                    continue
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user += t.user + t.children_user
            system += t.system + t.children_system
    return user, system


def service_roots(settings) -> dict[str, int]:
    """The processes ``p3s up`` started, by service name."""
    from p3s.stack import control

    roots = {}
    for service in control.managed(settings):
        process = service.process()
        if process is not None:
            roots[service.name] = process.pid
    return roots


def children_report(run_dir: Path) -> str:
    """What the pilots' logs say of their flow-run children: how many, the runs each took,
    and its resident memory at its first and its last run (``P3S_PILOTS__REUSE_RUNS``)."""
    import re

    said = re.compile(r"child pid (\d+), its run (\d+), (\d+) MiB resident")
    runs: dict[int, list[tuple[int, int]]] = {}
    for log in run_dir.glob("pilots-*.log"):
        for m in said.finditer(log.read_text(errors="replace")):
            runs.setdefault(int(m[1]), []).append((int(m[2]), int(m[3])))
    if not runs:
        return "flow-run children: none named in the pilots' logs"
    firsts = [min(r)[1] for r in runs.values()]
    lasts = [max(r)[1] for r in runs.values()]
    most = max(runs.values(), key=len)
    return (
        f"flow-run children: {len(runs)}, runs each {min(map(len, runs.values()))} to "
        f"{len(most)}; resident at the first run {min(firsts)}-{max(firsts)} MiB, at the last "
        f"{min(lasts)}-{max(lasts)} MiB; the busiest child by run: "
        + " ".join(f"{mib}" for _, mib in sorted(most))
    )


def server_requests(settings, roots: dict[str, int]) -> dict[str, int]:
    """The server's API requests so far, by route (:mod:`p3s.system.request_counts`)."""
    from p3s.system.request_counts import ask_for_counts

    return ask_for_counts(roots["prefect-server"], settings.prefect_home)["routes"]


async def payload_cpu_in_runs(since: float) -> list[float]:
    """CPU seconds of each payload run since ``since`` (epoch s), as the runs logged them
    (``tasks/analyse.py``: the payload's own thread, measured while everything else ran)."""
    import datetime

    from p3s.tasks.analyse import parse_payload_cost
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    start = datetime.datetime.fromtimestamp(since, datetime.UTC)
    found: list[float] = []
    async with get_client() as client:
        offset = 0
        while True:
            page = await client.read_logs(
                log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=start)),
                limit=200,
                offset=offset,
            )
            found += [c.cpu_s for log in page if (c := parse_payload_cost(log.message))]
            if len(page) < 200:
                return found
            offset += 200


async def flow_run_count() -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.count_flow_runs()


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40, help="files fed through the inbox")
    parser.add_argument("--minutes", type=float, help="feed for this long (instead of --files)")
    parser.add_argument(
        "--load", type=float, default=0.8, help="arrival rate as a fraction of the bound"
    )
    parser.add_argument("--rate", type=float, help="files per second (instead of --load)")
    parser.add_argument("--events", type=int, default=2, help="events per file")
    parser.add_argument("--pilots", type=int, default=2, help="local pilots (min = max)")
    parser.add_argument("--distinct-files", type=int, default=4)
    parser.add_argument("--drain-minutes", type=float, default=10.0)
    parser.add_argument("--detail", action="store_true", help="CPU per process of the trees")
    parser.add_argument(
        "--floor-runs",
        type=int,
        default=30,
        help="runs of Prefect's floor for each shape, after the drain (0: not measured)",
    )
    parser.add_argument(
        "--reuse-runs", type=int, help="runs per flow-run child (P3S_PILOTS__REUSE_RUNS)"
    )
    args = parser.parse_args()
    if args.reuse_runs:
        os.environ["P3S_PILOTS__REUSE_RUNS"] = str(args.reuse_runs)
    print("load average at the start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))

    cores = os.cpu_count() or 1
    home = Path(tempfile.mkdtemp(prefix="p3s-bench-orch-"))
    os.environ.update(embedded_system_env(home, args.pilots))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from p3s.stack import control
    from p3s.system.prefect_env import apply_client_environment
    from p3s.system.settings import Settings

    settings = Settings()
    apply_client_environment(settings)
    files = simulate_files(home / "sim", args.distinct_files, args.events)
    print(f"simulated {len(files)} files ({files[0].stat().st_size / 1e6:.1f} MB each)")
    payload_cpu(files[0], home / "baseline")  # warm-up: imports, page cache
    measured = [payload_cpu(f, home / "baseline") for f in files]
    cpu_per_file = statistics.mean(c for c, _ in measured)
    wall_per_file = statistics.mean(w for _, w in measured)
    bound = cores / cpu_per_file
    rate = args.rate or args.load * bound
    print(
        f"payloads alone, in-process: {cpu_per_file:.2f} CPU-s per file ({wall_per_file:.2f} s "
        f"wall); payload-only bound on {cores} cores: {bound:.3f} files/s"
    )
    side_by_side = payload_cpu_side_by_side(files, home / "baseline", args.pilots)
    side_bound = cores / side_by_side
    print(
        f"payloads alone, {args.pilots} processes at once (as the pilots run them): "
        f"{side_by_side:.2f} CPU-s per file; bound {side_bound:.3f} files/s"
    )

    try:
        control.up(settings, lambda line: print("  ", line))
        roots = service_roots(settings)
        # One file first: the pilots' first runs, page cache; not charged.
        feed_and_watch(settings, files[:1], 1.0, 1 / 60, args.drain_minutes, first_run=90000)
        runs_before = asyncio.run(flow_run_count())
        requests_before = server_requests(settings, roots)
        cpu_before = tree_cpu(roots)
        detail_before = process_cpu(roots)
        forked_before = forked_cpu(roots)
        if args.minutes:
            args.files = max(1, round(rate * args.minutes * 60))
        minutes = (args.files + 0.5) / rate / 60  # the feed sends int(rate * minutes * 60)
        print(f"feeding {args.files} files at {rate:.3f} files/s ({args.pilots} pilots)")
        feed_start = time.time()
        arrived, ended, where, samples = feed_and_watch(
            settings, files, rate, minutes, args.drain_minutes
        )
        cpu_after = tree_cpu(roots)
        detail_after = process_cpu(roots)
        forked = [a - b for a, b in zip(forked_cpu(roots), forked_before, strict=True)]
        requests_after = server_requests(settings, roots)
        runs = asyncio.run(flow_run_count()) - runs_before
        in_runs = asyncio.run(payload_cpu_in_runs(feed_start))
        load = os.getloadavg()
        floors = {}
        if args.floor_runs:
            print(f"Prefect's floor: {args.floor_runs} runs of each shape, in-process")
            for shape in FLOOR_SHAPES:
                floors[shape] = prefect_floor(roots["prefect-server"], args.floor_runs, *shape)
    finally:
        control.down(settings, lambda line: None)

    n_ended = len(ended)
    if not n_ended:
        raise SystemExit("no file ended: see the logs under " + str(settings.run_dir))
    # The payloads again, after the feed: this machine's speed drifts by 10-30 % over the
    # minutes of a run, so the baseline is the mean of the measurements before and after.
    before_feed = cpu_per_file
    after_feed = statistics.mean(c for c, _ in (payload_cpu(f, home / "baseline") for f in files))
    cpu_per_file = (before_feed + after_feed) / 2
    bound = cores / cpu_per_file
    print(
        f"payloads alone, in-process, after the feed: {after_feed:.2f} CPU-s per file (before: "
        f"{before_feed:.2f}); below, their mean {cpu_per_file:.2f} and its bound {bound:.3f}"
    )
    by_service = {k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in roots}
    everything = sum(by_service.values()) / n_ended
    orchestration = everything - cpu_per_file
    span = max(ended.values()) - min(arrived.values())
    sustained = n_ended / span
    feed_end = minutes * 60
    first = [b for t, b, _ in samples if t < feed_end / 2]
    second = [b for t, b, _ in samples if feed_end / 2 <= t <= feed_end]
    n_used = sum(1 for k in where.values() if k == "used")
    print(
        f"\n{len(arrived)} files arrived, {n_ended} ended ({n_used} used), "
        f"{len(arrived) - n_ended} never ended; {runs} flow runs ({runs / n_ended:.2f} per file)"
    )
    for name, cpu in sorted(by_service.items()):
        print(f"  {name}: {cpu / n_ended:.2f} CPU-s per file")
    requests = {
        route: n - requests_before.get(route, 0)
        for route, n in requests_after.items()
        if n > requests_before.get(route, 0)
    }
    requests_per_file = sum(requests.values()) / n_ended
    print(
        f"  API requests: {requests_per_file:.1f} per file "
        f"({requests_per_file * n_ended / max(runs, 1):.1f} per flow run; Prefect's own empty "
        f"run in-process makes {PREFECT_RUN_REQUESTS})"
    )
    if args.detail:
        for route, n in sorted(requests.items(), key=lambda kv: -kv[1]):
            print(f"    {n / n_ended:6.2f} per file  {route}")
        zero = (0.0, 0.0, 0.0, 0.0)
        deltas = {
            k: [a - b for a, b in zip(v, detail_before.get(k, zero), strict=True)]
            for k, v in detail_after.items()
        }
        print("    CPU-s per file: total (user, system; reaped children's user, system)")
        for (pid, cmd), cpu in sorted(deltas.items(), key=lambda kv: -sum(kv[1]))[:12]:
            parts = ", ".join(f"{c / n_ended:.2f}" for c in cpu)
            print(f"    {sum(cpu) / n_ended:6.2f} ({parts})  pid {pid}  {cmd}")
        user, system = (c / n_ended for c in forked)
        print(
            f"    flow-run children (fork servers and all they forked): {user + system:.2f} "
            f"CPU-s per file (user {user:.2f}, system {system:.2f}), payloads included"
        )
        print("    " + children_report(settings.run_dir))
    print("load average at the end of the feed: " + " ".join(f"{x:.2f}" for x in load))
    print(
        f"CPU per file: everything {everything:.2f} s, payloads alone {cpu_per_file:.2f} s, "
        f"orchestration {orchestration:.2f} s = {orchestration / cpu_per_file:.2f}x the payloads'"
    )
    # The payloads' CPU as the runs measured it, in the same minutes as everything else: free
    # of the machine's drift between the baseline and the feed.
    own = sum(in_runs) / n_ended if in_runs else None
    if own:
        print(
            f"  beside the payloads' own CPU in the runs ({len(in_runs)} payload runs, "
            f"{own:.2f} s per file): orchestration {everything - own:.2f} s = "
            f"{(everything - own) / own:.2f}x"
        )
    beside = everything - side_by_side
    print(
        f"  beside the payloads {args.pilots} at once ({side_by_side:.2f} s): orchestration "
        f"{beside:.2f} s = {beside / side_by_side:.2f}x"
    )
    # What Prefect itself spends on four runs of the DQM runs' shape, beside the same payloads:
    # the least any Prefect flow run per payload can cost here.
    for shape, (server, client) in floors.items():
        per_file = 4 * (server + client)
        print(
            f"Prefect's floor, 4 {floor_label(*shape)}: {per_file:.2f} CPU-s per file "
            f"(server {4 * server:.2f}, engine in-process {4 * client:.2f}) = "
            f"{per_file / cpu_per_file:.2f}x the payloads'; p3s's orchestration is "
            f"{orchestration / per_file:.2f}x it; at this floor the cores would sustain at most "
            f"{cpu_per_file / (cpu_per_file + per_file):.2f}x the payload-only bound"
        )
    print(
        f"sustained {sustained:.3f} files/s = {sustained / bound:.2f}x the payload-only bound "
        f"({bound:.3f}), {sustained / side_bound:.2f}x the bound of {args.pilots} at once "
        f"({side_bound:.3f}); fed {rate:.3f}"
    )
    print(
        f"backlog: max {max((b for _, b, _ in samples), default=0)}, mean of the first half of "
        f"the feed {statistics.mean(first) if first else 0:.1f}, of the second "
        f"{statistics.mean(second) if second else 0:.1f}"
    )
    print(
        "BENCH "
        + json.dumps(
            {
                "bench": "orchestration",
                "figures": [
                    {
                        "figure": "orchestration CPU-s per file",
                        "value": orchestration,
                        "baseline": cpu_per_file,
                        "baseline_label": "payloads' CPU-s per file, in-process",
                    },
                    {
                        "figure": f"sustained files/s ({args.files} files at {rate:.3f}/s)",
                        "value": sustained,
                        "baseline": bound,
                        "baseline_label": "payload-only bound (cores / payload CPU-s)",
                    },
                    {
                        "figure": f"orchestration CPU-s per file, payloads {args.pilots} at once",
                        "value": beside,
                        "baseline": side_by_side,
                        "baseline_label": f"payloads' CPU-s per file, {args.pilots} processes "
                        "at once",
                    },
                    {
                        "figure": "sustained files/s, bound of payloads side by side",
                        "value": sustained,
                        "baseline": side_bound,
                        "baseline_label": "cores / payload CPU-s with the pilots' concurrency",
                    },
                    *(
                        [
                            {
                                "figure": "orchestration CPU-s per file, beside the payloads' "
                                "own CPU in the runs",
                                "value": everything - own,
                                "baseline": own,
                                "baseline_label": "payloads' CPU-s per file as the runs logged it",
                            }
                        ]
                        if own
                        else []
                    ),
                    {
                        "figure": "API requests per file (the server's count)",
                        "value": requests_per_file,
                        "baseline": PREFECT_RUN_REQUESTS * runs / n_ended,
                        "baseline_label": "Prefect's own requests for as many empty runs",
                    },
                    *(
                        {
                            "figure": f"Prefect's floor CPU-s per file: 4 {floor_label(*shape)}",
                            "value": 4 * sum(floors[shape]),
                            "baseline": cpu_per_file,
                            "baseline_label": "payloads' CPU-s per file, in-process",
                        }
                        for shape in floors
                    ),
                    {
                        "figure": "flow runs per file",
                        "value": runs / n_ended,
                        "baseline": 4,
                        "baseline_label": "DQM payloads per file",
                    },
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
