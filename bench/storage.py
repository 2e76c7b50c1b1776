"""Benchmark of checked stage-in and atomic stage-out against bare copies, local and XRootD.

    .venv/bin/python bench/storage.py [--size-mb 256] [--repeat 3]

Writes one random file of ``--size-mb`` MB, starts a loopback XRootD server (Debian's
xrootd-server, as ``tests/xrootd_server.py`` does), and times, keeping the best of
``--repeat`` runs and alternating the contenders:

* local: ``p3s.files.storage.stage_in`` (copy, size and adler32 of both sides) beside
  ``shutil.copyfile`` (the bare copy), and ``stage_out`` beside the same;
* XRootD: ``stage_in`` (stat, server checksum, copy, local adler32) beside ``xrdcp`` (the
  bare copy over the same server), and ``stage_out`` (write to a temporary name, server
  checksum, rename) beside ``xrdcp`` upload.

It prints each time, the throughput (MB/s) and the ratio to its baseline. The checks read the
data once more than a bare copy does, so a ratio near 2 for local copies (page-cache bound) and
near 1 for XRootD (network bound) is what to expect.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p3s import storage  # noqa: E402
from tests.xrootd_server import XRootDServer  # noqa: E402


def best_of(repeat: int, contenders: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The best wall time (s) of each contender, alternating them ``repeat`` times."""
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeat):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def report(title: str, times: dict[str, float], size_mb: float, baseline: str) -> None:
    print(f"\n{title}")
    for name, seconds in times.items():
        ratio = seconds / times[baseline]
        print(f"  {name:<24} {seconds:7.3f} s  {size_mb / seconds:8.1f} MB/s  x{ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="p3s-bench-storage-"))
    work.chmod(0o755)
    server = XRootDServer(work / "xrootd")
    try:
        source = work / "src" / "np04_raw_run000001_0001_dl1.h5"
        source.parent.mkdir()
        rng = np.random.default_rng(1)
        with source.open("wb") as handle:
            for _ in range(args.size_mb):
                handle.write(rng.bytes(1 << 20))
        server.start()
        server.local("in").mkdir()
        shutil.copyfile(source, server.local(f"in/{source.name}"))
        remote = server.url(f"in/{source.name}")
        print(f"{args.size_mb} MB file, best of {args.repeat}, XRootD at {server.root_url}")

        local_times = best_of(
            args.repeat,
            {
                "shutil.copyfile (bare)": lambda: shutil.copyfile(source, work / "bare.h5"),
                "storage.stage_in": lambda: storage.stage_in(source, work / "scratch"),
                "storage.stage_out": lambda: storage.stage_out(source, work / "out" / "x.h5"),
            },
        )
        report("local folders", local_times, args.size_mb, "shutil.copyfile (bare)")

        xrdcp = shutil.which("xrdcp") or "xrdcp"
        xrd_times = best_of(
            args.repeat,
            {
                "xrdcp download (bare)": lambda: subprocess.run(
                    [xrdcp, "-f", "-s", remote, str(work / "xrdcp.h5")], check=True
                ),
                "storage.stage_in": lambda: storage.stage_in(remote, work / "xscratch"),
                "xrdcp upload (bare)": lambda: subprocess.run(
                    [xrdcp, "-f", "-s", str(source), server.url("up/bare.h5")], check=True
                ),
                "storage.stage_out": lambda: storage.stage_out(source, server.url("up/x.h5")),
            },
        )
        report("XRootD (loopback)", xrd_times, args.size_mb, "xrdcp download (bare)")
        print(
            f"  stage_out / xrdcp upload: x"
            f"{xrd_times['storage.stage_out'] / xrd_times['xrdcp upload (bare)']:.2f}"
        )
        figures = [
            (f"local stage-in {args.size_mb} MB (s)", local_times, "storage.stage_in", "copyfile"),
            (
                f"local stage-out {args.size_mb} MB (s)",
                local_times,
                "storage.stage_out",
                "copyfile",
            ),
            (f"XRootD stage-in {args.size_mb} MB (s)", xrd_times, "storage.stage_in", "download"),
            (f"XRootD stage-out {args.size_mb} MB (s)", xrd_times, "storage.stage_out", "upload"),
        ]
        bare = {
            "copyfile": local_times["shutil.copyfile (bare)"],
            "download": xrd_times["xrdcp download (bare)"],
            "upload": xrd_times["xrdcp upload (bare)"],
        }
        labels = {"copyfile": "shutil.copyfile", "download": "xrdcp", "upload": "xrdcp"}
        rows = [
            {"figure": f, "value": t[k], "baseline": bare[b], "baseline_label": labels[b]}
            for f, t, k, b in figures
        ]
        print("BENCH " + json.dumps({"bench": "storage", "figures": rows}))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
