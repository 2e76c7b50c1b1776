"""Inbox latency: from the moment a file is complete in the inbox to its flow run Running.

Brings up its own embedded system with the code of ``p3s up`` (Prefect server on SQLite, the
p3s work pool and its warm local pilots, or Prefect's process worker with ``--worker process``,
the deployments, the ``p3s inbox watch`` process) under a temporary home and a free port,
with the default local inbox and default settings (scan every 0.5 s and on each inotify
event; a file renamed in is complete at once, others once size and mtime are stable for 1 s).
A bench data type (``bench_NNNNNN.dat``) feeds a no-op
deployment through an event trigger exactly like the DQM deployments' (``p3s.file.arrived``,
``file_url`` from the event), so what is timed is the dispatch path, not a payload.

For each of N files (one at a time, so no backlog builds up) it records:

* complete: the file is renamed into the inbox in one step (``time.time()`` just after);
* announced: the watcher's announcement marker is written (the server accepted the event);
* created: the flow run the trigger created (server time);
* running: the flow run's start time (server time).

In the same run, two baselines:

* bare: ``os.rename`` into a claimed folder plus a local function call (what a claim and a
  direct dispatch cost with no scan, no server, no worker);
* announce: complete -> announced, the scan + claim + emit part of the path alone.

Run: ``.venv/bin/python bench/inbox_latency.py [--files 50]``
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

from benchlib import free_port, pct
from prefect import flow

PROJECT_DIR = Path(__file__).resolve().parent.parent
BENCH_TYPE = "bench"


@flow(name="bench-inbox-noop", persist_result=False)
def bench_noop(file_url: str) -> str:
    """Does nothing: the benchmark times how fast it starts."""
    return file_url


def bare_baseline(folder: Path, n: int) -> list[float]:
    """``os.rename`` + a local function call, per file (s)."""
    inbox, claimed = folder / "inbox", folder / "claimed"
    inbox.mkdir(parents=True)
    claimed.mkdir()
    seen: list[str] = []
    times = []
    for i in range(n):
        name = f"bench_{i:06d}.dat"
        (inbox / name).write_bytes(b"x" * 1024)
        t0 = time.time()
        os.rename(inbox / name, claimed / name)
        seen.append(name)  # the "dispatch": a local call
        times.append(time.time() - t0)
    return times


async def create_bench_deployment(pool: str) -> str:
    """A no-op deployment triggered by ``p3s.file.arrived`` of the bench data type."""
    from prefect.client.orchestration import get_client
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("bench-inbox-noop")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name="inbox-latency",
            entrypoint="bench/inbox_latency.py:bench_noop",
            work_pool_name=pool,
            work_queue_name="default",
            path=str(PROJECT_DIR),
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}
            ],
        )
        await client.create_automation(
            AutomationCore(
                name="bench-inbox-latency",
                trigger=EventTrigger(
                    expect={"p3s.file.arrived"},
                    match={"prefect.resource.id": "p3s.file.*", "p3s.datatype": BENCH_TYPE},
                    posture=Posture.Reactive,
                    threshold=1,
                ),
                actions=[
                    RunDeployment(
                        source="selected",
                        deployment_id=deployment_id,
                        parameters={"file_url": "{{ event.payload.url }}"},
                    )
                ],
            )
        )
    return str(deployment_id)


async def wait_running(client, deployment_id: str, name: str, timeout_s: float = 300):
    """The bench flow run of ``name`` once it has a start time."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            limit=200,
        )
        for run in runs:
            if str(run.parameters.get("file_url", "")).endswith("/" + name) and run.start_time:
                return run
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no running flow run for {name} after {timeout_s} s")


async def measure(settings, deployment_id: str, n: int) -> list[dict[str, float]]:
    from prefect.client.orchestration import get_client

    inbox = settings.data / "inbox"
    announced = settings.data / ".state" / "announced"
    staging = settings.home / "staging"
    staging.mkdir(exist_ok=True)
    rows = []
    async with get_client() as client:
        for i in range(n):
            name = f"bench_{i:06d}.dat"
            (staging / name).write_bytes(os.urandom(64 * 1024))
            os.rename(staging / name, inbox / name)
            complete = time.time()
            run = await wait_running(client, deployment_id, name)
            marker = announced / name
            rows.append(
                {
                    "complete": complete,
                    "announced": marker.stat().st_mtime if marker.exists() else float("nan"),
                    "created": run.created.timestamp(),
                    "running": run.start_time.timestamp(),
                }
            )
            print(f"  {name}: running after {rows[-1]['running'] - complete:.2f} s", flush=True)
    return rows


