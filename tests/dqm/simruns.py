"""Simulated runs through the DQM payloads into a catalog, as the DQM flows leave them.

Each run is one simulated file (reduced geometry, 2 APAs of 4 fibers: APA 0 reads TPC 1 with
fibers 0-3, APA 1 reads TPC 2 with fibers 20-23), analysed by the real payloads, its
products written to an outbox folder and recorded in the catalog as ``record_result`` does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p3s.payloads import purity, tpc_monitor
from p3s.payloads.rawformat import Geometry, raw_filename
from p3s.payloads.simulate import simulate_file
from p3s.tasks.publish import _jsonable

from p3s.dqm.catalog import Catalog, ProductInfo, file_checksums

GEOMETRY = Geometry.reduced(n_apas=2, fibers_per_apa=4)
PAYLOADS = {"tpc_monitor": tpc_monitor.analyse, "purity": purity.analyse}


def simulate_run(
    folder: Path,
    run: int,
    *,
    seed: int | None = None,
    lifetimes_ms: Mapping[int, float] | float = 3.0,
    coherent_lines: Mapping[int, Sequence[float]] | None = None,
    extra_noisy: Mapping[int, int] | None = None,
    n_events: int = 3,
    n_ticks: int = 3000,
    geometry: Geometry = GEOMETRY,
) -> Path:
    """Write run ``run`` subrun 1: no coherent line unless given, ~0.5% dead and noisy."""
    path = folder / "raw" / raw_filename(run, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    simulate_file(
        path,
        run=run,
        subrun=1,
        n_events=n_events,
        n_ticks=n_ticks,
        geometry=geometry,
        seed=run if seed is None else seed,
        lifetimes_ms=lifetimes_ms,
        coherent_lines=coherent_lines or {},
        extra_noisy=extra_noisy,
    )
    return path


def process(catalog: Catalog, raw: Path, outbox: Path, payloads=PAYLOADS) -> dict[str, float]:
    """Run ``payloads`` on ``raw``, write and record their products; seconds per payload."""
    seconds = {}
    for payload, analyse in payloads.items():
        start = time.perf_counter()
        result = analyse(raw, figures=False)
        out = outbox / f"run{result.run:06d}" / f"{result.subrun:04d}" / payload
        paths = result.write(out)
        seconds[payload] = time.perf_counter() - start
        products = [ProductInfo(p.name, f"file://{p}", *file_checksums(p)) for p in paths]
        summary: dict[str, Any] = _jsonable(result.summary)
        catalog.record_payload(
            raw.name,
            payload,
            file_url=f"file://{raw}",
            run=result.run,
            subrun=result.subrun,
            outcome="completed",
            summary=summary,
            purity=summary.get("purity", []),
            planes=summary.get("planes", []),
            products=products,
        )
    return seconds
