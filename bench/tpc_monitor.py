"""Benchmark of the TPC monitor payload against a bare numpy baseline, full geometry.

    .venv/bin/python bench/tpc_monitor.py [--repeat 3] [--events 5] [--workdir DIR]

Writes a one-event and an ``--events``-event full protoDUNE-SP file (15360 channels x 6000
ticks, 184 MB of ADC per event) with the project's simulator, then measures in this process,
alternating the contenders and keeping the best of ``--repeat`` runs:

* ``numpy/event f32``: h5py reads the whole ``adc`` array, converts it to float32 and takes
  ``numpy.fft.rfft`` of every channel (the literal bare-numpy job);
* ``numpy/fiber f32`` and ``numpy/fiber f64``: the same one 128-channel chunk at a time
  (cache-friendly), in float32, and on the raw counts as they are (numpy computes in float64,
  which with numpy 2.x is faster than its float32 path);
* ``scipy/fiber f32``: the same with ``scipy.fft.rfft``, the FFT the payload uses;
* ``numpy/fiber f64 r-a``: ``numpy/fiber f64`` with the next chunk read in a thread meanwhile;
* ``tpc_monitor``: :func:`p3s.payloads.tpc_monitor.analyse` without figures (pedestals,
  robust RMS, spectra, persistent and profiled FFTs, dead/noisy channels, PDS, histograms),
  as it runs by default (reading the next fiber in a thread when it has a spare core), then
  on one thread (``read_ahead=False``), then with figures.

Wall and CPU time (all threads) are both reported, since the read-ahead trades CPU for wall
time.

Peak memory is the peak resident set size (VmHWM, Linux) of a fresh Python process that runs
``analyse`` on the ``--events``-event file (and of one that only imports the payload, for
reference). The goal is a ratio <= 1.3 to the fastest bare-numpy baseline and < 2 GB peak
memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import scipy.fft
from p3s.payloads import tpc_monitor
from p3s.payloads.rawformat import Geometry, raw_filename
from p3s.payloads.simulate import simulate_file

CHUNK_ROWS = 128

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent through
# fork and exec, so a child of this (big) process would report the parent's peak.
_MEMORY_PROBE = """
import json, sys, time
from p3s.payloads import tpc_monitor
t0 = time.perf_counter()
if sys.argv[1] != "-":
    tpc_monitor.analyse(sys.argv[1], figures=False)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0]
print(json.dumps({"seconds": time.perf_counter() - t0, "maxrss_mb": int(hwm.split()[1]) / 1024}))
"""


def baseline_event(path: Path) -> None:
    """Read the whole event with h5py, float32, ``numpy.fft.rfft`` of every channel."""
    with h5py.File(path, "r") as h5:
        adc = h5["events/000000/adc"][...]
    np.fft.rfft(adc.astype(np.float32), axis=1)


def _per_chunk(path: Path, fft: Callable[[np.ndarray], object]) -> None:
    with h5py.File(path, "r") as h5:
        ds = h5["events/000000/adc"]
        for start in range(0, ds.shape[0], CHUNK_ROWS):
            fft(ds[start : start + CHUNK_ROWS])


def baseline_fiber_f32(path: Path) -> None:
    """One 128-channel chunk (one fiber) at a time, float32, ``numpy.fft.rfft``."""
    _per_chunk(path, lambda a: np.fft.rfft(a.astype(np.float32), axis=1))


def baseline_fiber_f64(path: Path) -> None:
    """The same, ``numpy.fft.rfft`` of the uint16 chunk as is (numpy computes in float64)."""
    _per_chunk(path, lambda a: np.fft.rfft(a, axis=1))


def baseline_fiber_f64_read_ahead(path: Path) -> None:
    """``numpy/fiber f64`` with the next chunk read in a thread meanwhile (as the payload does
    with a spare core): the baseline for the payload's read-ahead."""
    with h5py.File(path, "r") as h5, ThreadPoolExecutor(max_workers=1) as pool:
        ds = h5["events/000000/adc"]
        starts = range(0, ds.shape[0], CHUNK_ROWS)
        pending = pool.submit(ds.__getitem__, slice(0, CHUNK_ROWS))
        for start in starts:
            block = pending.result()
            if start + CHUNK_ROWS < ds.shape[0]:
                nxt = slice(start + CHUNK_ROWS, start + 2 * CHUNK_ROWS)
                pending = pool.submit(ds.__getitem__, nxt)
            np.fft.rfft(block, axis=1)


def baseline_fiber_scipy(path: Path) -> None:
    """The same, float32, ``scipy.fft.rfft`` (the FFT the payload uses)."""
    _per_chunk(path, lambda a: scipy.fft.rfft(a.astype(np.float32), axis=1))


