"""Output transport: a products folder replicated to a real XRootD server (or a local folder),
verified by adler32, published in one rename, idempotent."""

from __future__ import annotations

import uuid
import zlib
from pathlib import Path

import pytest

from p3s.files.storage import ChecksumMismatch
from p3s.files.transport import MANIFEST, TransportError, replicate
from p3s.system.settings import InboxSettings, Settings, StorageSettings, get_settings


def _adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


@pytest.fixture(params=["local", "xrootd"])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """The replica root URL and the local folder where its files can be checked."""
    if request.param == "local":
        return f"file://{tmp_path / 'replica'}", tmp_path / "replica"
    server = request.getfixturevalue("xrootd_server")
    folder = f"replica-{uuid.uuid4().hex[:8]}"
    return server.url(folder), server.local(folder)


def _products(tmp_path: Path) -> tuple[Settings, Path]:
    outbox = tmp_path / "outbox"
    folder = outbox / "run000042" / "0003" / "purity"
    (folder / "plots").mkdir(parents=True)
    (folder / "purity.json").write_text('{"lifetime_ms": 3.1}')
    (folder / "plots" / "dqdt.png").write_bytes(bytes(range(256)) * 50)
    (folder / ".purity.root.tmp-1234").write_bytes(b"half written")  # not a product
    return Settings(home=tmp_path / "home", storage=StorageSettings(outbox_url=str(outbox))), folder


def test_a_products_folder_is_replicated_with_checksums_and_only_once(
    replica: tuple[str, Path], tmp_path: Path
) -> None:
    url, local = replica
    settings, folder = _products(tmp_path)
    settings = settings.model_copy(update={"inbox": InboxSettings(replica_url=url)})
    first = replicate(settings, str(folder))
    assert first.copied
    assert first.dest == f"{url}/run000042/0003/purity"
    dest = local / "run000042" / "0003" / "purity"
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [MANIFEST, "plots/dqdt.png", "purity.json"]
    for rel in ("plots/dqdt.png", "purity.json"):
        assert (dest / rel).read_bytes() == (folder / rel).read_bytes()
        assert first.files[rel] == _adler((folder / rel).read_bytes())
    manifest = (dest / MANIFEST).read_text()
    assert f"{first.files['purity.json']}  purity.json" in manifest
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temporaries

    assert replicate(settings, str(folder)).copied is False  # triggered again: no copy

    (folder / "purity.json").write_text('{"lifetime_ms": 3.2}')  # a re-processed output set
    again = replicate(settings, str(folder))
    assert again.copied and (dest / "purity.json").read_text() == '{"lifetime_ms": 3.2}'
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]


def test_folders_outside_the_outbox_and_empty_sets_are_refused(tmp_path: Path) -> None:
    settings, folder = _products(tmp_path)
    with pytest.raises(TransportError, match="not inside the outbox"):
        replicate(settings, str(tmp_path / "home"))
    empty = tmp_path / "outbox" / "run000001" / "0001" / "beam"
    empty.mkdir(parents=True)
    with pytest.raises(TransportError, match="no files"):
        replicate(settings, str(empty))


def test_recorded_checksums_spare_the_reads_but_not_the_check(
    replica: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DQM run's recorded adler32 is what each copy is checked against: a product changed
    since it was recorded is not published, and a recorded product that is gone is named."""
    monkeypatch.setenv("P3S_STORAGE__ATTEMPTS", "1")
    get_settings.cache_clear()
    monkeypatch.setattr("p3s.files.storage._announce_failure", lambda *args: None)
    url, local = replica
    settings, folder = _products(tmp_path)
    settings = settings.model_copy(update={"inbox": InboxSettings(replica_url=url)})
    recorded = {"purity.json": _adler((folder / "purity.json").read_bytes())}
    dest = local / "run000042" / "0003" / "purity"
    try:
        (folder / "purity.json").write_text('{"lifetime_ms": 9.9}')  # changed after the run
        with pytest.raises(ChecksumMismatch, match="purity.json"):
            replicate(settings, str(folder), recorded)
        assert not dest.exists()
        assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]

        (folder / "purity.json").write_text('{"lifetime_ms": 3.1}')  # as the run wrote it
        done = replicate(settings, str(folder), recorded)
        assert done.copied and (dest / "purity.json").read_text() == '{"lifetime_ms": 3.1}'
        assert done.files["purity.json"] == recorded["purity.json"]
        png = (folder / "plots" / "dqdt.png").read_bytes()
        assert done.files["plots/dqdt.png"] == _adler(png)  # not recorded: read for it

        with pytest.raises(TransportError, match="lacks gone.root"):
            replicate(settings, str(folder), {**recorded, "gone.root": "00000001"})
    finally:
        get_settings.cache_clear()
