"""What the content pages show, read from the DQM catalog and the stored products.

Only products recorded in the catalog are ever served, found by (run, subrun, payload, name):
a request cannot name a path of its own, so nothing outside the outbox can be read.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

from p3s.payloads.rawformat import APA_TPC

from p3s.dqm.catalog import open_catalog
from p3s.files.storage import filesystem

#: Media types of the products the app serves; anything else is refused.
MEDIA_TYPES = {
    ".png": "image/png",
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
    ".root": "application/octet-stream",
}
_FFT = re.compile(r"^apa(?P<apa>\d+)_fiber(?P<fiber>\d+)_fft\.png$")


def apa_of_tpc(tpc: int) -> int | None:
    """The APA (0..5) that reads active TPC ``tpc`` (1, 2, 5, 6, 9, 10), None if none does."""
    return APA_TPC.index(tpc) if tpc in APA_TPC else None


def tpc_label(tpc: int) -> str:
    """``TPC 5 (APA 2)``: the TPC with the APA that reads it."""
    apa = apa_of_tpc(tpc)
    return f"TPC {tpc}" + (f" (APA {apa})" if apa is not None else "")


@dataclass(frozen=True)
class Page:
    """One page of rows and where it sits among all rows."""

    rows: list[dict[str, Any]]
    page: int
    pages: int
    total: int


def runs(limit: int = 200) -> list[dict[str, Any]]:
    """Runs (newest first) with their files' subruns and each payload's outcomes."""
    return open_catalog().runs_overview(limit)


def purity_page(run: int | None, page: int, page_size: int) -> Page:
    """Purity rows (run, TPC and APA, timestamp, lifetime, error, count), newest run first."""
    catalog = open_catalog()
    total = catalog.purity_count(run)
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    rows = [
        {**p, "apa": apa_of_tpc(p["tpc"]), "tpc_label": tpc_label(p["tpc"])}
        for p in catalog.purity_rows(run, (page - 1) * page_size, page_size)
    ]
    return Page(rows, page, pages, total)


def purity_series(run: int | None = None) -> dict[int, list[tuple[str, float, float]]]:
    """TPC -> [(timestamp, lifetime ms, error ms)] in time order, rows with a lifetime only."""
    return open_catalog().purity_series(run)


def purity_tpcs(run: int | None = None) -> list[int]:
    """Every TPC with a purity row (of ``run``)."""
    return open_catalog().purity_tpcs(run)


def noisy_trend(last_runs: int = 100) -> list[tuple[int, int, int]]:
    """[(run, noisy channels, dead channels)] of the last runs, summed over APAs and planes."""
    return open_catalog().noisy_trend(last_runs)


def products(run: int, subrun: int, payload: str) -> list[dict[str, Any]]:
    """The stored products of one payload for one raw file, by name."""
    return [
        p
        for p in open_catalog().products(run, payload)
        if p["subrun"] == subrun and p["payload"] == payload
    ]


def subruns(run: int, payload: str) -> list[int]:
    """Subruns of ``run`` that have products of ``payload``."""
    return sorted({p["subrun"] for p in open_catalog().products(run, payload)})


def result(run: int, subrun: int, payload: str) -> dict[str, Any] | None:
    """The catalog result (outcome, reason, flow run id, summary) of one payload and file."""
    return open_catalog().latest_result(run, subrun, payload)


def channel_status(run: int, subrun: int) -> list[dict[str, Any]]:
    """Dead and noisy counts and mean RMS per APA and plane of one raw file."""
    return open_catalog().channel_status(run, subrun)


def fft_images(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-fiber FFT images (persistent and profiled, one PNG each) in fiber order."""
    found = []
    for p in items:
        match = _FFT.match(p["name"])
        if match:
            found.append({**p, "apa": int(match["apa"]), "fiber": int(match["fiber"])})
    return sorted(found, key=lambda p: (p["apa"], p["fiber"]))


def find_product(run: int, subrun: int, payload: str, name: str) -> dict[str, Any] | None:
    """The catalog row of one product, or None: the only way to a stored file."""
    return open_catalog().find_product(run, subrun, payload, name)


def read_product(url: str) -> bytes:
    """The bytes of a stored product (local or XRootD, through fsspec)."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        return handle.read()


def read_csv(url: str) -> list[dict[str, str]]:
    """A stored CSV product as rows of strings."""
    return list(csv.DictReader(io.StringIO(read_product(url).decode("utf-8"))))


def histogram_keys(run: int, subrun: int, payload: str) -> list[str]:
    """Paths of the 1-D histograms in one payload's ROOT product (``[]`` without one)."""
    import uproot

    found = find_product(run, subrun, payload, f"{payload}.root")
    if found is None:
        return []
    with uproot.open(io.BytesIO(read_product(found["url"]))) as root:
        return sorted(k for k, c in root.classnames(cycle=False).items() if c.startswith("TH1"))


#: The histograms a payload's page overlays on the reference run's, by glob pattern.
OVERLAID = {
    "tpc_monitor": ("apa*/rms_plane*", "apa*/fiber*/profiled_fft"),
    "beam": ("*",),
    "purity": ("tpc*/hit_charge",),
}


def overlay_keys(run: int, subrun: int, payload: str) -> list[str]:
    """The histograms of one page that have a reference to be overlaid on (``[]``: no
    reference run set for the payload)."""
    import fnmatch

    if open_catalog().reference_run(payload) is None:
        return []
    patterns = OVERLAID.get(payload, ())
    return [
        k
        for k in histogram_keys(run, subrun, payload)
        if any(fnmatch.fnmatchcase(k, p) for p in patterns)
    ]
