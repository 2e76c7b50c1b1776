"""The key numbers of each DQM payload, read from its stored summary (``summary.json``).

One :class:`KeyNumber` per quantity and place: the checks test them against ranges, the trends
plot them across runs. Places are an APA (and plane or fiber) for the TPC monitor, a TPC for
the purity monitor, the beam line for the beam monitor.

=============  ===============================  ===================================
payload        quantity (unit)                  per
=============  ===============================  ===================================
tpc_monitor    mean_rms (ADC), mean_pedestal    APA and plane
               (ADC), dead_fraction (%),
               noisy_fraction (%)
tpc_monitor    dead_fraction (%),               APA
               noisy_fraction (%)
tpc_monitor    coherent_lines (lines)           fiber with lines (of an APA)
tpc_monitor    coherent_lines_total (lines)     APA
purity         lifetime_ms (ms), error_ms       TPC
               (ms), tracks (tracks),
               signal_to_noise (times the noise)
beam           particles, particles_e, ...      beam
               (particles), momentum_mean_gev
               (GeV/c), tof ...
evdisplay      images (images)                  run
=============  ===============================  ===================================
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FIBERS_PER_APA", "KeyNumber", "area_of", "key_numbers"]

FIBERS_PER_APA = 20
"""Readout fibers of one APA; fiber ``f`` belongs to APA ``f // 20`` (np04 numbering)."""


@dataclass(frozen=True)
class KeyNumber:
    """One key number of one payload's summary.

    Attributes:
        payload: the payload that measured it.
        quantity: its name, as check files name it (``mean_rms``, ``lifetime_ms`` ...).
        value: the number, in ``unit``; None when the payload could not measure it.
        unit: ``ADC``, ``%``, ``ms``, ``lines`` ...
        apa, tpc, plane, fiber: where it was measured (None where it does not apply).
    """

    payload: str
    quantity: str
    value: float | None
    unit: str
    apa: int | None = None
    tpc: int | None = None
    plane: str | None = None
    fiber: int | None = None

    @property
    def area(self) -> str:
        """The area a quality flag aggregates over: ``APA n``, ``TPC n``, ``beam`` or ``run``."""
        return area_of(self.payload, apa=self.apa, tpc=self.tpc)

    @property
    def place(self) -> str:
        """Where, in words: ``APA 1 plane U``, ``APA 1 fiber 21``, ``TPC 2``, ``beam``."""
        parts = [self.area]
        if self.plane is not None:
            parts.append(f"plane {self.plane}")
        if self.fiber is not None:
            parts.append(f"fiber {self.fiber}")
        return " ".join(parts)


