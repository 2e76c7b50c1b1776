"""Run every benchmark in bench/ and write one table of figures to bench/RESULTS.md.

Each benchmark ends with a line ``BENCH {json}``: its figures, each with the baseline measured
in the same run. This runner starts them one after another (never side by side: they would
measure each other), keeps each one's output in ``bench/results/<name>.log`` (not committed),
merges the figures into bench/RESULTS.json (so ``--only`` refreshes some rows and keeps the
others) and renders bench/RESULTS.md from it: benchmark, figure, value, baseline, ratio,
machine, date, load average before the run.

    .venv/bin/python bench/run_all.py [--quick] [--only history dag] [--skip pilots]

``--quick`` gives every benchmark its small options (a few minutes in all instead of about
an hour); quick figures are marked as such in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_JSON = HERE / "RESULTS.json"
RESULTS_MD = HERE / "RESULTS.md"


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]
    quick: tuple[str, ...]
    timeout_s: int
    what: str


BENCHES = (
    Bench(
        "storage",
        (),
        ("--size-mb", "32", "--repeat", "1"),
        900,
        "checked stage-in/out against shutil.copyfile and xrdcp",
    ),
    Bench(
        "tpc_monitor",
        (),
        ("--repeat", "1", "--events", "1"),
        1800,
        "TPC monitor payload per full event against bare numpy",
    ),
    Bench(
        "dq_checks",
        (),
        ("--apas", "1", "--events", "1", "--repeat", "1"),
        900,
        "data-quality checks of one file against the payloads on the same file",
    ),
    Bench(
        "dag",
        (),
        ("--nodes", "100"),
        1800,
        "p3s-workflow per DAG node against plain Dask futures",
    ),
    Bench(
        "dispatch",
        (),
        ("--latency-jobs", "10", "--throughput-jobs", "40"),
        3600,
        "p3s job submit -> start and throughput on the p3s pool",
    ),
    Bench(
        "inbox_latency",
        (),
        ("--files", "10"),
        1800,
        "file complete in the inbox -> its flow run Running",
    ),
    Bench(
        "pilots",
        ("--postgres",),
        (
            "--postgres",
            "--latency-jobs",
            "10",
            "--process-latency-jobs",
            "3",
            "--throughput-jobs",
            "40",
            "--queue-jobs",
            "100",
            "--many-pilots",
            "4",
        ),
        3600,
        "warm pilots against the process worker; queued jobs per second",
    ),
    Bench(
        "concurrency",
        ("--jobs", "400", "--pilots", "4", "--slots", "100", "--sleep", "200"),
        ("--jobs", "100", "--pilots", "2", "--slots", "50", "--sleep", "60"),
        1800,
        "jobs queued at once, running side by side on pilots with many slots (production "
        "configuration)",
    ),
    Bench(
        "inbox_load",
        ("--rate", "0.1", "--minutes", "10", "--drain-minutes", "8"),
        ("--rate", "0.1", "--minutes", "2", "--drain-minutes", "3"),
        1800,
        "files at a steady rate through all four DQM flows: arrival -> result",
    ),
    Bench(
        "orchestration",
        ("--minutes", "10", "--load", "0.8"),
        ("--files", "8", "--load", "0.5", "--drain-minutes", "4"),
        2700,
        "CPU per raw file of everything against the payloads'; files/s against the "
        "payload-only bound",
    ),
    Bench(
        "history",
        (),
        ("--runs", "20000", "--repeat", "5"),
        1800,
        "API latency with 500,000 flow runs against an empty database",
    ),
)


def machine() -> str:
    return f"{platform.node()}, {os.cpu_count()} cores"


def parse_bench_line(output: str) -> dict | None:
    """The last ``BENCH {json}`` line of a benchmark's output, or None."""
    for line in reversed(output.splitlines()):
        if line.startswith("BENCH "):
            return json.loads(line.removeprefix("BENCH "))
    return None


