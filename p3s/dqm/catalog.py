"""The DQM catalog: files, runs, DQM results, purity, channel status and output products.

SQLAlchemy 2 on the URL of ``settings.catalog`` (SQLite under the home by default, PostgreSQL
in production, e.g. ``postgresql+psycopg://user@host/db``). Tables are created on first use.

Recording is idempotent: :meth:`Catalog.record_payload` replaces everything one payload wrote
for one file in a single transaction, so a retried flow run leaves one set of rows, not two.

The tables are in :mod:`p3s.dqm.tables`. The data-quality tables are written by :mod:`p3s.dqm`
(checks of ``p3s/dqm/checks``); a run's flags are the worst of its checks' qualities per area
(APA, TPC, beam) and over the run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from p3s.dqm.tables import (
    Base,
    ChannelStatus,
    DqCheck,
    DqFlag,
    DqmResult,
    DqReference,
    File,
    Product,
    Purity,
    Run,
    now_utc,
)
from p3s.files.lifecycle import OUTCOMES
from p3s.files.storage import adler32_of
from p3s.system.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "OUTCOMES",
    "Catalog",
    "ChannelStatus",
    "DqmResult",
    "DqCheck",
    "DqFlag",
    "DqReference",
    "File",
    "FlagChange",
    "Product",
    "ProductInfo",
    "Purity",
    "QUALITIES",
    "Run",
    "file_checksums",
    "open_catalog",
    "payload_outcomes",
]

T = TypeVar("T")
QUALITIES = ("good", "medium", "bad")
"""Data-quality levels, best first."""
ANY_PAYLOAD = "*"
"""The payload name of a reference run set for every payload."""


@dataclass(frozen=True)
class FlagChange:
    """A run's flag in one area after a re-evaluation, beside what it was (None: new)."""

    run: int
    area: str
    quality: str
    before: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ProductInfo:
    """One output product to record: its name, stored URL, size (bytes) and checksums."""

    name: str
    url: str
    size: int
    sha256: str
    adler32: str


def file_checksums(path: str | Path) -> tuple[int, str, str]:
    """Size (bytes), sha256 and adler32 (8 hex digits) of a local file, in one read."""
    sha = hashlib.sha256()
    size = 0

    def also(chunk: bytes) -> None:
        nonlocal size
        sha.update(chunk)
        size += len(chunk)

    with open(path, "rb") as handle:
        adler = adler32_of(handle, also=also)
    return size, sha.hexdigest(), adler


