"""Trends: every key number of every payload across runs, per place (APA/TPC, plane, fiber).

Read from the stored summaries in the DQM catalog (:mod:`p3s.dqm.keynumbers`); a run with
several subruns gets the mean over them. The content app draws them (``/trends``) and serves
them as JSON (``/api/trends.json``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from p3s.dqm.catalog import Catalog
from p3s.dqm.keynumbers import key_numbers

__all__ = ["quality_strip", "trend_series"]


def trend_series(
    catalog: Catalog, *, payload: str | None = None, since: datetime | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """payload -> quantity -> ``{"unit": ..., "places": {place: [[run, value], ...]}}``.

    Values are the means over a run's subruns, runs in increasing order; a place where the
    payload could not measure the number (None) is left out for that run.
    """
    sums: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    units: dict[tuple[str, str], str] = {}
    for result in catalog.completed(payload=payload, since=since):
        for number in key_numbers(result["payload"], result["summary"]):
            units[(number.payload, number.quantity)] = number.unit
            if number.value is not None:
                key = (number.payload, number.quantity, number.place, result["run"])
                sums[key].append(number.value)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (pay, quantity), unit in sorted(units.items()):
        out.setdefault(pay, {})[quantity] = {"unit": unit, "places": {}}
    for (pay, quantity, place, run), values in sorted(sums.items()):
        places = out[pay][quantity]["places"]
        places.setdefault(place, []).append([run, sum(values) / len(values)])
    return out


def quality_strip(catalog: Catalog, last_runs: int = 200) -> dict[str, Any]:
    """The quality flag of the last runs: ``{"runs": [...], "areas": {area: [flag|None]}}``.

    ``areas`` has ``run`` (the whole run) first, then each APA/TPC/beam area in name order;
    None where a run has no flag for that area.
    """
    flags = catalog.dq_flags()
    runs = sorted({f["run"] for f in flags})[-last_runs:]
    index = {run: i for i, run in enumerate(runs)}
    names = sorted({f["area"] for f in flags} - {"run"})
    areas: dict[str, list[str | None]] = {a: [None] * len(runs) for a in ["run", *names]}
    for flag in flags:
        if flag["run"] in index:
            areas[flag["area"]][index[flag["run"]]] = flag["quality"]
    return {"runs": runs, "areas": areas}
