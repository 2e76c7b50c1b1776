"""The inbox scan: find complete files, claim each atomically, announce it to Prefect.

One pass (:meth:`InboxScanner.scan`):

1. Announce claims that were not announced yet (the Prefect server was down, or a scanner
   stopped between its claim and its announcement), once they have waited ``retry_seconds``.
2. List the inbox; refuse names that could leave their folder (``..``, separators, NUL,
   symbolic links: never followed) and report files of no known data type, once each; both
   stay where they are.
3. A file is complete once its size and mtime were the same for ``settle_seconds`` (seen in
   two scans that far apart, or an mtime that old).
4. Claim it: rename ``inbox/NAME`` to ``claimed/NAME``. A rename is atomic: when two scans
   race, one rename succeeds and the other finds the source gone. A name already in claimed/
   or quarantine/ is not claimed again (reported once; the inbox copy stays until an operator
   removes the other). A name already in used/ was processed before: the new copy goes to
   quarantine/ with ``NAME.reason`` saying so (a ``p3s.file.quarantined`` event), unprocessed.
5. Announce it: post the ``p3s.file.arrived`` event and, once the server accepted it, write the
   marker ``.state/announced/NAME``. The event id is derived from the claim (URL, size, mtime),
   so a repeat of the same announcement is dropped by the server's trigger evaluation.

While the server does not accept events the scan stops claiming (files stay in the inbox) and
tries again after ``retry_seconds``: nothing is lost, nothing is announced twice.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from p3s.files.lifecycle import (
    Entry,
    Layout,
    OutcomeSource,
    move,
    quarantined_event,
    redelivery_reason,
    sweep,
)
from p3s.files.names import UnsafeName, name_fault
from p3s.files.storage import StorageError
from p3s.system.datatypes import DataType, FileIdentity, classify
from p3s.system.settings import Settings

log = logging.getLogger(__name__)

EVENT = "p3s.file.arrived"
#: How often ``watch`` settles claimed files whose life-cycle triggers were missed (s).
SWEEP_SECONDS = 60.0
#: Namespace of the announcement event ids (uuid5 of the claim).
EVENT_NAMESPACE = uuid.UUID("6c1b0d8e-4d0c-4e55-9f7e-0b5c2f3a9e11")


class EmitError(RuntimeError):
    """The Prefect server did not accept an event (down, refusing, or too slow)."""


@dataclass(frozen=True)
class Announcement:
    """The ``p3s.file.arrived`` event for one claimed file."""

    identity: FileIdentity
    url: str
    size: int
    mtime: float | None

    @property
    def event_id(self) -> uuid.UUID:
        mtime = int(self.mtime) if self.mtime is not None else -1
        return uuid.uuid5(EVENT_NAMESPACE, f"{self.url}|{self.size}|{mtime}")

    def event(self) -> dict[str, Any]:
        """The event as the Prefect events API takes it (JSON-ready)."""
        ident = self.identity
        return {
            "id": str(self.event_id),
            "occurred": datetime.now(UTC).isoformat(),
            "event": EVENT,
            "resource": {
                "prefect.resource.id": f"p3s.file.{ident.name}",
                "prefect.resource.name": ident.name,
                "p3s.file.name": ident.name,
                "p3s.file.url": self.url,
                "p3s.run": str(ident.run),
                "p3s.subrun": str(ident.subrun),
                "p3s.datatype": ident.datatype,
            },
            "related": [],
            "payload": {
                "url": self.url,
                "name": ident.name,
                "run": ident.run,
                "subrun": ident.subrun,
                "datatype": ident.datatype,
                "size": self.size,
            },
        }


Emitter = Callable[[dict[str, Any]], None]


def prefect_emitter(api_url: str, timeout_s: float = 5.0) -> Emitter:
    """An emitter that posts each event to the Prefect API and raises :class:`EmitError`
    unless the server accepted it (HTTP 204)."""
    client = httpx.Client(timeout=timeout_s)

    def emit(event: dict[str, Any]) -> None:
        try:
            answer = client.post(f"{api_url.rstrip('/')}/events", json=[event])
        except httpx.HTTPError as exc:
            raise EmitError(f"the Prefect API at {api_url} did not take the event: {exc}") from exc
        if answer.status_code >= 300:
            raise EmitError(
                f"the Prefect API at {api_url} refused the event: HTTP {answer.status_code} "
                f"{answer.text[:200]}"
            )

    return emit


@dataclass
class ScanReport:
    """What one pass did. Refusals and unknown names are listed the first time only."""

    claimed: list[str] = field(default_factory=list)
    announced: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    redelivered: list[str] = field(default_factory=list)
    lost_race: list[str] = field(default_factory=list)
    not_announced: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One human line per noteworthy thing."""
        out = [f"claimed {n}" for n in self.claimed]
        out += [f"announced {n}" for n in self.announced]
        out += [f"refused {n!r}: {why}" for n, why in self.refused]
        out += [f"left in the inbox (no data type matches): {n}" for n in self.unknown]
        out += [f"left in the inbox ({why}): {n}" for n, why in self.duplicates]
        out += [
            f"moved to quarantine/ (a file of that name was processed already): {n}"
            for n in self.redelivered
        ]
        out += [f"not announced yet (will retry): {n}: {why}" for n, why in self.not_announced]
        return out


