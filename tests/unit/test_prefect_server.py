"""The Prefect server launcher: SQLite databases seeded from a migrated template."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from p3s.prefect_server import SQLITE_PREFIX, seed_sqlite


def test_a_new_sqlite_database_is_a_migrated_copy_and_an_old_one_is_left(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    target = tmp_path / "home" / "prefect.db"
    assert seed_sqlite(SQLITE_PREFIX + str(target), env)
    with sqlite3.connect(target) as db:
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert version and {"flow_run", "deployment", "work_pool", "events"} <= tables

    target.write_bytes(b"an existing database")
    assert not seed_sqlite(SQLITE_PREFIX + str(target), env)
    assert target.read_bytes() == b"an existing database"
    assert not seed_sqlite("postgresql+asyncpg://postgres@127.0.0.1:5432/x", env)