def report(worker: str, rows: list[dict[str, float]], bare: list[float]) -> None:
    def seg(a: str, b: str) -> list[float]:
        return [r[b] - r[a] for r in rows]

    total = seg("complete", "running")
    announce = seg("complete", "announced")
    print(f"\ninbox latency over {len(rows)} files (s)        p50      p95")
    for label, values in (
        ("complete -> announced (scan+claim+emit)", announce),
        ("announced -> flow run created (trigger)", seg("announced", "created")),
        ("created -> Running (worker)", seg("created", "running")),
        ("complete -> Running (total)", total),
    ):
        print(f"  {label:<40} {pct(values, 0.5):7.3f}  {pct(values, 0.95):7.3f}")
    print(
        f"baseline bare os.rename + call             {pct(bare, 0.5):9.6f}  {pct(bare, 0.95):9.6f}"
    )
    p50, p95 = pct(total, 0.5), pct(total, 0.95)
    print(
        f"ratio total/announce baseline: p50 {p50 / pct(announce, 0.5):.1f}x, "
        f"p95 {p95 / pct(announce, 0.95):.1f}x"
    )
    print(
        f"ratio total/bare baseline: p50 {p50 / max(pct(bare, 0.5), 1e-9):.0f}x, "
        f"p95 {p95 / max(pct(bare, 0.95), 1e-9):.0f}x"
    )
    goal = "met" if p50 <= 2 and p95 <= 5 else "not met"
    print(f"goal p50 <= 2 s and p95 <= 5 s: {goal} (p50 {p50:.2f} s, p95 {p95:.2f} s)")
    print(f"mean total {statistics.mean(total):.2f} s")
    # One machine-readable line for bench/run_all.py.
    base = "scan+claim+emit"
    figures = [
        {
            "figure": f"complete -> Running {q} (s)",
            "value": v,
            "baseline": b,
            "baseline_label": base,
        }
        for q, v, b in (("p50", p50, pct(announce, 0.5)), ("p95", p95, pct(announce, 0.95)))
    ]
    print(
        "BENCH "
        + json.dumps(
            {"bench": "inbox_latency", "worker": worker, "files": len(rows), "figures": figures}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument(
        "--worker",
        choices=["pilots", "process"],
        default="pilots",
        help="what serves the pool: warm local pilots (the default of p3s up) or the "
        "process worker (a new Python per run)",
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="p3s-bench-inbox-"))
    datatypes = [
        # It feeds a payload that never reports, so the life-cycle sweep leaves the files be.
        {
            "name": BENCH_TYPE,
            "pattern": r"^bench_(?P<run>\d+)\.dat$",
            "feeds": {"noop": "bench-inbox-noop/inbox-latency"},
        },
    ]
    os.environ.update(
        {
            "P3S_HOME": str(home),
            "P3S_SERVER__PORT": str(free_port()),
            "P3S_UI__PORT": str(free_port()),
            "P3S_INBOX__DATATYPES": json.dumps(datatypes),
            "P3S_POOL__WORKER": args.worker,
        }
    )
    sys.path.insert(0, str(PROJECT_DIR))
    from p3s.stack import control
    from p3s.system.prefect_env import apply_client_environment
    from p3s.system.settings import Settings

    settings = Settings()
    apply_client_environment(settings)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    print(f"home {home}; bringing the system up (p3s up, {args.worker})…", flush=True)
    bare = bare_baseline(home / "bare", args.files)
    try:
        control.up(settings, lambda line: print("  " + line, flush=True))
        with temporary_settings(updates={PREFECT_API_URL: settings.api_url}):
            deployment_id = asyncio.run(create_bench_deployment(settings.pool.name))
            time.sleep(2)  # the trigger service loads the new automation
            rows = asyncio.run(measure(settings, deployment_id, args.files))
        report(args.worker, rows, bare)
    finally:
        control.down(settings, lambda line: None)


if __name__ == "__main__":
    main()
