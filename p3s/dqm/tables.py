"""The tables of the DQM catalog (SQLAlchemy 2 declarative), one row per:

============== ==================================================================
files          raw file (name unique): URL, run, subrun, size (bytes), adler32
runs           run number, first seen
dqm_results    file x payload: outcome, reason, flow run id, start and end times
purity         file x TPC: run, timestamp, lifetime (ms), error (ms), track count
channel_status file x APA x plane: channels, dead, noisy, mean RMS and pedestal (ADC)
products       file x payload x product: URL, size (bytes), sha256, adler32
dq_checks      file x payload x check x place: quality, value, unit, limit, reason, version
dq_flags       run x area ("APA 1", "TPC 2", "beam", "run"): worst quality, checks' versions
dq_references  payload ("*" for every payload): the reference run
============== ==================================================================
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now_utc() -> datetime:
    """Now, timezone-aware (UTC): the default of every time column."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    run: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class File(Base):
    __tablename__ = "files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    url: Mapped[str] = mapped_column(Text)
    run: Mapped[int] = mapped_column(ForeignKey("runs.run"), index=True)
    subrun: Mapped[int] = mapped_column(Integer)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    adler32: Mapped[str | None] = mapped_column(String(8), nullable=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class DqmResult(Base):
    __tablename__ = "dqm_results"
    __table_args__ = (UniqueConstraint("file_id", "payload"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    payload: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    flow_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Purity(Base):
    __tablename__ = "purity"
    __table_args__ = (UniqueConstraint("file_id", "tpc"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    run: Mapped[int] = mapped_column(Integer, index=True)
    tpc: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[str] = mapped_column(String(32))
    lifetime_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    count: Mapped[int] = mapped_column(Integer)


class ChannelStatus(Base):
    __tablename__ = "channel_status"
    __table_args__ = (UniqueConstraint("file_id", "apa", "plane"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    run: Mapped[int] = mapped_column(Integer, index=True)
    apa: Mapped[int] = mapped_column(Integer)
    plane: Mapped[str] = mapped_column(String(1))
    n_channels: Mapped[int] = mapped_column(Integer)
    n_dead: Mapped[int] = mapped_column(Integer)
    n_noisy: Mapped[int] = mapped_column(Integer)
    mean_rms: Mapped[float | None] = mapped_column(Float, nullable=True)
    mean_pedestal: Mapped[float | None] = mapped_column(Float, nullable=True)


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("file_id", "payload", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    run: Mapped[int] = mapped_column(Integer, index=True)
    payload: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    adler32: Mapped[str] = mapped_column(String(8))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class DqCheck(Base):
    __tablename__ = "dq_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    run: Mapped[int] = mapped_column(Integer, index=True)
    payload: Mapped[str] = mapped_column(String(32))
    check: Mapped[str] = mapped_column(String(64))
    area: Mapped[str] = mapped_column(String(32))
    place: Mapped[str] = mapped_column(String(64))
    quality: Mapped[str] = mapped_column(String(8))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    unit: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    product: Mapped[str] = mapped_column(String(255), default="")
    reference_run: Mapped[int | None] = mapped_column(Integer, nullable=True)
    counts: Mapped[int] = mapped_column(Integer, default=1)
    version: Mapped[str] = mapped_column(String(64))
    evaluated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class DqFlag(Base):
    __tablename__ = "dq_flags"
    __table_args__ = (UniqueConstraint("run", "area"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run: Mapped[int] = mapped_column(ForeignKey("runs.run"), index=True)
    area: Mapped[str] = mapped_column(String(32))
    quality: Mapped[str] = mapped_column(String(8))
    n_medium: Mapped[int] = mapped_column(Integer, default=0)
    n_bad: Mapped[int] = mapped_column(Integer, default=0)
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    versions: Mapped[str] = mapped_column(Text, default="")
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class DqReference(Base):
    __tablename__ = "dq_references"

    payload: Mapped[str] = mapped_column(String(32), primary_key=True)
    run: Mapped[int] = mapped_column(Integer)
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