def run_one(bench: Bench, quick: bool) -> dict:
    """Run one benchmark; its record: figures or the reason it gave none."""
    args = bench.quick if quick else bench.args
    log = RESULTS_DIR / f"{bench.name}.log"
    load = os.getloadavg()[0]
    started = time.monotonic()
    record = {
        "bench": bench.name,
        "what": bench.what,
        "command": " ".join(["bench/" + bench.name + ".py", *args]),
        "quick": quick,
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg": round(load, 1),
    }
    print(f"==> {record['command']} (load {load:.1f})", flush=True)
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                [sys.executable, str(HERE / f"{bench.name}.py"), *args],
                cwd=HERE.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=bench.timeout_s,
            )
            code: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {bench.timeout_s} s"
    record["seconds"] = round(time.monotonic() - started)
    text = log.read_text(errors="replace")
    summary = parse_bench_line(text)
    if code == 0 and summary is not None:
        record["figures"] = summary["figures"]
    else:
        tail = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        record["error"] = f"exit {code}: {tail[0][:160]}".replace("|", "/")
    print(f"    {record.get('error') or str(len(record['figures'])) + ' figures'}", flush=True)
    return record


def import_log(bench: Bench, command: str) -> dict:
    """A record from ``bench/results/<name>.log`` of an earlier run of ``command``."""
    log = RESULTS_DIR / f"{bench.name}.log"
    summary = parse_bench_line(log.read_text(errors="replace"))
    if summary is None:
        raise SystemExit(f"{log} has no BENCH line: run the benchmark first")
    taken = datetime.fromtimestamp(log.stat().st_mtime, UTC)
    return {
        "bench": bench.name,
        "what": bench.what,
        "command": command,
        "quick": False,
        "machine": machine(),
        "date": taken.strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg": summary.get("load_avg", ""),
        "figures": summary["figures"],
    }


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render(records: dict[str, dict]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `bench/run_all.py` (do not edit by hand): every figure beside its baseline",
        "measured in the same run on the same machine; ratio = value / baseline. The load",
        "average is the machine's 1-minute load when that benchmark started: figures taken under",
        "load (other work on a 2-core machine) are slower than on an idle one. *quick* marks a",
        "run with the benchmark's small options. Logs: `bench/results/<benchmark>.log`.",
        "",
        "| benchmark | figure | value | baseline | ratio | machine | date | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for bench in BENCHES:
        record = records.get(bench.name)
        if record is None:
            lines.append(f"| {bench.name} | not run yet | | | | | | |")
            continue
        name = bench.name + (" (quick)" if record.get("quick") else "")
        where = f"{record['machine']} | {record['date']} | {record['load_avg']}"
        if "error" in record:
            lines.append(f"| {name} | failed: {record['error']} | | | | {where} |")
            continue
        for figure in record["figures"]:
            value, base = figure.get("value"), figure.get("baseline")
            ratio = f"{value / base:.2f}" if value is not None and base else ""
            label = figure.get("baseline_label", "")
            baseline = f"{fmt(base)} ({label})" if label else fmt(base)
            lines.append(
                f"| {name} | {figure['figure']} | {fmt(value)} | {baseline} | {ratio} | {where} |"
            )
    lines += ["", "## What each benchmark measures", ""]
    for bench in BENCHES:
        command = records.get(bench.name, {}).get("command", f"bench/{bench.name}.py")
        lines.append(f"- `{bench.name}`: {bench.what} (`{command}`).")
    return "\n".join(lines) + "\n"


def main() -> int:
    names = [b.name for b in BENCHES]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small options for every bench")
    parser.add_argument("--only", nargs="+", choices=names, help="run these benchmarks only")
    parser.add_argument("--skip", nargs="+", choices=names, default=[], help="leave these out")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite RESULTS.md from RESULTS.json"
    )
    parser.add_argument(
        "--import-log",
        nargs=2,
        metavar=("NAME", "COMMAND"),
        help="record bench/results/NAME.log of an earlier run of COMMAND (a long benchmark "
        "run on its own) instead of running it",
    )
    args = parser.parse_args()
    RESULTS_DIR.mkdir(exist_ok=True)
    records = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    if args.import_log:
        name, command = args.import_log
        records[name] = import_log(next(b for b in BENCHES if b.name == name), command)
        RESULTS_JSON.write_text(json.dumps(records, indent=1))
        args.render_only = True
    if not args.render_only:
        chosen = [b for b in BENCHES if (not args.only or b.name in args.only)]
        for bench in [b for b in chosen if b.name not in args.skip]:
            records[bench.name] = run_one(bench, args.quick)
            RESULTS_JSON.write_text(json.dumps(records, indent=1))
            RESULTS_MD.write_text(render(records))
    RESULTS_MD.write_text(render(records))
    print(f"wrote {RESULTS_MD.relative_to(HERE.parent)}")
    return 1 if any("error" in r for r in records.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
