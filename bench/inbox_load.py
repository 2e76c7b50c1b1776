"""Sustained inbox load: files arriving at a steady rate through all four DQM flows.

Brings up its own embedded system with the code of ``p3s up`` (Prefect server on SQLite, or
PostgreSQL with ``--postgres``; the p3s pool on warm local pilots; the deployments, whose
``dqm-*/inbox`` runs are created by ``p3s.file.arrived`` triggers; the inbox watcher) under a
temporary home and free ports, then for ``--minutes`` renames one simulated reduced-geometry
raw file (1 APA, 4 fibers, ``--events`` events) into the inbox every ``1 / --rate`` seconds.

A file's *result* is the moment its life cycle ends: it lands in ``used/`` once all four DQM
flow runs (TPC monitor, purity, event display, beam) have finished, or in ``quarantine/``.
Recorded, sampled every 5 s: the backlog (files arrived and not yet ended) and the flow runs
scheduled or pending. After the feed stops the benchmark waits for the backlog to drain (at
most ``--drain-minutes``).

Baseline, in the same run: the four payloads run one after another in this process on one of
the files (no Prefect, no storage, no events): the least a file costs here.

Run: ``.venv/bin/python bench/inbox_load.py [--rate 1] [--minutes 10] [--pilots 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import free_port, pct

SAMPLE_S = 5.0


def raw_filename(run: int, subrun: int) -> str:
    from p3s.payloads.rawformat import raw_filename as name

    return name(run, subrun)


def set_run(path: Path, run: int) -> None:
    """Give a copy of a simulated file the run number its new name says (the payloads refuse
    a file whose name and attributes disagree)."""
    import h5py
    import numpy as np

    with h5py.File(path, "r+") as h5:
        h5.attrs["run"] = np.int64(run)


def simulate_files(folder: Path, n: int, n_events: int) -> list[Path]:
    """``n`` distinct reduced-geometry raw files (runs 70000.., subrun 1)."""
    from p3s.payloads.simulate import simulate_file

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = folder / raw_filename(70000 + i, 1)
        simulate_file(path, run=70000 + i, subrun=1, n_events=n_events, seed=i)
        files.append(path)
    return files


def payload_baseline(path: Path, outbox: Path) -> float:
    """Seconds the four payloads take one after another on ``path`` in this process, products
    (ROOT, PNG, JSON) written under ``outbox``: no Prefect, no storage checks, no events."""
    from p3s.payloads.runner import PAYLOADS, run_payload

    t0 = time.perf_counter()
    for name in PAYLOADS:
        run_payload(name, path, outbox)
    return time.perf_counter() - t0


async def queued_runs() -> int:
    """Flow runs scheduled or pending on the server now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        return await client.count_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
                )
            )
        )


def embedded_system_env(home: Path, pilots: int) -> dict[str, str]:
    """The variables of an embedded system under ``home`` on free ports, with ``pilots``
    local pilots (min = max) and as many runs at once."""
    return {
        "P3S_HOME": str(home),
        "P3S_SERVER__PORT": str(free_port()),
        "P3S_UI__PORT": str(free_port()),
        "P3S_PILOTS__MIN_PILOTS": str(pilots),
        "P3S_PILOTS__MAX_PILOTS": str(pilots),
        "P3S_POOL__CONCURRENCY": str(pilots),
    }