def area_of(payload: str, *, apa: int | None = None, tpc: int | None = None) -> str:
    """The flag area of a place: ``APA n`` (before TPC), ``TPC n``, ``beam`` or ``run``."""
    if apa is not None:
        return f"APA {apa}"
    if tpc is not None:
        return f"TPC {tpc}"
    return "beam" if payload == "beam" else "run"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _tpc_monitor(summary: Mapping[str, Any]) -> Iterator[KeyNumber]:
    per_apa: dict[int, list[int]] = {}
    for row in summary.get("planes", []):
        apa, plane = int(row["apa"]), str(row.get("plane_name", row.get("plane")))
        n = int(row["n_channels"]) or 1
        yield KeyNumber("tpc_monitor", "mean_rms", _number(row.get("mean_rms")), "ADC", apa=apa,
                        plane=plane)  # fmt: skip
        yield KeyNumber("tpc_monitor", "mean_pedestal", _number(row.get("mean_pedestal")), "ADC",
                        apa=apa, plane=plane)  # fmt: skip
        for what in ("dead", "noisy"):
            value = 100.0 * int(row[f"n_{what}"]) / n
            yield KeyNumber("tpc_monitor", f"{what}_fraction", value, "%", apa=apa, plane=plane)
        totals = per_apa.setdefault(apa, [0, 0, 0])
        totals[0] += int(row["n_channels"])
        totals[1] += int(row["n_dead"])
        totals[2] += int(row["n_noisy"])
    for apa, (n, dead, noisy) in sorted(per_apa.items()):
        n = n or 1
        yield KeyNumber("tpc_monitor", "dead_fraction", 100.0 * dead / n, "%", apa=apa)
        yield KeyNumber("tpc_monitor", "noisy_fraction", 100.0 * noisy / n, "%", apa=apa)
    lines = {int(f): len(v) for f, v in summary.get("coherent_lines_khz", {}).items()}
    for apa in sorted(per_apa):
        total = sum(n for f, n in lines.items() if f // FIBERS_PER_APA == apa)
        yield KeyNumber("tpc_monitor", "coherent_lines_total", float(total), "lines", apa=apa)
    for fiber, n in sorted(lines.items()):
        yield KeyNumber("tpc_monitor", "coherent_lines", float(n), "lines",
                        apa=fiber // FIBERS_PER_APA, fiber=fiber)  # fmt: skip


def _purity(summary: Mapping[str, Any]) -> Iterator[KeyNumber]:
    for row in summary.get("purity", []):
        tpc = int(row["tpc"])
        yield KeyNumber("purity", "lifetime_ms", _number(row.get("lifetime_ms")), "ms", tpc=tpc)
        yield KeyNumber("purity", "error_ms", _number(row.get("error_ms")), "ms", tpc=tpc)
        yield KeyNumber("purity", "tracks", _number(row.get("count")), "tracks", tpc=tpc)
        if "signal_to_noise" in row:
            yield KeyNumber("purity", "signal_to_noise", _number(row.get("signal_to_noise")),
                            "times the noise", tpc=tpc)  # fmt: skip


_BEAM_SCALARS = {
    "n_beam_triggers": ("beam_triggers", "triggers"),
    "n_particles": ("particles", "particles"),
    "momentum_mean_gev": ("momentum_mean_gev", "GeV/c"),
    "momentum_rms_gev": ("momentum_rms_gev", "GeV/c"),
    "beam_x_mean_mm": ("beam_x_mean_mm", "mm"),
    "beam_y_mean_mm": ("beam_y_mean_mm", "mm"),
    "beam_x_rms_mm": ("beam_x_rms_mm", "mm"),
    "beam_y_rms_mm": ("beam_y_rms_mm", "mm"),
}


def _name(label: str) -> str:
    """A particle label as part of a quantity name: ``pi/mu`` -> ``pi_mu``."""
    return "".join(c if c.isalnum() else "_" for c in str(label))


def _beam(summary: Mapping[str, Any]) -> Iterator[KeyNumber]:
    for key, (quantity, unit) in _BEAM_SCALARS.items():
        if key in summary:
            yield KeyNumber("beam", quantity, _number(summary[key]), unit)
    for pid, count in sorted(summary.get("pid_counts", {}).items()):
        yield KeyNumber("beam", f"particles_{_name(pid)}", _number(count), "particles")
    for pid, tof in sorted(summary.get("tof_mean_ns_by_pid", {}).items()):
        yield KeyNumber("beam", f"tof_mean_ns_{_name(pid)}", _number(tof), "ns")


def _evdisplay(summary: Mapping[str, Any]) -> Iterator[KeyNumber]:
    yield KeyNumber("evdisplay", "images", float(len(summary.get("images", []))), "images")


_EXTRACTORS = {
    "tpc_monitor": _tpc_monitor,
    "purity": _purity,
    "beam": _beam,
    "evdisplay": _evdisplay,
}


def key_numbers(payload: str, summary: Mapping[str, Any] | None) -> list[KeyNumber]:
    """Every key number of one payload's summary (``[]`` for an unknown payload or none)."""
    if not summary or payload not in _EXTRACTORS:
        return []
    return list(_EXTRACTORS[payload](summary))
