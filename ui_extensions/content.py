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
from sqlalchemy import func, select

from p3s.dqm.catalog import ChannelStatus, DqmResult, File, Product, Purity, open_catalog
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
    catalog = open_catalog()
    with catalog.session() as session:
        files = session.execute(
            select(File.id, File.run, File.subrun, File.name)
            .order_by(File.run.desc(), File.subrun)
            .limit(limit * 10)
        ).all()
        ids = [f.id for f in files]
        results = (
            session.execute(
                select(DqmResult.file_id, DqmResult.payload, DqmResult.outcome).where(
                    DqmResult.file_id.in_(ids)
                )
            ).all()
            if ids
            else []
        )
    outcomes: dict[int, dict[str, str]] = {}
    for file_id, payload, outcome in results:
        outcomes.setdefault(file_id, {})[payload] = outcome
    by_run: dict[int, dict[str, Any]] = {}
    for f in files:
        entry = by_run.setdefault(f.run, {"run": f.run, "files": []})
        entry["files"].append(
            {"subrun": f.subrun, "name": f.name, "outcomes": outcomes.get(f.id, {})}
        )
    return list(by_run.values())[:limit]


def purity_page(run: int | None, page: int, page_size: int) -> Page:
    """Purity rows (run, TPC and APA, timestamp, lifetime, error, count), newest run first."""
    catalog = open_catalog()
    with catalog.session() as session:
        query = select(Purity)
        counted = select(func.count(Purity.id))
        if run is not None:
            query = query.where(Purity.run == run)
            counted = counted.where(Purity.run == run)
        total = int(session.scalar(counted) or 0)
        pages = max(1, -(-total // page_size))
        page = min(max(1, page), pages)
        found = session.scalars(
            query.order_by(Purity.run.desc(), Purity.timestamp.desc(), Purity.tpc)
            .limit(page_size)
            .offset((page - 1) * page_size)
        ).all()
    rows = [
        {
            "run": p.run,
            "tpc": p.tpc,
            "apa": apa_of_tpc(p.tpc),
            "tpc_label": tpc_label(p.tpc),
            "timestamp": p.timestamp,
            "lifetime_ms": p.lifetime_ms,
            "error_ms": p.error_ms,
            "count": p.count,
        }
        for p in found
    ]
    return Page(rows, page, pages, total)


def purity_series(run: int | None = None) -> dict[int, list[tuple[str, float, float]]]:
    """TPC -> [(timestamp, lifetime ms, error ms)] in time order, rows with a lifetime only."""
    catalog = open_catalog()
    with catalog.session() as session:
        query = select(Purity.tpc, Purity.timestamp, Purity.lifetime_ms, Purity.error_ms).where(
            Purity.lifetime_ms.is_not(None)
        )
        if run is not None:
            query = query.where(Purity.run == run)
        rows = session.execute(query.order_by(Purity.timestamp)).all()
    series: dict[int, list[tuple[str, float, float]]] = {}
    for tpc, timestamp, lifetime, error in rows:
        series.setdefault(tpc, []).append((timestamp, lifetime, error or 0.0))
    return series


def purity_tpcs(run: int | None = None) -> list[int]:
    """Every TPC with a purity row (of ``run``)."""
    query = select(Purity.tpc).distinct()
    if run is not None:
        query = query.where(Purity.run == run)
    catalog = open_catalog()
    with catalog.session() as session:
        return sorted(session.scalars(query).all())


def noisy_trend(last_runs: int = 100) -> list[tuple[int, int, int]]:
    """[(run, noisy channels, dead channels)] of the last runs, summed over APAs and planes."""
    catalog = open_catalog()
    with catalog.session() as session:
        rows = session.execute(
            select(
                ChannelStatus.run,
                func.sum(ChannelStatus.n_noisy),
                func.sum(ChannelStatus.n_dead),
            )
            .group_by(ChannelStatus.run)
            .order_by(ChannelStatus.run.desc())
            .limit(last_runs)
        ).all()
    return sorted((int(r), int(n or 0), int(d or 0)) for r, n, d in rows)


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
    catalog = open_catalog()
    with catalog.session() as session:
        found = session.execute(
            select(DqmResult)
            .join(File, File.id == DqmResult.file_id)
            .where(File.run == run, File.subrun == subrun, DqmResult.payload == payload)
            .order_by(DqmResult.finished.desc())
        ).first()
    if found is None:
        return None
    r = found[0]
    return {
        "outcome": r.outcome,
        "reason": r.reason,
        "flow_run_id": r.flow_run_id,
        "finished": r.finished,
        "summary": r.summary or {},
    }


def channel_status(run: int, subrun: int) -> list[dict[str, Any]]:
    """Dead and noisy counts and mean RMS per APA and plane of one raw file."""
    catalog = open_catalog()
    with catalog.session() as session:
        found = session.scalars(
            select(ChannelStatus)
            .join(File, File.id == ChannelStatus.file_id)
            .where(ChannelStatus.run == run, File.subrun == subrun)
            .order_by(ChannelStatus.apa, ChannelStatus.plane)
        ).all()
    keys = ("apa", "plane", "n_channels", "n_dead", "n_noisy", "mean_rms", "mean_pedestal")
    return [{key: getattr(c, key) for key in keys} for c in found]


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
    catalog = open_catalog()
    with catalog.session() as session:
        row = session.execute(
            select(Product.url, Product.size, Product.sha256)
            .join(File, File.id == Product.file_id)
            .where(
                Product.run == run,
                File.subrun == subrun,
                Product.payload == payload,
                Product.name == name,
            )
        ).first()
    return None if row is None else {"url": row.url, "size": row.size, "sha256": row.sha256}


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
