"""Benchmark of the data-quality checks against the payloads, on the same file in one run.

    .venv/bin/python bench/dq_checks.py [--apas 2] [--events 2] [--repeat 3] [--workdir DIR]

Simulates two runs in the full protoDUNE-SP geometry (``--apas`` APAs of 2560 channels,
6000 ticks, ``--events`` events): run 1 becomes the reference run, run 2 is measured. Each
goes through the TPC monitor, purity monitor and beam monitor in this process (no figures),
its products written and recorded in a SQLite catalog as the DQM flows do. Then the checks of
each payload (:func:`p3s.dqm.quality.evaluate_file`: reading the summary and the ROOT
products of the run and of the reference run, every range and histogram check, recording the
results and flags) are timed on run 2, best of ``--repeat``, beside the payloads' own time on
the same file (best of ``--repeat`` as well). The goal: checks well under 5 % of the payloads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _beam(beam, open_raw, path):
    """The beam monitor takes an open file."""
    with open_raw(path) as raw:
        return beam.analyse(raw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apas", type=int, default=2, help="APAs of the full geometry (1-6).")
    parser.add_argument("--events", type=int, default=2, help="Events per file.")
    parser.add_argument("--repeat", type=int, default=3, help="Best of this many runs.")
    parser.add_argument("--workdir", type=Path, default=None, help="Where files go (temp).")
    args = parser.parse_args()

    from p3s.payloads import beam, purity, tpc_monitor
    from p3s.payloads.rawformat import Geometry, open_raw

    from p3s.dqm.catalog import Catalog
    from p3s.dqm.checks import load_checks
    from p3s.dqm.quality import evaluate_file
    from tests.dqm.simruns import process, simulate_run

    work = Path(args.workdir or tempfile.mkdtemp(prefix="p3s-bench-dq-"))
    catalog = Catalog(f"sqlite:///{work / 'catalog.sqlite'}")
    geometry = Geometry.full(args.apas)
    payloads = {
        "tpc_monitor": tpc_monitor.analyse,
        "purity": purity.analyse,
        "beam": lambda path, figures=False: _beam(beam, open_raw, path),
    }
    raws = {}
    for run in (1, 2):
        started = time.perf_counter()
        raws[run] = simulate_run(work, run, n_events=args.events, n_ticks=6000, geometry=geometry)
        print(f"simulated run {run}: {time.perf_counter() - started:.1f} s ({raws[run].name})")
        process(catalog, raws[run], work / "outbox", payloads)
    catalog.set_reference(1)
    checks = load_checks()

    payload_s: dict[str, float] = dict.fromkeys(payloads, float("inf"))
    for _ in range(args.repeat):
        for name, seconds in process(catalog, raws[2], work / "outbox", payloads).items():
            payload_s[name] = min(payload_s[name], seconds)
    check_s = {
        name: _best(lambda n=name: evaluate_file(catalog, raws[2].name, n, checks), args.repeat)
        for name in payloads
    }
    n_checks = len(catalog.dq_checks(2))
    total_payloads, total_checks = sum(payload_s.values()), sum(check_s.values())
    print(f"\n{args.apas} APA(s), {args.events} event(s), {n_checks} check results on run 2")
    print(f"{'payload':<12} {'payload s':>10} {'checks s':>10} {'ratio':>8}")
    for name in payloads:
        ratio = check_s[name] / payload_s[name]
        print(f"{name:<12} {payload_s[name]:>10.3f} {check_s[name]:>10.3f} {ratio:>8.3f}")
    print(f"{'all':<12} {total_payloads:>10.3f} {total_checks:>10.3f} "
          f"{total_checks / total_payloads:>8.3f}")  # fmt: skip
    figures = [
        {
            "figure": f"checks of one file, {args.apas} APA(s) x {args.events} event(s) (s)",
            "value": total_checks,
            "baseline": total_payloads,
            "baseline_label": "the three payloads on the same file",
        },
        {
            "figure": "TPC monitor checks (s)",
            "value": check_s["tpc_monitor"],
            "baseline": payload_s["tpc_monitor"],
            "baseline_label": "TPC monitor payload",
        },
    ]
    print("BENCH " + json.dumps({"bench": "dq_checks", "figures": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
