"""The storage layer on local folders and on a real XRootD server (Debian's xrootd-server)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from p3s.files import storage
from tests.xrootd_server import XRootDServer


def _random_file(path: Path, size: int, seed: int = 1) -> Path:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def test_url_for_makes_local_paths_file_urls_and_keeps_urls(tmp_path: Path) -> None:
    assert storage.url_for(tmp_path / "a.h5") == f"file://{tmp_path}/a.h5"
    assert storage.url_for("root://eos.cern.ch//eos/x.h5") == "root://eos.cern.ch//eos/x.h5"
    with pytest.raises(ValueError, match="unknown storage protocol 'nope'"):
        storage.url_for("nope://x/y")


def test_local_stage_in_copies_and_checks(tmp_path: Path) -> None:
    source = _random_file(tmp_path / "store" / "a.h5", 300_000)
    local = storage.stage_in(source, tmp_path / "scratch")
    assert local == tmp_path / "scratch" / "a.h5"
    assert local.read_bytes() == source.read_bytes()
    assert storage.adler32(local) == storage.adler32(storage.url_for(source))
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["a.h5"]


def test_local_missing_file_is_reported_as_vanished_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(storage.FileVanished, match="does not exist .*removed"):
        storage.stage_in(tmp_path / "gone.h5", tmp_path / "scratch", attempts=5)
    assert time.monotonic() - start < 1.0, "a missing file must not be retried with backoff"


def test_local_stage_out_is_atomic_and_replaces(tmp_path: Path) -> None:
    first = _random_file(tmp_path / "a.root", 1000, seed=1)
    second = _random_file(tmp_path / "b.root", 2000, seed=2)
    dest = tmp_path / "outbox" / "run000001" / "0001" / "purity" / "x.root"
    assert storage.stage_out(first, dest) == storage.url_for(dest)
    storage.stage_out(second, dest)
    assert dest.read_bytes() == second.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["x.root"], "no temporary left behind"


def test_listing_hides_stage_out_temporaries(tmp_path: Path) -> None:
    _random_file(tmp_path / "d" / "a.json", 10)
    _random_file(tmp_path / "d" / ".a.json.tmp-12345678", 10)
    listing = storage.listdir(tmp_path / "d")
    assert [(e["name"], e["size"], e["type"]) for e in listing] == [("a.json", 10, "file")]


def test_xrootd_stage_out_listing_checksum_stage_in(
    xrootd_server: XRootDServer, tmp_path: Path
) -> None:
    source = _random_file(tmp_path / "raw.h5", 3_000_000)
    url = xrootd_server.url("roundtrip/run000001/raw.h5")
    assert storage.stage_out(source, url) == url
    assert xrootd_server.local("roundtrip/run000001/raw.h5").read_bytes() == source.read_bytes()

    listing = storage.listdir(xrootd_server.url("roundtrip/run000001"))
    assert [(e["name"], e["size"], e["url"]) for e in listing] == [("raw.h5", 3_000_000, url)]

    expected = storage.adler32(source)
    assert storage.remote_checksum(url) == expected
    assert storage.adler32(url) == expected
    xrdadler = subprocess.run(
        ["xrdadler32", str(source)], capture_output=True, text=True, check=True
    )
    assert xrdadler.stdout.split()[0] == expected

    local = storage.stage_in(url, tmp_path / "scratch")
    assert local.read_bytes() == source.read_bytes()

    newer = _random_file(tmp_path / "newer.h5", 1000, seed=9)
    storage.stage_out(newer, url)  # a rerun replaces the product in one rename
    folder = xrootd_server.local("roundtrip/run000001")
    assert [p.name for p in folder.iterdir()] == ["raw.h5"], "no temporary left behind"
    assert (folder / "raw.h5").read_bytes() == newer.read_bytes()


def test_xrootd_missing_file_raises_file_vanished(
    xrootd_server: XRootDServer, tmp_path: Path
) -> None:
    url = xrootd_server.url("claimed/np04_raw_run000009_0001_dl1.h5")
    _random_file(xrootd_server.local("claimed/np04_raw_run000009_0001_dl1.h5"), 100)
    xrootd_server.chown(xrootd_server.local("claimed"))
    assert storage.exists(url)
    xrootd_server.local("claimed/np04_raw_run000009_0001_dl1.h5").unlink()
    with pytest.raises(storage.FileVanished, match=r"np04_raw_run000009_0001_dl1\.h5.*removed"):
        storage.stage_in(url, tmp_path / "scratch", attempts=4)
    assert not (tmp_path / "scratch" / "np04_raw_run000009_0001_dl1.h5").exists()


def test_xrootd_unreachable_is_unavailable(tmp_path: Path) -> None:
    from tests.conftest import free_port

    url = f"root://127.0.0.1:{free_port()}//store/x.h5"  # nobody listens there
    with pytest.raises(storage.StorageUnavailable, match="storage unavailable"):
        storage.stage_in(url, tmp_path / "scratch", attempts=1)


def test_xrootd_restart_during_stage_in_succeeds_on_retry(
    xrootd_server: XRootDServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server hangs while a stage-in waits on it, is killed and comes back 2 s later."""
    source = _random_file(tmp_path / "big.h5", 20_000_000, seed=3)
    xrootd_server.local("restart").mkdir(exist_ok=True)
    shutil.copy(source, xrootd_server.local("restart/big.h5"))
    url = xrootd_server.url("restart/big.h5")
    assert xrootd_server.process is not None
    old_pid = xrootd_server.process.pid
    os.kill(old_pid, signal.SIGSTOP)  # the stage-in below starts while the server hangs

    def restart_soon() -> None:
        time.sleep(1.0)
        xrootd_server.restart(down_s=2.0)

    restarter = threading.Thread(target=restart_soon)
    restarter.start()
    try:
        with caplog.at_level(logging.WARNING, logger="p3s.files.storage"):
            local = storage.stage_in(url, tmp_path / "scratch", attempts=6)
    finally:
        restarter.join()
    assert xrootd_server.process is not None and xrootd_server.process.pid != old_pid
    assert local.read_bytes() == source.read_bytes()
    assert any("storage unavailable" in r.getMessage() for r in caplog.records), (
        "the stage-in should have failed at least once and been retried"
    )
