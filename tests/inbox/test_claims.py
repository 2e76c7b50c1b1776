"""Claiming: complete files only, each exactly once even when scans race, nothing lost when
the event sink is down. Local folders and a real XRootD server."""

from __future__ import annotations

import threading
import time
from collections import Counter

from p3s.files.inbox import InboxScanner, ScanReport
from tests.inbox.conftest import Recorder, datatypes, put, raw_name


def _scanner(layout, recorder, **kw) -> InboxScanner:
    kw.setdefault("settle_seconds", 0.0)
    return InboxScanner(layout, datatypes(), recorder, **kw)


def _two_passes(scanner: InboxScanner) -> ScanReport:
    """Two passes merged: with settle 0 a file is claimed by the first (local) or the second
    (XRootD: whole-second mtimes are not "old" at first sight)."""
    first, second = scanner.scan(first_pass=True), scanner.scan()
    merged = ScanReport()
    for key, value in vars(first).items():
        getattr(merged, key).extend(value + getattr(second, key))
    return merged


def test_two_scans_at_once_claim_each_of_200_files_exactly_once(layout) -> None:
    layout, server = layout
    layout.ensure()
    names = [raw_name(run) for run in range(1, 201)]
    for name in names:
        put(layout, name)
    recorder = Recorder()
    start = threading.Barrier(2)
    reports = []

    def scan() -> None:
        scanner = _scanner(layout, recorder)
        # Two passes, started together: a fresh XRootD mtime (whole seconds) is not "old"
        # at first sight, so there the second passes race; locally the first ones do.
        for _ in range(2):
            start.wait()
            reports.append(scanner.scan())

    threads = [threading.Thread(target=scan) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = Counter(name for report in reports for name in report.claimed)
    assert claimed == Counter(names)  # each file by exactly one of the two scans
    assert len(reports) == 4
    assert Counter(recorder.names()) == Counter(names)  # one event per file
    assert len({e["id"] for e in recorder.events}) == 200
    assert layout.inbox.names() == set()
    assert layout.claimed.names() == set(names)
    assert layout.announced.names() == set(names)
    # A later pass of either scanner finds nothing owed and emits nothing more.
    _scanner(layout, recorder).scan(first_pass=True)
    assert len(recorder.events) == 200


def test_a_file_still_growing_is_not_claimed_until_its_size_settles(layout) -> None:
    layout, _ = layout
    layout.ensure()
    name = raw_name(7)
    put(layout, name, b"part")
    recorder = Recorder()
    scanner = _scanner(layout, recorder, settle_seconds=0.6)
    assert scanner.scan().waiting == [name]
    put(layout, name, b"partial and growing")
    time.sleep(0.4)
    assert scanner.scan().waiting == [name]  # size changed: the wait starts again
    time.sleep(0.7)
    report = scanner.scan()
    assert report.claimed == [name] and report.announced == [name]
    event = recorder.events[0]
    assert event["event"] == "p3s.file.arrived"
    assert event["resource"]["prefect.resource.id"] == f"p3s.file.{name}"
    assert event["resource"]["p3s.datatype"] == "np04-raw"
    assert event["payload"]["url"] == layout.claimed.child(name)
    assert (event["payload"]["run"], event["payload"]["subrun"]) == (7, 1)


def test_unknown_files_stay_in_the_inbox_and_are_reported_once(layout) -> None:
    layout, _ = layout
    layout.ensure()
    put(layout, "notes.txt")
    put(layout, ".np04_raw_run000001_0001_dl1.h5.part")  # a transfer's temporary name
    recorder = Recorder()
    scanner = _scanner(layout, recorder)
    assert scanner.scan(first_pass=True).unknown == ["notes.txt"]
    assert scanner.scan().unknown == []
    assert layout.inbox.names() == {"notes.txt", ".np04_raw_run000001_0001_dl1.h5.part"}
    assert recorder.events == []


def test_a_second_file_of_a_claimed_name_is_not_claimed(layout) -> None:
    layout, _ = layout
    layout.ensure()
    name = raw_name(3)
    put(layout, name, b"first")
    recorder = Recorder()
    _two_passes(_scanner(layout, recorder))
    put(layout, name, b"second copy")
    report = _two_passes(_scanner(layout, recorder))
    assert [n for n, _ in report.duplicates] == [name] and report.claimed == []
    assert "claimed and being processed" in report.lines()[0]
    fs, path = layout.claimed.fs()
    with fs.open(f"{path}/{name}", "rb") as handle:
        assert handle.read() == b"first"
    assert layout.inbox.names() == {name}
    assert len(recorder.events) == 1


def _read(area, name: str) -> bytes:
    fs, path = area.fs()
    with fs.open(f"{path}/{name}", "rb") as handle:
        return handle.read()


def test_a_file_delivered_again_after_its_namesake_was_used_goes_to_quarantine_unprocessed(
    layout,
) -> None:
    layout, _ = layout
    layout.ensure()
    name, other = raw_name(5), raw_name(6)
    put(layout, name, b"processed copy", stage="used")
    put(layout, name, b"second delivery")
    put(layout, other, b"a new file")
    recorder = Recorder()
    report = _two_passes(_scanner(layout, recorder))
    assert report.redelivered == [name] and report.claimed == [other]
    assert layout.quarantine.names() == {name, f"{name}.reason"}
    assert _read(layout.quarantine, name) == b"second delivery"
    assert _read(layout.used, name) == b"processed copy"
    reason = layout.quarantine.read_text(f"{name}.reason")
    assert "processed already" in reason and "this copy 15 bytes, the processed one 14" in reason
    # Announced: the quarantine event for the shifters, the arrival of the other file only.
    events = {e["resource"]["p3s.file.name"]: e["event"] for e in recorder.events}
    assert events == {name: "p3s.file.quarantined", other: "p3s.file.arrived"}
    assert layout.inbox.names() == set()
    # A third copy, with namesakes in used/ and quarantine/, waits in the inbox and says why.
    put(layout, name, b"third delivery")
    third = _two_passes(_scanner(layout, recorder))
    assert third.duplicates == [
        (name, "a file of that name was processed already and another is in quarantine/")
    ]  # noqa: E501
    assert _read(layout.inbox, name) == b"third delivery"
    assert _read(layout.quarantine, name) == b"second delivery"


def test_a_file_whose_namesake_is_in_quarantine_stays_in_the_inbox_reported_once(layout) -> None:
    layout, _ = layout
    layout.ensure()
    name = raw_name(7)
    put(layout, name, b"corrupt first copy", stage="quarantine")
    put(layout, name, b"a fixed copy")
    recorder = Recorder()
    scanner = _scanner(layout, recorder)
    report = _two_passes(scanner)
    assert [n for n, _ in report.duplicates] == [name] and report.claimed == []
    assert "remove it there to process this one" in report.lines()[0]
    assert scanner.scan().duplicates == []  # reported once
    assert _read(layout.inbox, name) == b"a fixed copy"
    assert recorder.events == []
    # The operator removes the quarantined copy: the fixed one is claimed and announced.
    layout.quarantine.remove(name)
    assert _two_passes(scanner).claimed == [name]
    assert recorder.names() == [name]


def test_files_arriving_while_the_sink_is_down_are_announced_once_when_it_returns(
    layout,
) -> None:
    layout, _ = layout
    layout.ensure()
    names = [raw_name(run) for run in range(100, 120)]
    for name in names:
        put(layout, name)
    recorder = Recorder()
    recorder.down = True
    scanner = _scanner(layout, recorder, retry_seconds=0.2)
    for _ in range(5):
        scanner.scan()
        time.sleep(0.1)
    # At most one file was claimed before the first refusal; the rest wait in the inbox.
    assert len(layout.claimed.names()) <= 1
    assert len(layout.inbox.names()) >= 19
    assert layout.announced.names() == set()
    recorder.down = False
    deadline = time.monotonic() + 30
    while layout.announced.names() != set(names) and time.monotonic() < deadline:
        scanner.scan()
        time.sleep(0.1)
    assert Counter(recorder.names()) == Counter(names)
    assert layout.claimed.names() == set(names) and layout.inbox.names() == set()


def test_a_claim_left_unannounced_by_a_stopped_scanner_is_announced_by_the_next(layout) -> None:
    layout, _ = layout
    layout.ensure()
    name = raw_name(42)
    put(layout, name, stage="claimed")  # claimed, then the scanner died before announcing
    recorder = Recorder()
    patient = _scanner(layout, recorder, retry_seconds=60)
    assert patient.scan().announced == []  # maybe another scanner is announcing it right now
    fresh = _scanner(layout, recorder)
    assert fresh.scan(first_pass=True).announced == [name]
    assert fresh.scan(first_pass=True).announced == []
    assert recorder.names() == [name]
