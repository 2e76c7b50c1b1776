"""The DQM catalog on SQLite and on PostgreSQL (a fresh database at 127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from p3s.dqm.catalog import Catalog, ProductInfo, file_checksums, sync_url
from tests.conftest import _pg

NAME = "np04_raw_run000042_0007_dl1.h5"
PLANES = [
    {"apa": 0, "plane_name": p, "n_channels": 80, "n_dead": d, "n_noisy": n, "mean_rms": r}
    for p, d, n, r in (("U", 0, 1, 5.2), ("V", 1, 0, 4.7), ("X", 0, 0, 3.9))
]
PURITY = [
    {"tpc": 1, "timestamp": "2018-10-01T07:03:00Z", "lifetime_ms": 3.46, "error_ms": 0.33,
     "count": 5},
    {"tpc": 2, "timestamp": "2018-10-01T07:03:00Z", "lifetime_ms": float("nan"),
     "error_ms": None, "count": 0},
]  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "sqlite":
        cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
        yield cat
        cat.dispose()
        return
    dbname = f"p3s_catalog_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(f'CREATE DATABASE "{dbname}"'))
    cat = Catalog(f"postgresql://postgres@127.0.0.1:5432/{dbname}")
    try:
        yield cat
    finally:
        cat.dispose()
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


def _record(catalog: Catalog, payload: str, outcome: str = "completed", **extra: object) -> None:
    catalog.record_payload(
        NAME,
        payload,
        file_url=f"file:///data/claimed/{NAME}",
        run=42,
        subrun=7,
        outcome=outcome,
        flow_run_id=str(uuid.uuid4()),
        started=datetime(2026, 1, 1, tzinfo=UTC),
        **extra,  # type: ignore[arg-type]
    )


def test_rerecording_a_payload_replaces_its_rows(catalog: Catalog) -> None:
    big = 3_000_000_000  # bytes: more than a 32-bit column holds (a raw file of 6 APAs)
    product = ProductInfo("purity.root", "file:///o/purity.root", big, "ab" * 32, "0000abcd")
    for _ in range(2):  # a retried flow run records again
        _record(catalog, "purity", purity=PURITY, products=[product])
        _record(catalog, "tpc_monitor", planes=PLANES)
    assert catalog.payload_outcomes(NAME) == {"purity": "completed", "tpc_monitor": "completed"}
    assert len(catalog.files()) == 1
    assert len(catalog.results(NAME)) == 2
    rows = catalog.purity(run=42)
    assert [(r["tpc"], r["lifetime_ms"], r["count"]) for r in rows] == [(1, 3.46, 5), (2, None, 0)]
    channels = catalog.channels(42)
    assert [(c["plane"], c["n_dead"], c["n_noisy"]) for c in channels] == [
        ("U", 0, 1),
        ("V", 1, 0),
        ("X", 0, 0),
    ]
    assert [(p["name"], p["size"]) for p in catalog.products(42)] == [("purity.root", big)]
    assert catalog.purity(run=43) == [] and catalog.channels(43) == []


def test_a_failure_after_success_keeps_one_result_and_drops_old_products(
    catalog: Catalog,
) -> None:
    product = ProductInfo("a.json", "file:///o/a.json", 1, "00" * 32, "00000001")
    _record(catalog, "beam", products=[product])
    _record(catalog, "beam", outcome="corrupt", reason="truncated")
    assert catalog.payload_outcomes(NAME) == {"beam": "corrupt"}
    assert catalog.results(NAME)[0]["reason"] == "truncated"
    assert catalog.products(42) == []


def test_unknown_outcome_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="outcome 'weird' is not one of"):
        _record(catalog, "beam", outcome="weird")


def test_four_payloads_recording_at_once_make_one_file_row(catalog: Catalog) -> None:
    errors: list[BaseException] = []

    def record(payload: str) -> None:
        try:
            _record(catalog, payload)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [
        threading.Thread(target=record, args=(p,))
        for p in ("tpc_monitor", "purity", "evdisplay", "beam")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(catalog.files()) == 1
    assert set(catalog.payload_outcomes(NAME)) == {"tpc_monitor", "purity", "evdisplay", "beam"}


def test_file_checksums_and_sync_urls(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    assert file_checksums(path) == (
        3,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "024d0127",
    )
    assert sync_url("postgresql+asyncpg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sync_url("sqlite+aiosqlite:///x.db") == "sqlite:///x.db"


def _check(check: str, area: str, quality: str, **extra: object) -> dict[str, object]:
    return {"check": check, "area": area, "place": area, "quality": quality, "value": 1.0,
            "unit": "ADC", "reason": f"{check} in {area} is {quality}.", "version": "v1-abc",
            **extra}  # fmt: skip


def test_quality_flags_are_the_worst_check_per_area_and_run(catalog: Catalog) -> None:
    _record(catalog, "tpc_monitor", summary={})
    changes = catalog.record_checks(
        NAME,
        "tpc_monitor",
        [
            _check("noise-rms", "APA 0", "good"),
            _check("noisy-fraction", "APA 1", "medium"),
            _check("coherent-lines", "APA 1", "bad"),
            _check("informational", "APA 0", "bad", counts=False),
        ],
    )
    assert {(c.area, c.quality, c.before) for c in changes} == {
        ("APA 0", "good", None),
        ("APA 1", "bad", None),
        ("run", "bad", None),
    }
    flags = {f["area"]: f for f in catalog.dq_flags(42)}
    assert flags["APA 1"]["reasons"] == [
        "coherent-lines in APA 1 is bad.",
        "noisy-fraction in APA 1 is medium.",
    ]
    assert (flags["APA 1"]["n_bad"], flags["APA 1"]["n_medium"]) == (1, 1)
    assert flags["run"]["versions"] == "tpc_monitor v1-abc"
    # Re-recording replaces the file's checks of that payload; the flags follow.
    changes = catalog.record_checks(NAME, "tpc_monitor", [_check("noise-rms", "APA 1", "good")])
    assert {(c.area, c.quality, c.before) for c in changes} == {
        ("APA 1", "good", "bad"),
        ("run", "good", "bad"),
    }
    assert {f["area"] for f in catalog.dq_flags(42)} == {"APA 1", "run"}
    assert len(catalog.dq_checks(42)) == 1
    with pytest.raises(ValueError, match="quality 'awful' is not one of"):
        catalog.record_checks(NAME, "tpc_monitor", [_check("x", "APA 0", "awful")])
    with pytest.raises(ValueError, match="is not in the DQM catalog"):
        catalog.record_checks("np04_raw_run000001_0001_dl1.h5", "tpc_monitor", [])


def test_reference_runs_per_payload_and_for_every_payload(catalog: Catalog) -> None:
    _record(catalog, "tpc_monitor", summary={})
    with pytest.raises(ValueError, match="run 43 has no completed result of any payload"):
        catalog.set_reference(43)
    with pytest.raises(ValueError, match="run 42 has no completed result of payload beam"):
        catalog.set_reference(42, "beam")
    catalog.set_reference(42)
    catalog.set_reference(42, "tpc_monitor")
    assert catalog.references() == {"*": 42, "tpc_monitor": 42}
    assert catalog.reference_run("purity") == 42
    assert catalog.unset_reference("*") and not catalog.unset_reference("*")
    assert catalog.reference_run("purity") is None
    assert catalog.reference_run("tpc_monitor") == 42
