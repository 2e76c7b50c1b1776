"""inotify on a local inbox: a file closed after writing, or renamed in, is complete at once;
a file still open for writing is not; the watch wakes on the event instead of its poll."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from p3s.files.inbox import InboxScanner, watch
from p3s.files.lifecycle import Layout
from p3s.files.notify import InboxNotifier
from p3s.system.settings import Settings
from tests.inbox.conftest import Recorder, datatypes, raw_name

# Long enough that nothing in these tests can complete by settling.
NEVER_S = 3600.0


def _local(tmp_path: Path) -> tuple[Layout, Path]:
    layout = Layout(f"file://{tmp_path / 'data'}")
    layout.ensure()
    return layout, Path(layout.inbox.fs()[1])


def test_closed_and_renamed_files_are_complete_at_once_and_an_open_one_is_not(tmp_path) -> None:
    layout, inbox = _local(tmp_path)
    notifier = InboxNotifier(inbox)
    recorder = Recorder()
    scanner = InboxScanner(layout, datatypes(), recorder, settle_seconds=NEVER_S)

    written, renamed, still_open = raw_name(1), raw_name(2), raw_name(3)
    (inbox / written).write_bytes(b"written in place, then closed")
    (tmp_path / "elsewhere").write_bytes(b"renamed in, as transfer tools do")
    os.rename(tmp_path / "elsewhere", inbox / renamed)
    with open(inbox / still_open, "wb") as handle:
        handle.write(b"first half")
        handle.flush()
        report = scanner.scan(closed=notifier.take())
        assert sorted(report.claimed) == sorted([written, renamed])
        assert report.waiting == [still_open]
        handle.write(b" and the rest")
    report = scanner.scan(closed=notifier.take())
    assert report.claimed == [still_open]
    assert sorted(recorder.names()) == sorted([written, renamed, still_open])
    notifier.close()


def test_hidden_transfer_names_are_left_alone_until_renamed(tmp_path) -> None:
    layout, inbox = _local(tmp_path)
    notifier = InboxNotifier(inbox)
    scanner = InboxScanner(layout, datatypes(), Recorder(), settle_seconds=NEVER_S)
    name = raw_name(4)
    (inbox / f".{name}.part").write_bytes(b"transfer in progress")
    assert scanner.scan(closed=notifier.take()).claimed == []
    os.rename(inbox / f".{name}.part", inbox / name)
    assert scanner.scan(closed=notifier.take()).claimed == [name]
    notifier.close()


def test_the_watch_claims_a_file_on_its_event_not_on_its_poll(tmp_path) -> None:
    """With a 10-minute poll and a 1-hour settle, only the notifier can claim the file."""
    settings = Settings(home=tmp_path / "home")
    settings.inbox.poll_seconds = 600.0
    settings.inbox.settle_seconds = NEVER_S
    layout = Layout.of(settings)
    recorder = Recorder()
    stop = threading.Event()
    claimed = threading.Event()
    scanned = threading.Event()

    def report(result) -> None:
        scanned.set()
        if result.announced:
            claimed.set()

    thread = threading.Thread(
        target=watch, args=(settings, report), kwargs={"emit": recorder, "stop": stop.is_set}
    )
    thread.start()
    try:
        inbox = Path(layout.inbox.fs()[1])
        # The folders exist before the notifier watches them; the first scan's report comes
        # after it does (a file renamed in between is found by the poll and must settle).
        assert scanned.wait(60), "the watch did not scan"
        name = raw_name(5)
        (tmp_path / name).write_bytes(b"raw data")
        os.rename(tmp_path / name, inbox / name)
        assert claimed.wait(60), "the watch did not wake on the file's event"
        assert recorder.names() == [name]
    finally:
        stop.set()
        (inbox / raw_name(6)).write_bytes(b"wakes the watch so that it sees stop")
        thread.join(30)
    assert not thread.is_alive()