@dataclass
class _Seen:
    size: int
    mtime: float | None
    since: float


class InboxScanner:
    """Scans one inbox; keep one instance per process so that scans remember what they saw.

    Args:
        layout: the life-cycle folders.
        datatypes: which names are which data type.
        emit: sends one event; raises :class:`EmitError` when the server did not accept it.
        settle_seconds: how long size and mtime must stay unchanged (s).
        retry_seconds: wait before announcing an unannounced claim again (s).
        clock, wall: monotonic and wall clocks (s), replaceable in tests.
    """

    def __init__(
        self,
        layout: Layout,
        datatypes: list[DataType],
        emit: Emitter,
        *,
        settle_seconds: float = 1.0,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.datatypes = datatypes
        self.emit = emit
        self.settle_seconds = settle_seconds
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.wall = wall
        self._seen: dict[str, _Seen] = {}
        self._closed: set[str] = set()
        self._unannounced_since: dict[str, float] = {}
        self._reported: set[tuple[str, str]] = set()
        self._down_until = 0.0
        layout.ensure()

    @classmethod
    def from_settings(cls, settings: Settings, emit: Emitter | None = None) -> InboxScanner:
        inbox = settings.inbox
        return cls(
            Layout.of(settings),
            inbox.datatypes,
            emit or prefect_emitter(settings.api_url, inbox.emit_timeout_seconds),
            settle_seconds=inbox.settle_seconds,
            retry_seconds=max(inbox.emit_timeout_seconds, inbox.settle_seconds) + 1.0,
        )

    # ----------------------------------------------------------------------------------------

    def scan(self, *, first_pass: bool = False, closed: Iterable[str] = ()) -> ScanReport:
        """One pass over claimed/ (announcements owed) and the inbox (new files).

        Args:
            first_pass: announce every unannounced claim now, without waiting
                ``retry_seconds`` (for a one-shot scan, which has no memory of earlier ones).
            closed: names the kernel saw closed after writing or renamed into the inbox
                since the last scan (:mod:`p3s.files.notify`): complete without settling.
        """
        self._closed.update(closed)
        report = ScanReport()
        if self.clock() < self._down_until:
            return report
        if not self._announce_owed(report, now=first_pass):
            return report
        entries = self.layout.inbox.entries()
        present = {entry.name for entry in entries}
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]  # it left the inbox (claimed elsewhere, or removed)
        self._closed &= present
        for entry in entries:
            if not self._claimable(entry, report):
                continue
            identity = classify(entry.name, self.datatypes)
            if identity is None:
                self._report_once(report.unknown, entry.name, "unknown")
                continue
            if not self._complete(entry):
                report.waiting.append(entry.name)
                continue
            if not self._claim(entry, report):
                continue
            announcement = Announcement(
                identity, self.layout.claimed.child(entry.name), entry.size, entry.mtime
            )
            if not self._announce(announcement, report):
                break  # the server is not taking events: leave the rest in the inbox
        return report

    def _report_once(self, bucket: list, item: Any, kind: str) -> None:
        key = (kind, repr(item))
        if key in self._reported:
            return
        self._reported.add(key)
        bucket.append(item)
        log.warning("inbox: %s: %s", kind, item)

    def _claimable(self, entry: Entry, report: ScanReport) -> bool:
        """Whether the entry is a regular file with a safe name (refusals are reported)."""
        if entry.name.startswith(".") and name_fault(entry.name) is None:
            return False  # a transfer's temporary file: not ours to judge yet
        fault = name_fault(entry.name)
        if fault is None and entry.kind == "link":
            fault = f"a symbolic link (to {entry.target or 'somewhere'}); links are never followed"
        elif fault is None and entry.kind != "file":
            fault = f"a {entry.kind}, not a file; only files are claimed"
        if fault is not None:
            self._report_once(report.refused, (entry.name, fault), "refused")
            return False
        return True

    def _complete(self, entry: Entry) -> bool:
        """Whether the file was closed after writing (local inbox), or its size and mtime have
        been stable for ``settle_seconds``."""
        if entry.name in self._closed:
            return True
        now = self.clock()
        seen = self._seen.get(entry.name)
        if seen is None or (seen.size, seen.mtime) != (entry.size, entry.mtime):
            self._seen[entry.name] = seen = _Seen(entry.size, entry.mtime, now)
        elif now - seen.since >= self.settle_seconds:
            return True
        # Complete too if its mtime says it has not changed for long enough.
        if entry.mtime is None:
            return False
        # Whole-second mtimes (XRootD) may be up to 1 s older than the last write.
        resolution = 1.0 if float(entry.mtime).is_integer() else 0.0
        return self.wall() - entry.mtime - resolution >= self.settle_seconds

    def _claim(self, entry: Entry, report: ScanReport) -> bool:
        layout = self.layout
        name = entry.name
        self._seen.pop(name, None)
        self._closed.discard(name)
        used = layout.used.exists(name)
        if layout.quarantine.exists(name):
            why = "a file of that name is in quarantine/: remove it there to process this one"
            if used:
                why = "a file of that name was processed already and another is in quarantine/"
            self._report_once(report.duplicates, (name, why), "duplicate")
            return False
        if used:
            return self._quarantine_redelivery(entry, report)
        try:
            taken = move(layout.inbox, layout.claimed, name)
        except FileExistsError:
            taken = False
            if layout.inbox.exists(name):  # not a lost race: a second file of that name
                why = "a file of that name is claimed and being processed"
                self._report_once(report.duplicates, (name, why), "duplicate")
                return False
        if not taken:
            report.lost_race.append(name)
            return False
        if layout.claimed.local and os.path.islink(layout.claimed.child_path(name)):
            # Swapped for a link between the listing and the rename: never let a flow follow it.
            fault = "became a symbolic link while being claimed; moved to quarantine/"
            layout.quarantine.write_text(f"{name}.reason", f"{name}: {fault}\n")
            move(layout.claimed, layout.quarantine, name)
            self._report_once(report.refused, (name, fault), "refused")
            _emit_quarantined(self, name, fault)
            return False
        report.claimed.append(name)
        log.info("inbox: claimed %s", name)
        return True

    def _quarantine_redelivery(self, entry: Entry, report: ScanReport) -> bool:
        """Move a second delivery of a name already in used/ to quarantine/, unprocessed."""
        layout, name = self.layout, entry.name
        earlier = layout.used.size(name)  # one stat: used/ holds every file ever processed
        processed = "?" if earlier is None else earlier
        sizes = f"this copy {entry.size} bytes, the processed one {processed}"
        reason = redelivery_reason(name, sizes)
        layout.quarantine.write_text(f"{name}.reason", reason + "\n")
        try:
            moved = move(layout.inbox, layout.quarantine, name)
        except FileExistsError:
            moved = False  # quarantined by a racing scan a moment ago
        if moved:
            report.redelivered.append(name)
            log.warning("inbox: %s", reason)
            _emit_quarantined(self, name, reason)
        else:
            report.lost_race.append(name)
        return False

    def _announce(self, announcement: Announcement, report: ScanReport) -> bool:
        name = announcement.identity.name
        try:
            self.emit(announcement.event())
        except EmitError as exc:
            self._unannounced_since.setdefault(name, self.clock())
            self._down_until = self.clock() + self.retry_seconds
            report.not_announced.append((name, str(exc)))
            log.warning("inbox: %s claimed but not announced yet: %s", name, exc)
            return False
        self.layout.announced.write_text(name, str(announcement.event_id) + "\n")
        self._unannounced_since.pop(name, None)
        report.announced.append(name)
        return True

    def _announce_owed(self, report: ScanReport, *, now: bool) -> bool:
        """Announce claims that have no marker; False when the server still refuses."""
        claimed = {e.name: e for e in self.layout.claimed.entries() if e.kind == "file"}
        owed = set(claimed) - self.layout.announced.names()
        for name in list(self._unannounced_since):
            if name not in owed:
                self._unannounced_since.pop(name)
        for name in sorted(owed):
            since = self._unannounced_since.setdefault(name, self.clock())
            if not now and self.clock() - since < self.retry_seconds:
                continue  # maybe another scanner is announcing it this very moment
            entry = claimed[name]
            identity = classify(name, self.datatypes)
            if identity is None or name_fault(name) is not None:
                continue
            announcement = Announcement(
                identity, self.layout.claimed.child(name), entry.size, entry.mtime
            )
            if not self._announce(announcement, report):
                return False
        return True


