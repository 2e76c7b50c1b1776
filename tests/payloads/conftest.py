"""Fixtures for payload tests: small raw files written by RawWriter or by the simulator.

All files are tiny (one APA, 2-4 fibers, 1000-2000 ticks) so the whole payload suite runs in
seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from p3s.payloads.rawformat import BEAM_DTYPE, Geometry, RawWriter, raw_filename
from p3s.payloads.simulate import Truth, simulate_file

RawFileFactory = Callable[..., Path]


def write_plain_file(
    path: Path,
    *,
    run: int = 1,
    subrun: int = 1,
    n_events: int = 2,
    geometry: Geometry | None = None,
    n_ticks: int = 200,
    compression: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write random but valid events with RawWriter; return what was written, per event."""
    geometry = geometry or Geometry.reduced(1, 2, pds_per_apa=3)
    rng = np.random.default_rng(seed)
    written: dict[str, Any] = {"adc": [], "pds": [], "beam": [], "meta": []}
    with RawWriter(
        path, run=run, subrun=subrun, geometry=geometry, n_ticks=n_ticks, compression=compression
    ) as writer:
        for event in range(n_events):
            adc = rng.integers(0, 4096, (geometry.n_channels, n_ticks), dtype=np.uint16)
            pds = rng.integers(1400, 1600, (geometry.n_pds_channels, 50), dtype=np.uint16)
            beam = np.zeros(event + 1, dtype=BEAM_DTYPE)
            beam["tof_ns"] = 95.0 + event
            beam["ckov1"] = 1
            meta = (1_538_352_000_000_000_000 + event, event % 2)
            writer.add_event(
                adc, timestamp_ns=meta[0], trigger=meta[1], pds=pds, beam=beam if event else None
            )
            written["adc"].append(adc)
            written["pds"].append(pds)
            written["beam"].append(beam if event else np.zeros(0, BEAM_DTYPE))
            written["meta"].append(meta)
        writer.write_truth({"note": "plain", "values": np.arange(3)})
    return written


@pytest.fixture
def raw_file(tmp_path: Path) -> RawFileFactory:
    """Factory: ``raw_file(**kwargs)`` writes a small valid file (see ``write_plain_file``)."""

    def make(run: int = 1, subrun: int = 1, **kwargs: Any) -> Path:
        path = tmp_path / raw_filename(run, subrun)
        write_plain_file(path, run=run, subrun=subrun, **kwargs)
        return path

    return make


SIM_GEOMETRY = Geometry.reduced(1, 4)
SIM_TICKS = 2000


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """A simulated file (1 APA, 4 fibers, 2000 ticks, 4 events) shared by the session."""
    path = tmp_path_factory.mktemp("sim") / raw_filename(4649, 3)
    truth = simulate_file(
        path,
        run=4649,
        subrun=3,
        n_events=4,
        geometry=SIM_GEOMETRY,
        n_ticks=SIM_TICKS,
        seed=11,
        lifetimes_ms=3.0,
    )
    return path, truth
