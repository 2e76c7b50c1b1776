"""Quality flags: the checks evaluated on a payload's stored outputs, recorded in the catalog.

:func:`evaluate_file` reads one payload's result for one file from the DQM catalog (its
summary, as in ``summary.json``, and the URL of its ROOT product), the reference run's ROOT
product where one is set, evaluates the payload's check file and records the results; the
catalog then holds the worst quality per APA/TPC (``dq_flags``) and over the run, with the
check files' versions. :func:`recheck` does it again for stored outputs (after a change of a
limit or of a reference run), without running any payload.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from p3s.dqm.catalog import Catalog, FlagChange
from p3s.dqm.checks import CheckFile, Outputs, evaluate, load_checks, read_root_histograms

__all__ = ["RecheckReport", "evaluate_file", "recheck", "root_product_url"]


def _root_product(
    catalog: Catalog, run: int, payload: str, file_name: str | None = None
) -> dict[str, Any] | None:
    for product in catalog.products(run, payload):
        if product["name"] == f"{payload}.root" and file_name in (None, product["file"]):
            return product
    return None


def root_product_url(
    catalog: Catalog, run: int, payload: str, file_name: str | None = None
) -> str | None:
    """URL of the ``<payload>.root`` product of ``file_name`` (else the run's first subrun)."""
    product = _root_product(catalog, run, payload, file_name)
    return str(product["url"]) if product else None


_LOCK = threading.Lock()
_REFERENCES: dict[tuple[str, str, tuple[str, ...]], Mapping[str, np.ndarray]] = {}
"""The reference runs' histograms read lately, by URL, sha256 and patterns: every run of a
shift compares with the same reference, whose ROOT file is then read once per process."""


def _cached(url: str, sha256: str):
    read = _reader(url)

    def cached(patterns: Sequence[str]) -> Mapping[str, np.ndarray]:
        key = (url, sha256, tuple(patterns))
        with _LOCK:
            found = _REFERENCES.get(key)
        if found is None:
            found = read(patterns)
            with _LOCK:
                while len(_REFERENCES) >= 8:
                    _REFERENCES.pop(next(iter(_REFERENCES)))
                _REFERENCES[key] = found
        return found

    return cached


def _reader(url: str):
    """A lazy reader of every histogram of the ROOT file at ``url`` (local or remote)."""

    def read(patterns: Sequence[str]) -> Mapping[str, np.ndarray]:
        from fsspec.implementations.local import LocalFileSystem

        from p3s.files.storage import filesystem

        fs, path = filesystem(url)
        if isinstance(fs, LocalFileSystem):
            return read_root_histograms(path, patterns)
        with fs.open(path, "rb") as handle:
            return read_root_histograms(io.BytesIO(handle.read()), patterns)

    return read


def evaluate_file(
    catalog: Catalog,
    file_name: str,
    payload: str,
    checks: Mapping[str, CheckFile] | None = None,
) -> list[FlagChange]:
    """Evaluate ``payload``'s checks on its stored outputs of ``file_name`` and record them.

    Returns:
        The run's flags (per area and ``run``) beside their earlier values; ``[]`` when the
        payload has no check file or no completed result for the file.
    """
    checks = load_checks() if checks is None else checks
    if payload not in checks:
        return []
    results = catalog.completed(payload=payload, file_name=file_name)
    if not results:
        return []
    result = results[0]
    own = root_product_url(catalog, result["run"], payload, file_name)
    ref_run = catalog.reference_run(payload)
    ref = _root_product(catalog, ref_run, payload) if ref_run is not None else None
    outputs = Outputs(
        summary=result["summary"] or {},
        histograms=_reader(own) if own else None,
        reference=_cached(str(ref["url"]), str(ref["sha256"])) if ref else None,
        reference_run=ref_run if ref else None,
        product=f"{payload}.root",
    )
    rows = [r.as_row() for r in evaluate(checks[payload], outputs)]
    return catalog.record_checks(file_name, payload, rows)


@dataclass
class RecheckReport:
    """What :func:`recheck` did: results re-evaluated and flags that changed."""

    evaluated: int = 0
    changes: dict[tuple[int, str], tuple[str | None, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "evaluated": self.evaluated,
            "changed": [
                {"run": run, "area": area, "before": before, "after": after}
                for (run, area), (before, after) in sorted(self.changes.items())
            ],
        }


def recheck(
    catalog: Catalog,
    *,
    run: int | None = None,
    since: datetime | None = None,
    checks: Mapping[str, CheckFile] | None = None,
) -> RecheckReport:
    """Re-evaluate the checks on the stored outputs of ``run`` (or of results finished since
    ``since``; default all), reading the check files once. No payload runs."""
    checks = load_checks() if checks is None else checks
    report = RecheckReport()
    first: dict[tuple[int, str], str | None] = {}
    last: dict[tuple[int, str], str] = {}
    for result in catalog.completed(run=run, since=since):
        if result["payload"] not in checks:
            continue
        for change in evaluate_file(catalog, result["file"], result["payload"], checks):
            key = (change.run, change.area)
            first.setdefault(key, change.before)
            last[key] = change.quality
        report.evaluated += 1
    report.changes = {k: (first[k], q) for k, q in last.items() if first[k] != q}
    return report