def _emit_quarantined(
    scanner: InboxScanner, name: str, reason: str, outcomes: dict[str, str] | None = None
) -> None:
    try:
        scanner.emit(quarantined_event(name, reason, outcomes))
    except EmitError as exc:  # the file is in quarantine/ with its reason all the same
        log.error("could not announce that %s was quarantined: %s", name, exc)


def scan_once(settings: Settings, emit: Emitter | None = None) -> ScanReport:
    """One pass with no memory of earlier ones (``p3s inbox scan``, the ``inbox-scan`` flow).

    Files seen for the first time count as complete when their mtime is ``settle_seconds``
    old; unannounced claims are announced at once.
    """
    scanner = InboxScanner.from_settings(settings, emit)
    return scanner.scan(first_pass=True)


def watch(
    settings: Settings,
    report: Callable[[ScanReport], None],
    *,
    emit: Emitter | None = None,
    stop: Callable[[], bool] = lambda: False,
    extra_outcomes: OutcomeSource | None = None,
) -> None:
    """Scan every ``settings.inbox.poll_seconds``, and at once when a local file completes
    (``settings.inbox.notify``), until ``stop()`` says so.

    Storage errors are reported and retried on the next pass; they never end the watch.
    Every minute it sweeps the claimed files (:func:`~p3s.files.lifecycle.sweep`), with
    ``extra_outcomes`` beside the recorded ones (the DQM catalog's, from ``p3s inbox watch``).
    """
    from p3s.files.notify import InboxNotifier

    scanner = InboxScanner.from_settings(settings, emit)
    inbox = scanner.layout.inbox
    notifier = None
    if settings.inbox.notify and inbox.local:
        notifier = InboxNotifier.open(inbox.fs()[1])
    first = True
    next_sweep = time.monotonic() + SWEEP_SECONDS
    while not stop():
        try:
            closed = notifier.take() if notifier else set()
            result = scanner.scan(first_pass=first, closed=closed)
            first = False
            report(result)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_SECONDS
                for settled in sweep(settings, extra_outcomes):
                    log.info("life cycle (sweep): %s", settled)
                    if settled.action == "quarantine":
                        _emit_quarantined(scanner, settled.name, settled.reason, settled.outcomes)
        except (OSError, StorageError, UnsafeName) as exc:
            log.error("inbox scan failed (retrying): %s", exc)
        if notifier is None:
            time.sleep(settings.inbox.poll_seconds)
        else:
            notifier.wait(settings.inbox.poll_seconds)
    if notifier is not None:
        notifier.close()