def best_of(
    contenders: dict[str, Callable[[], object]], repeat: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Run every contender ``repeat`` times, interleaved; return the best wall time and the
    best CPU time (this process, all threads) of each [s]."""
    wall = dict.fromkeys(contenders, float("inf"))
    cpu = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeat):
        for name, fn in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return wall, cpu


def memory_probe(path: Path | None) -> dict[str, float]:
    """Peak RSS of a fresh process analysing ``path`` (None: imports only)."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path) if path else "-"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def simulate(path: Path, n_events: int) -> float:
    """Write a full-geometry simulated file; return the seconds it took."""
    t0 = time.perf_counter()
    simulate_file(path, run=9000, subrun=n_events, n_events=n_events, geometry=Geometry.full())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per contender")
    parser.add_argument("--events", type=int, default=5, help="events of the memory-test file")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_tpc_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        one = work / raw_filename(9000, 1)
        many = work / raw_filename(9000, args.events)
        for path, n in ((one, 1), (many, args.events)):
            if not path.exists():
                print(f"simulating {path.name} ({n} event(s)) ... {simulate(path, n):.1f} s")

        tpc_monitor.analyse(one, figures=False)  # warm-up: imports, page cache
        times, cpu = best_of(
            {
                "numpy/event f32": lambda: baseline_event(one),
                "numpy/fiber f32": lambda: baseline_fiber_f32(one),
                "numpy/fiber f64": lambda: baseline_fiber_f64(one),
                "scipy/fiber f32": lambda: baseline_fiber_scipy(one),
                "numpy/fiber f64 r-a": lambda: baseline_fiber_f64_read_ahead(one),
                "tpc_monitor": lambda: tpc_monitor.analyse(one, figures=False),
                "tpc_monitor 1 thread": lambda: tpc_monitor.analyse(
                    one, figures=False, read_ahead=False
                ),
                "tpc_monitor+figures": lambda: tpc_monitor.analyse(one).close_figures(),
            },
            args.repeat,
        )
        t0 = time.perf_counter()
        tpc_monitor.analyse(many, figures=False)
        per_event = (time.perf_counter() - t0) / args.events
        imports = memory_probe(None)
        peak = memory_probe(many)

    print(f"\none full event: 15360 channels x 6000 ticks (best of {args.repeat})")
    for name, seconds in times.items():
        print(f"  {name:22s} {seconds:7.3f} s   (CPU {cpu[name]:.3f} s)")
    fastest = min(("numpy/event f32", "numpy/fiber f32", "numpy/fiber f64"), key=times.get)
    numpy_best = times[fastest]
    print(
        f"  ratio to the fastest bare-numpy baseline: {times['tpc_monitor'] / numpy_best:.2f}"
        "  (goal <= 1.3)"
    )
    read_ahead = tpc_monitor.spare_core()
    print(
        f"  (tpc_monitor reads the next fiber in a thread: {read_ahead}, a spare core)\n"
        f"  CPU time ratio to {fastest}: {cpu['tpc_monitor'] / cpu[fastest]:.2f}\n"
        f"  one thread (no read-ahead): ratio {times['tpc_monitor 1 thread'] / numpy_best:.2f}"
        f", CPU time ratio {cpu['tpc_monitor 1 thread'] / cpu[fastest]:.2f}\n"
        "  ratio to numpy/fiber f64 with read-ahead: "
        f"{times['tpc_monitor'] / times['numpy/fiber f64 r-a']:.2f}"
    )
    for name in ("numpy/event f32", "numpy/fiber f32", "numpy/fiber f64", "scipy/fiber f32"):
        print(f"  ratio to {name:18s} {times['tpc_monitor'] / times[name]:.2f}")
    print(f"\n{args.events}-event file: {per_event:.3f} s per event")
    print(
        f"  peak RSS of a fresh process: {peak['maxrss_mb']:.0f} MB "
        f"(imports alone {imports['maxrss_mb']:.0f} MB; goal < 2000 MB)"
    )
    figures = [
        {
            "figure": "TPC monitor, one full event (s)",
            "value": times["tpc_monitor"],
            "baseline": numpy_best,
            "baseline_label": "fastest bare numpy",
        },
        {
            "figure": "TPC monitor, one full event, one thread (s)",
            "value": times["tpc_monitor 1 thread"],
            "baseline": numpy_best,
            "baseline_label": "fastest bare numpy",
        },
        {
            "figure": "TPC monitor, one full event, read-ahead (s)",
            "value": times["tpc_monitor"],
            "baseline": times["numpy/fiber f64 r-a"],
            "baseline_label": "numpy/fiber f64 with read-ahead",
        },
        {
            "figure": "TPC monitor, one full event, CPU time (s)",
            "value": cpu["tpc_monitor"],
            "baseline": cpu[fastest],
            "baseline_label": f"{fastest} CPU time",
        },
        {
            "figure": f"peak RSS, {args.events}-event file (MB)",
            "value": peak["maxrss_mb"],
            "baseline": imports["maxrss_mb"],
            "baseline_label": "imports alone",
        },
    ]
    print("BENCH " + json.dumps({"bench": "tpc_monitor", "figures": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