def feed_and_watch(
    settings,
    files: list[Path],
    rate: float,
    minutes: float,
    drain_minutes: float,
    first_run: int = 100000,
) -> tuple[dict[str, float], dict[str, float], dict[str, str], list[tuple[float, int, int]]]:
    """Feed the files at ``rate`` per second, as runs ``first_run``, ``first_run + 1``, ...;
    return arrival and end times per name, where each ended (used/quarantine), and
    (t, backlog, queued runs) samples."""
    data = settings.data
    inbox, staging = data / "inbox", settings.home / "staging"
    ends = {"used": data / "used", "quarantine": data / "quarantine"}
    staging.mkdir(exist_ok=True)
    arrived: dict[str, float] = {}
    ended: dict[str, float] = {}
    where: dict[str, str] = {}
    samples: list[tuple[float, int, int]] = []
    t_start = time.time()
    n_feed = int(rate * minutes * 60)
    next_sample = t_start

    def look() -> None:
        now = time.time()
        for kind, folder in ends.items():
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.name in arrived and entry.name not in ended:
                    ended[entry.name] = now
                    where[entry.name] = kind

    i = 0
    deadline = t_start + minutes * 60 + drain_minutes * 60
    while time.time() < deadline:
        now = time.time()
        if i < n_feed and now >= t_start + i / rate:
            source = files[i % len(files)]
            # Each arrival a new name (run number), so that every one is a new file.
            name = raw_filename(first_run + i, 1)
            shutil.copyfile(source, staging / name)
            set_run(staging / name, first_run + i)
            os.rename(staging / name, inbox / name)
            arrived[name] = time.time()
            i += 1
            if i % 60 == 0:
                print(
                    f"  {i} files fed, {len(ended)} ended, backlog {len(arrived) - len(ended)}",
                    flush=True,
                )
        look()
        if now >= next_sample:
            samples.append((now - t_start, len(arrived) - len(ended), asyncio.run(queued_runs())))
            next_sample += SAMPLE_S
        if i >= n_feed and len(ended) == len(arrived):
            break
        time.sleep(0.05)
    look()
    return arrived, ended, where, samples


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1.0, help="files per second")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long files arrive")
    parser.add_argument("--drain-minutes", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=2, help="events per file")
    parser.add_argument("--pilots", type=int, default=4, help="local pilots (min = max)")
    parser.add_argument("--distinct-files", type=int, default=10)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="p3s-bench-load-"))
    env = embedded_system_env(home, args.pilots)
    dbname = f"p3s_bench_load_{os.getpid()}"
    if args.postgres:
        from pilots import _pg

        asyncio.run(_pg(f'CREATE DATABASE "{dbname}"'))
        env["P3S_SERVER__DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    os.environ.update(env)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from p3s.stack import control
    from p3s.system.prefect_env import apply_client_environment
    from p3s.system.settings import Settings

    settings = Settings()
    apply_client_environment(settings)
    t0 = time.perf_counter()
    files = simulate_files(home / "sim", args.distinct_files, args.events)
    size_mb = files[0].stat().st_size / 1e6
    print(
        f"simulated {len(files)} files ({size_mb:.1f} MB each) in {time.perf_counter() - t0:.0f} s"
    )
    payload_baseline(files[0], home / "baseline")  # warm-up: imports, page cache
    base = min(payload_baseline(f, home / "baseline") for f in files[:3])
    print(f"baseline: the four payloads in-process on one file: {base:.2f} s")
    try:
        control.up(settings, lambda line: print("  ", line))
        print(f"feeding {args.rate} file/s for {args.minutes} min ({args.pilots} pilots)")
        arrived, ended, where, samples = feed_and_watch(
            settings, files, args.rate, args.minutes, args.drain_minutes
        )
    finally:
        control.down(settings, lambda line: None)
        if args.postgres:
            from pilots import _pg

            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))

    latency = [ended[n] - arrived[n] for n in ended]
    n_used = sum(1 for k in where.values() if k == "used")
    feed_end = args.minutes * 60
    during = [b for t, b, _ in samples if t <= feed_end]
    half = [b for t, b, _ in samples if feed_end / 2 <= t <= feed_end]
    first_half = [b for t, b, _ in samples if t < feed_end / 2]
    print(
        f"\n{len(arrived)} files arrived, {len(ended)} ended ({n_used} used, "
        f"{len(ended) - n_used} quarantined), {len(arrived) - len(ended)} never ended"
    )
    if latency:
        print(
            f"arrival -> result (all four DQM flows finished): p50 {pct(latency, 0.5):.1f} s, "
            f"p95 {pct(latency, 0.95):.1f} s, max {max(latency):.1f} s, "
            f"mean {statistics.mean(latency):.1f} s"
        )
    print(
        f"backlog during the feed: max {max(during, default=0)}, mean of the first half "
        f"{statistics.mean(first_half) if first_half else 0:.1f}, of the second half "
        f"{statistics.mean(half) if half else 0:.1f} (bounded if the second half is not higher)"
    )
    print(f"flow runs queued (scheduled/pending): max {max((q for *_, q in samples), default=0)}")
    done_rate = len(ended) / max(1e-9, max(ended.values()) - min(arrived.values())) if ended else 0
    print(f"files completed per second: {done_rate:.2f} (fed {args.rate:.2f})")
    if latency:
        print(
            "BENCH "
            + json.dumps(
                {
                    "bench": "inbox_load",
                    "figures": [
                        {
                            "figure": f"arrival -> result p95 (s), {args.rate}/s for "
                            f"{args.minutes} min",
                            "value": pct(latency, 0.95),
                            "baseline": base,
                            "baseline_label": "four payloads in-process",
                        },
                        {
                            "figure": "files completed per second",
                            "value": done_rate,
                            "baseline": args.rate,
                            "baseline_label": "arrival rate",
                        },
                    ],
                }
            )
        )


if __name__ == "__main__":
    main()