def sync_url(url: str) -> str:
    """The catalog URL with a synchronous driver: PostgreSQL goes through psycopg 3."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url.replace("sqlite+aiosqlite://", "sqlite://", 1)


def _retrying(operation: Callable[[], T], tries: int = 4) -> T:
    """Run a transaction again when a concurrent writer created the same row or table first.

    Flow runs for the four payloads of one file record at the same moment; the loser of a
    race on a unique key (the file, the run) or on ``CREATE TABLE`` tries again and then finds
    the winner's row.
    """
    for attempt in range(1, tries + 1):
        try:
            return operation()
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == tries:
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def _float(value: Any) -> float | None:
    """A finite float or None (NaN and infinities are not stored)."""
    if value is None:
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


def _row(obj: Base, skip: Sequence[str] = ("id", "file_id")) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns if c.key not in skip}


class Catalog:
    """The DQM catalog on one database URL. Thread-safe: each call uses its own session."""

    def __init__(self, url: str) -> None:
        url = sync_url(url)
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        _retrying(lambda: Base.metadata.create_all(self.engine))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Catalog({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed at the end of the block, rolled back on an error."""
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        """Close the engine's connections."""
        self.engine.dispose()

    # -- recording ----------------------------------------------------------------------------

    def _file(
        self,
        session: Session,
        name: str,
        *,
        url: str,
        run: int,
        subrun: int,
        size: int | None = None,
        adler32: str | None = None,
    ) -> File:
        if session.get(Run, run) is None:
            session.add(Run(run=run))
            session.flush()
        file = session.scalars(select(File).where(File.name == name)).one_or_none()
        if file is None:
            file = File(name=name, url=url, run=run, subrun=subrun)
            session.add(file)
        file.url = url
        file.size = size if size is not None else file.size
        file.adler32 = adler32 or file.adler32
        session.flush()
        return file

    def record_file(
        self,
        name: str,
        *,
        url: str,
        run: int,
        subrun: int,
        size: int | None = None,
        adler32: str | None = None,
    ) -> None:
        """Record (or update) a raw file and its run."""

        def record() -> None:
            with self.session() as session:
                self._file(
                    session, name, url=url, run=run, subrun=subrun, size=size, adler32=adler32
                )

        _retrying(record)

    def record_payload(
        self,
        file_name: str,
        payload: str,
        *,
        file_url: str,
        run: int,
        subrun: int,
        outcome: str,
        reason: str = "",
        flow_run_id: str | None = None,
        started: datetime | None = None,
        finished: datetime | None = None,
        summary: Mapping[str, Any] | None = None,
        file_size: int | None = None,
        file_adler32: str | None = None,
        purity: Iterable[Mapping[str, Any]] = (),
        planes: Iterable[Mapping[str, Any]] = (),
        products: Iterable[ProductInfo] = (),
    ) -> None:
        """Record what one payload did for one file, replacing any earlier record of it.

        Args:
            outcome: one of :data:`OUTCOMES`.
            purity: rows with ``tpc``, ``timestamp``, ``lifetime_ms``, ``error_ms``, ``count``.
            planes: rows with ``apa``, ``plane_name``, ``n_channels``, ``n_dead``, ``n_noisy``,
                ``mean_rms`` and ``mean_pedestal`` (ADC counts), as the TPC monitor's summary.
            products: the stored output products.

        Raises:
            ValueError: ``outcome`` is not one of :data:`OUTCOMES`.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        purity, planes, products = list(purity), list(planes), list(products)
        _retrying(
            lambda: self._record_payload(
                file_name,
                payload,
                file_url=file_url,
                run=run,
                subrun=subrun,
                outcome=outcome,
                reason=reason,
                flow_run_id=flow_run_id,
                started=started,
                finished=finished,
                summary=summary,
                file_size=file_size,
                file_adler32=file_adler32,
                purity=purity,
                planes=planes,
                products=products,
            )
        )

    def _record_payload(
        self,
        file_name: str,
        payload: str,
        *,
        file_url: str,
        run: int,
        subrun: int,
        outcome: str,
        reason: str,
        flow_run_id: str | None,
        started: datetime | None,
        finished: datetime | None,
        summary: Mapping[str, Any] | None,
        file_size: int | None,
        file_adler32: str | None,
        purity: list[Mapping[str, Any]],
        planes: list[Mapping[str, Any]],
        products: list[ProductInfo],
    ) -> None:
        with self.session() as session:
            file = self._file(
                session,
                file_name,
                url=file_url,
                run=run,
                subrun=subrun,
                size=file_size,
                adler32=file_adler32,
            )
            result = session.scalars(
                select(DqmResult).where(DqmResult.file_id == file.id, DqmResult.payload == payload)
            ).one_or_none()
            if result is None:
                result = DqmResult(file_id=file.id, payload=payload)
                session.add(result)
            result.outcome = outcome
            result.reason = reason
            result.flow_run_id = flow_run_id
            result.started = started
            result.finished = finished or now_utc()
            result.summary = dict(summary) if summary is not None else None
            self._replace_rows(session, file, payload, purity, planes, products)

    def _replace_rows(
        self,
        session: Session,
        file: File,
        payload: str,
        purity: Iterable[Mapping[str, Any]],
        planes: Iterable[Mapping[str, Any]],
        products: Iterable[ProductInfo],
    ) -> None:
        session.execute(
            delete(Product).where(Product.file_id == file.id, Product.payload == payload)
        )
        for info in products:
            session.add(
                Product(
                    file_id=file.id,
                    run=file.run,
                    payload=payload,
                    name=info.name,
                    url=info.url,
                    size=info.size,
                    sha256=info.sha256,
                    adler32=info.adler32,
                )
            )
        if payload == "purity":
            session.execute(delete(Purity).where(Purity.file_id == file.id))
            for row in purity:
                session.add(
                    Purity(
                        file_id=file.id,
                        run=file.run,
                        tpc=int(row["tpc"]),
                        timestamp=str(row["timestamp"]),
                        lifetime_ms=_float(row.get("lifetime_ms")),
                        error_ms=_float(row.get("error_ms")),
                        count=int(row.get("count", 0)),
                    )
                )
        if payload == "tpc_monitor":
            session.execute(delete(ChannelStatus).where(ChannelStatus.file_id == file.id))
            for row in planes:
                session.add(
                    ChannelStatus(
                        file_id=file.id,
                        run=file.run,
                        apa=int(row["apa"]),
                        plane=str(row.get("plane_name", row.get("plane"))),
                        n_channels=int(row["n_channels"]),
                        n_dead=int(row["n_dead"]),
                        n_noisy=int(row["n_noisy"]),
                        mean_rms=_float(row.get("mean_rms")),
                        mean_pedestal=_float(row.get("mean_pedestal")),
                    )
                )

    # -- queries ------------------------------------------------------------------------------

    def payload_outcomes(self, file_name: str) -> dict[str, str]:
        """The outcome each payload reported for ``file_name`` (``{}`` if none has)."""
        with self.session() as session:
            rows = session.execute(
                select(DqmResult.payload, DqmResult.outcome)
                .join(File, File.id == DqmResult.file_id)
                .where(File.name == file_name)
            ).all()
        return {payload: outcome for payload, outcome in rows}

    def files(self, run: int | None = None) -> list[dict[str, Any]]:
        """Raw files (oldest first), each with its payload outcomes under ``outcomes``."""
        with self.session() as session:
            query = select(File).order_by(File.run, File.subrun, File.name)
            if run is not None:
                query = query.where(File.run == run)
            files = session.scalars(query).all()
            results = session.execute(
                select(DqmResult.file_id, DqmResult.payload, DqmResult.outcome)
            ).all()
        outcomes: dict[int, dict[str, str]] = {}
        for file_id, payload, outcome in results:
            outcomes.setdefault(file_id, {})[payload] = outcome
        return [{**_row(f, skip=("id",)), "outcomes": outcomes.get(f.id, {})} for f in files]

    def results(self, file_name: str | None = None, run: int | None = None) -> list[dict[str, Any]]:
        """DQM results with their file name, newest first."""
        with self.session() as session:
            query = select(DqmResult, File.name, File.run).join(File, File.id == DqmResult.file_id)
            if file_name is not None:
                query = query.where(File.name == file_name)
            if run is not None:
                query = query.where(File.run == run)
            rows = session.execute(query.order_by(DqmResult.finished.desc())).all()
        return [{"file": name, "run": r, **_row(result)} for result, name, r in rows]

    def purity(self, run: int | None = None) -> list[dict[str, Any]]:
        """Purity rows (run, TPC, timestamp, lifetime and error in ms, count), by run and TPC."""
        with self.session() as session:
            query = select(Purity, File.name).join(File, File.id == Purity.file_id)
            if run is not None:
                query = query.where(Purity.run == run)
            rows = session.execute(query.order_by(Purity.run, Purity.timestamp, Purity.tpc)).all()
        return [{**_row(p), "file": name} for p, name in rows]

    def channels(self, run: int) -> list[dict[str, Any]]:
        """Channel-status summaries of ``run`` per file, APA and plane."""
        with self.session() as session:
            rows = session.execute(
                select(ChannelStatus, File.name)
                .join(File, File.id == ChannelStatus.file_id)
                .where(ChannelStatus.run == run)
                .order_by(File.subrun, ChannelStatus.apa, ChannelStatus.plane)
            ).all()
        return [{**_row(c), "file": name} for c, name in rows]

    def products(self, run: int, payload: str | None = None) -> list[dict[str, Any]]:
        """Output products of ``run`` (optionally of one payload) with sizes and checksums."""
        with self.session() as session:
            query = (
                select(Product, File.name, File.subrun)
                .join(File, File.id == Product.file_id)
                .where(Product.run == run)
            )
            if payload is not None:
                query = query.where(Product.payload == payload)
            rows = session.execute(query.order_by(File.subrun, Product.payload, Product.name)).all()
        return [{**_row(p), "file": name, "subrun": subrun} for p, name, subrun in rows]

    # -- what the content pages read ---------------------------------------------------------

    def runs_overview(self, limit: int = 200) -> list[dict[str, Any]]:
        """Runs (newest first) with their files' subruns and each payload's outcome."""
        with self.session() as session:
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

    def purity_count(self, run: int | None = None) -> int:
        """How many purity rows there are (of ``run``)."""
        query = select(func.count(Purity.id))
        if run is not None:
            query = query.where(Purity.run == run)
        with self.session() as session:
            return int(session.scalar(query) or 0)

    def purity_rows(self, run: int | None, offset: int, limit: int) -> list[dict[str, Any]]:
        """Purity rows (of ``run``), newest run and time first: ``limit`` from ``offset``."""
        query = select(Purity)
        if run is not None:
            query = query.where(Purity.run == run)
        with self.session() as session:
            found = session.scalars(
                query.order_by(Purity.run.desc(), Purity.timestamp.desc(), Purity.tpc)
                .limit(limit)
                .offset(offset)
            ).all()
        return [_row(p) for p in found]

    def purity_series(self, run: int | None = None) -> dict[int, list[tuple[str, float, float]]]:
        """TPC -> [(timestamp, lifetime ms, error ms)] in time order, rows with a lifetime only."""
        query = select(Purity.tpc, Purity.timestamp, Purity.lifetime_ms, Purity.error_ms).where(
            Purity.lifetime_ms.is_not(None)
        )
        if run is not None:
            query = query.where(Purity.run == run)
        with self.session() as session:
            rows = session.execute(query.order_by(Purity.timestamp)).all()
        series: dict[int, list[tuple[str, float, float]]] = {}
        for tpc, timestamp, lifetime, error in rows:
            series.setdefault(tpc, []).append((timestamp, lifetime, error or 0.0))
        return series

    def purity_tpcs(self, run: int | None = None) -> list[int]:
        """Every TPC with a purity row (of ``run``)."""
        query = select(Purity.tpc).distinct()
        if run is not None:
            query = query.where(Purity.run == run)
        with self.session() as session:
            return sorted(session.scalars(query).all())

    def noisy_trend(self, last_runs: int = 100) -> list[tuple[int, int, int]]:
        """[(run, noisy channels, dead channels)] of the last runs, summed over APAs and planes."""
        with self.session() as session:
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

    def latest_result(self, run: int, subrun: int, payload: str) -> dict[str, Any] | None:
        """The newest result (outcome, reason, flow run id, finished, summary) of one payload
        for the file of ``run`` and ``subrun``, or None."""
        with self.session() as session:
            found = session.scalars(
                select(DqmResult)
                .join(File, File.id == DqmResult.file_id)
                .where(File.run == run, File.subrun == subrun, DqmResult.payload == payload)
                .order_by(DqmResult.finished.desc())
            ).first()
        if found is None:
            return None
        return {
            "outcome": found.outcome,
            "reason": found.reason,
            "flow_run_id": found.flow_run_id,
            "finished": found.finished,
            "summary": found.summary or {},
        }

    def channel_status(self, run: int, subrun: int) -> list[dict[str, Any]]:
        """Dead and noisy counts and mean RMS per APA and plane of the file of ``run`` and
        ``subrun``."""
        with self.session() as session:
            found = session.scalars(
                select(ChannelStatus)
                .join(File, File.id == ChannelStatus.file_id)
                .where(ChannelStatus.run == run, File.subrun == subrun)
                .order_by(ChannelStatus.apa, ChannelStatus.plane)
            ).all()
        keys = ("apa", "plane", "n_channels", "n_dead", "n_noisy", "mean_rms", "mean_pedestal")
        return [{key: getattr(c, key) for key in keys} for c in found]

    def find_product(self, run: int, subrun: int, payload: str, name: str) -> dict[str, Any] | None:
        """URL, size and sha256 of one recorded product, or None."""
        with self.session() as session:
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

    # -- data quality -------------------------------------------------------------------------

    def completed(
        self,
        *,
        run: int | None = None,
        payload: str | None = None,
        since: datetime | None = None,
        file_name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Completed DQM results (file, run, subrun, payload, summary, finished), by run."""
        with self.session() as session:
            query = (
                select(DqmResult, File.name, File.run, File.subrun)
                .join(File, File.id == DqmResult.file_id)
                .where(DqmResult.outcome == "completed")
            )
            if run is not None:
                query = query.where(File.run == run)
            if payload is not None:
                query = query.where(DqmResult.payload == payload)
            if since is not None:
                query = query.where(DqmResult.finished >= since)
            if file_name is not None:
                query = query.where(File.name == file_name)
            rows = session.execute(query.order_by(File.run, File.subrun, DqmResult.payload)).all()
        return [
            {"file": name, "run": r, "subrun": sub, **_row(result)} for result, name, r, sub in rows
        ]

    def record_checks(
        self, file_name: str, payload: str, rows: Iterable[Mapping[str, Any]]
    ) -> list[FlagChange]:
        """Replace the check results of one file and payload; recompute its run's flags.

        Args:
            rows: check results with ``check``, ``area``, ``place``, ``quality`` (one of
                :data:`QUALITIES`), ``value``, ``unit``, ``reason``, ``version`` and optionally
                ``product``, ``reference_run`` and ``counts`` (False: shown, not flagged).

        Returns:
            The run's flags per area and over the run, each beside its earlier quality.

        Raises:
            ValueError: a quality is not one of :data:`QUALITIES`; the file is not recorded.
        """
        rows = [dict(r) for r in rows]
        for row in rows:
            if row["quality"] not in QUALITIES:
                raise ValueError(f"quality {row['quality']!r} is not one of {QUALITIES}")
        return _retrying(lambda: self._record_checks(file_name, payload, rows))

    def _record_checks(
        self, file_name: str, payload: str, rows: list[dict[str, Any]]
    ) -> list[FlagChange]:
        with self.session() as session:
            file = session.scalars(select(File).where(File.name == file_name)).one_or_none()
            if file is None:
                raise ValueError(f"file {file_name!r} is not in the DQM catalog")
            session.execute(
                delete(DqCheck).where(DqCheck.file_id == file.id, DqCheck.payload == payload)
            )
            now = now_utc()
            for row in rows:
                session.add(
                    DqCheck(
                        file_id=file.id,
                        run=file.run,
                        payload=payload,
                        check=row["check"],
                        area=row["area"],
                        place=row.get("place", ""),
                        quality=row["quality"],
                        value=_float(row.get("value")),
                        unit=row.get("unit", ""),
                        reason=row.get("reason", ""),
                        product=row.get("product", ""),
                        reference_run=row.get("reference_run"),
                        counts=1 if row.get("counts", True) else 0,
                        version=row["version"],
                        evaluated=now,
                    )
                )
            session.flush()
            return self._update_flags(session, file.run)

    def _update_flags(self, session: Session, run: int) -> list[FlagChange]:
        checks = session.scalars(select(DqCheck).where(DqCheck.run == run)).all()
        old = {f.area: f for f in session.scalars(select(DqFlag).where(DqFlag.run == run))}
        areas: dict[str, list[DqCheck]] = {}
        for check in checks:
            if check.counts:
                areas.setdefault(check.area, []).append(check)
                areas.setdefault("run", []).append(check)
        changes = []
        for area, members in sorted(areas.items()):
            worst = max(members, key=lambda c: QUALITIES.index(c.quality)).quality
            failing = [c for c in members if c.quality != "good"]
            failing.sort(key=lambda c: -QUALITIES.index(c.quality))
            flag = old.pop(area, None)
            before = flag.quality if flag is not None else None
            if flag is None:
                flag = DqFlag(run=run, area=area)
                session.add(flag)
            flag.quality = worst
            flag.n_medium = sum(c.quality == "medium" for c in members)
            flag.n_bad = sum(c.quality == "bad" for c in members)
            flag.reasons = list(dict.fromkeys(c.reason for c in failing))
            flag.versions = ", ".join(sorted({f"{c.payload} {c.version}" for c in members}))
            flag.updated = now_utc()
            changes.append(FlagChange(run, area, worst, before, tuple(flag.reasons)))
        for stale in old.values():
            session.delete(stale)
        return changes

    def dq_checks(
        self, run: int | None = None, *, worse_than_good: bool = False
    ) -> list[dict[str, Any]]:
        """Check results (newest run first), optionally only the medium and bad ones."""
        with self.session() as session:
            query = select(DqCheck, File.name, File.subrun).join(File, File.id == DqCheck.file_id)
            if run is not None:
                query = query.where(DqCheck.run == run)
            if worse_than_good:
                query = query.where(DqCheck.quality != "good")
            rows = session.execute(
                query.order_by(DqCheck.run.desc(), File.subrun, DqCheck.payload, DqCheck.id)
            ).all()
        return [
            {**_row(c), "counts": bool(c.counts), "file": name, "subrun": sub}
            for c, name, sub in rows
        ]

    def dq_flags(
        self, run: int | None = None, *, worse_than_good: bool = False
    ) -> list[dict[str, Any]]:
        """Quality flags per run and area (``"run"`` is the whole run), newest run first."""
        with self.session() as session:
            query = select(DqFlag)
            if run is not None:
                query = query.where(DqFlag.run == run)
            if worse_than_good:
                query = query.where(DqFlag.quality != "good")
            flags = session.scalars(query.order_by(DqFlag.run.desc(), DqFlag.area)).all()
        return [_row(f, skip=("id",)) for f in flags]

    def set_reference(self, run: int, payload: str = ANY_PAYLOAD) -> None:
        """Make ``run`` the reference run of ``payload`` (``"*"``: of every payload).

        Raises:
            ValueError: the run has no completed result of that payload in the catalog.
        """
        with self.session() as session:
            query = (
                select(DqmResult.id)
                .join(File, File.id == DqmResult.file_id)
                .where(File.run == run, DqmResult.outcome == "completed")
            )
            if payload != ANY_PAYLOAD:
                query = query.where(DqmResult.payload == payload)
            if session.execute(query.limit(1)).first() is None:
                what = "any payload" if payload == ANY_PAYLOAD else f"payload {payload}"
                raise ValueError(
                    f"run {run} has no completed result of {what} in the DQM catalog: "
                    "choose a run that was processed"
                )
            ref = session.get(DqReference, payload)
            if ref is None:
                session.add(DqReference(payload=payload, run=run))
            else:
                ref.run, ref.set_at = run, now_utc()

    def unset_reference(self, payload: str = ANY_PAYLOAD) -> bool:
        """Forget the reference run of ``payload``; False if it had none."""
        with self.session() as session:
            ref = session.get(DqReference, payload)
            if ref is None:
                return False
            session.delete(ref)
            return True

    def references(self) -> dict[str, int]:
        """payload (or ``"*"``) -> reference run."""
        with self.session() as session:
            return {r.payload: r.run for r in session.scalars(select(DqReference))}

    def reference_run(self, payload: str) -> int | None:
        """The reference run of ``payload``: its own, else the one set for every payload."""
        refs = self.references()
        return refs.get(payload, refs.get(ANY_PAYLOAD))


@lru_cache(maxsize=8)
def _catalog(url: str) -> Catalog:
    return Catalog(url)


def open_catalog(url: str | None = None) -> Catalog:
    """The catalog at ``url`` (default ``settings.catalog``), one per URL and process."""
    if url is None:
        from p3s.system.settings import get_settings

        url = get_settings().catalog
    return _catalog(url)


def payload_outcomes(file_name: str, url: str | None = None) -> dict[str, str]:
    """The outcome each DQM payload reported for ``file_name``: payload -> outcome."""
    return open_catalog(url).payload_outcomes(file_name)


def catalog_outcomes(settings: Settings, file_name: str) -> dict[str, str]:
    """Outcomes the DQM catalog holds for the file ({} when the catalog is not available)."""
    try:
        return dict(payload_outcomes(file_name, settings.catalog))
    except Exception as exc:  # noqa: BLE001 - the catalog only adds to the recorded outcomes
        log.warning("the DQM catalog could not be read for %s: %s", file_name, exc)
        return {}
