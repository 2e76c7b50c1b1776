"""File names that try to leave their folder are refused and reported; nothing follows them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p3s.files.inbox import InboxScanner
from p3s.files.lifecycle import Area, Layout
from p3s.files.names import UnsafeName, check_name, name_fault
from p3s.files.transport import TransportError, relative_to_outbox
from p3s.system.settings import Settings
from tests.inbox.conftest import Recorder, datatypes, raw_name


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "",
        "../np04_raw_run000001_0001_dl1.h5",
        "/etc/passwd",
        "a/b.h5",
        "a\\b.h5",
        "np04\x00.h5",
        "new\nline.h5",
        "x" * 300,
    ],
)
def test_unsafe_names_are_refused_with_a_reason(name: str) -> None:
    assert name_fault(name)
    with pytest.raises(UnsafeName, match="refused file name"):
        check_name(name)


def test_ordinary_names_pass() -> None:
    for name in (raw_name(1), "a..b.h5", "..hidden-but-fine", "run 1.h5"):
        assert name_fault(name) is None


def test_symlinks_in_the_inbox_are_refused_once_and_never_followed(tmp_path: Path) -> None:
    layout = Layout(f"file://{tmp_path / 'data'}")
    layout.ensure()
    inbox = tmp_path / "data" / "inbox"
    secret = tmp_path / "outside" / raw_name(9)
    secret.parent.mkdir()
    secret.write_bytes(b"not yours")
    (inbox / raw_name(1)).symlink_to(secret)
    (inbox / raw_name(2)).symlink_to("../claimed")
    (inbox / raw_name(3)).symlink_to("/etc/passwd")
    (inbox / "subfolder").mkdir()
    recorder = Recorder()
    scanner = InboxScanner(layout, datatypes(), recorder, settle_seconds=0.0)
    first = scanner.scan(first_pass=True)
    refused = dict(first.refused)
    assert set(refused) == {raw_name(1), raw_name(2), raw_name(3), "subfolder"}
    assert "symbolic link" in refused[raw_name(1)] and str(secret) in refused[raw_name(1)]
    assert scanner.scan().refused == []  # reported once
    assert recorder.events == []
    assert secret.read_bytes() == b"not yours" and secret.exists()
    assert sorted(os.listdir(inbox)) == sorted([raw_name(1), raw_name(2), raw_name(3), "subfolder"])
    assert os.listdir(tmp_path / "data" / "claimed") == []


def test_the_life_cycle_refuses_names_from_events(tmp_path: Path, monkeypatch) -> None:
    from p3s.files.lifecycle import settle

    monkeypatch.setenv("P3S_HOME", str(tmp_path))
    settings = Settings()
    for name in ("../../etc/passwd", "/abs.h5", "a/../../b.h5", "x\x00.h5"):
        with pytest.raises(UnsafeName):
            settle(settings, name, payload="purity", outcome="corrupt", reason="x")
    assert not (tmp_path / "data" / "quarantine").exists() or not any(
        (tmp_path / "data" / "quarantine").iterdir()
    )


def test_transport_only_replicates_folders_inside_the_outbox(tmp_path: Path) -> None:
    outbox = f"file://{tmp_path}/outbox"
    assert relative_to_outbox(f"{outbox}/run000001/0001/purity", outbox) == "run000001/0001/purity"
    for url in (f"{tmp_path}/outbox/../inbox", "/etc", f"file://{tmp_path}/outboxx/a"):
        with pytest.raises(TransportError, match="not inside the outbox"):
            relative_to_outbox(url, outbox)


class _SwappingInbox(Area):
    """An inbox whose file becomes a symbolic link right after it was listed (the race)."""

    def entries(self):
        found = super().entries()
        for entry in found:
            path = Path(self.url.removeprefix("file://")) / entry.name
            path.unlink()
            path.symlink_to("/etc/passwd")
        return found


class _RacyLayout(Layout):
    def area(self, stage: str) -> Area:
        area = super().area(stage)
        return _SwappingInbox(area.url) if stage == "inbox" else area


def test_a_file_swapped_for_a_link_while_being_claimed_goes_to_quarantine(tmp_path: Path) -> None:
    layout = _RacyLayout(f"file://{tmp_path / 'data'}")
    layout.ensure()
    name = raw_name(5)
    (tmp_path / "data" / "inbox" / name).write_bytes(b"data")
    recorder = Recorder()
    report = InboxScanner(layout, datatypes(), recorder, settle_seconds=0.0).scan(first_pass=True)
    assert report.claimed == [] and [n for n, _ in report.refused] == [name]
    # Not announced as arrived, only as quarantined (for the service log).
    assert [(e["event"], e["payload"]["file"]) for e in recorder.events] == [
        ("p3s.file.quarantined", name)
    ]
    quarantined = tmp_path / "data" / "quarantine" / name
    assert quarantined.is_symlink() and not (tmp_path / "data" / "claimed" / name).exists()
    assert "symbolic link" in (tmp_path / "data" / "quarantine" / f"{name}.reason").read_text()
