"""The life cycle of a raw file: inbox/ -> claimed/ -> used/ (or quarantine/ with a reason).

All folders live under one root (``settings.inbox.root_url``, default the data root), a local
folder or an fsspec URL such as ``root://host//eos/...``; every operation goes through fsspec
(:mod:`p3s.files.storage`), never a FUSE path. Moves are renames inside one filesystem, so a file is
always in exactly one folder.

Bookkeeping lives beside the folders, in ``ROOT/.state/``:

- ``announced/NAME``: the ``p3s.file.arrived`` event for the claimed file was accepted by the
  Prefect server (written by :mod:`p3s.files.inbox`).
- ``outcomes/NAME/PAYLOAD.json``: what each DQM flow run reported for the file (written here,
  by the life-cycle task at the end of that DQM flow run).

:func:`settle` is idempotent: it may run several times per file and concurrently; the last
run to record an outcome sees them all and makes the single move.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec

from p3s.files import storage
from p3s.files.names import check_name, name_fault
from p3s.system.datatypes import DataType, classify
from p3s.system.settings import Settings

log = logging.getLogger(__name__)

STAGES = ("inbox", "claimed", "used", "quarantine")
STATE = ".state"
#: DQM outcomes as the DQM flows report them in ``p3s.dqm.finished``.
OUTCOMES = ("completed", "failed", "corrupt")


@dataclass(frozen=True)
class Entry:
    """One entry of a folder listing."""

    name: str
    #: "file", "directory", "link" or "other".
    kind: str
    size: int
    #: Modification time (s since the epoch), None when the storage does not say.
    mtime: float | None
    #: Where a symbolic link points (local storage only).
    target: str | None = None


@dataclass(frozen=True)
class Area:
    """One folder on an fsspec filesystem, addressed by its URL."""

    url: str

    def fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = storage.filesystem(self.url)
        return fs, path.rstrip("/")

    @property
    def local(self) -> bool:
        return self.url.startswith("file://")

    def child(self, name: str) -> str:
        """The URL of ``name`` in this folder (the name is checked first)."""
        return self.url.rstrip("/") + "/" + check_name(name)

    def child_path(self, name: str) -> str:
        fs, path = self.fs()
        return path + "/" + check_name(name)

    def sub(self, *names: str) -> Area:
        url = self.url.rstrip("/")
        for name in names:
            url += "/" + check_name(name)
        return Area(url)

    def ensure(self) -> None:
        fs, path = self.fs()
        fs.makedirs(path, exist_ok=True)

    def entries(self) -> list[Entry]:
        """What the folder holds now (a missing folder holds nothing)."""
        fs, path = self.fs()
        fs.invalidate_cache(path)
        try:
            listing = fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        except OSError as exc:
            if "no such file" in str(exc).lower() or "[3011]" in str(exc):
                return []
            raise storage.StorageUnavailable(f"{self.url}: listing failed: {exc}") from exc
        found = []
        for item in listing:
            full = str(item["name"]).rstrip("/")
            # The listing must name direct children; anything else is kept as its raw name,
            # which name_fault() then refuses.
            name = full[len(path) + 1 :] if full.startswith(path + "/") else full
            kind = str(item.get("type", "file"))
            if item.get("islink"):
                kind = "link"
            mtime = item.get("mtime")
            found.append(
                Entry(
                    name=name,
                    kind=kind if kind in ("file", "directory", "link") else "other",
                    size=int(item.get("size") or 0),
                    mtime=float(mtime) if mtime is not None else None,
                    target=item.get("destination"),
                )
            )
        return sorted(found, key=lambda e: e.name)

    def names(self) -> set[str]:
        return {e.name for e in self.entries()}

    def size(self, name: str) -> int | None:
        """Bytes of one file of the folder, without listing it (None: not there, or the
        storage does not answer)."""
        fs, path = self.fs()
        try:
            return int(fs.size(path + "/" + check_name(name)))
        except (OSError, TypeError):  # TypeError: a size the storage does not give
            return None

    def exists(self, name: str) -> bool:
        fs, path = self.fs()
        fs.invalidate_cache(path)
        target = path + "/" + check_name(name)
        if self.local:
            return os.path.lexists(target)
        return bool(fs.exists(target))

    def read_text(self, name: str) -> str | None:
        fs, path = self.fs()
        try:
            with fs.open(path + "/" + check_name(name), "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            if "no such file" in str(exc).lower() or "[3011]" in str(exc):
                return None
            raise

    def write_text(self, name: str, text: str) -> None:
        """Write a small file atomically (temporary name, then rename)."""
        fs, path = self.fs()
        fs.makedirs(path, exist_ok=True)
        final = path + "/" + check_name(name)
        temp = f"{path}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open(temp, "wb") as handle:  # XRootD has no pipe_file
            handle.write(text.encode())
        if self.local:
            os.replace(temp, final)
        else:
            if fs.exists(final):
                fs.rm_file(final)
            fs.mv(temp, final)
        fs.invalidate_cache(path)

    def remove_self(self) -> None:
        """Remove this folder and everything in it (a missing folder is fine)."""
        fs, path = self.fs()
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if "no such file" not in str(exc).lower() and "[3011]" not in str(exc):
                raise

    def remove(self, name: str) -> None:
        fs, path = self.fs()
        target = path + "/" + check_name(name)
        try:
            fs.rm(target, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if "no such file" not in str(exc).lower() and "[3011]" not in str(exc):
                raise
        fs.invalidate_cache(path)


def move(source: Area, dest: Area, name: str) -> bool:
    """Rename ``source/name`` to ``dest/name`` in one step; False if the source was gone.

    Both folders must be on one filesystem (a rename, not a copy). An existing destination is
    never overwritten: :class:`FileExistsError`.
    """
    check_name(name)
    fs, src_path = source.fs()
    _, dst_path = dest.fs()
    src, dst = f"{src_path}/{name}", f"{dst_path}/{name}"
    if dest.exists(name):
        raise FileExistsError(f"{dest.child(name)} exists already; {source.child(name)} stays")
    if source.local:
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            # The source is gone (another run moved it) or the destination folder is missing;
            # ask about the source itself: a concurrent run may create the folder meanwhile.
            if not os.path.lexists(src):
                return False
            os.makedirs(dst_path, exist_ok=True)
            return move(source, dest, name)
        return True
    try:
        fs.mv(src, dst)
    except OSError as exc:
        fs.invalidate_cache(src_path)
        if not fs.exists(src):
            return False
        if not fs.exists(dst_path):
            fs.makedirs(dst_path, exist_ok=True)
            return move(source, dest, name)
        raise storage.StorageUnavailable(f"moving {src} to {dst} failed: {exc}") from exc
    finally:
        fs.invalidate_cache(src_path)
        fs.invalidate_cache(dst_path)
    return True


@dataclass(frozen=True)
class Layout:
    """The folders of the file life cycle under one root URL."""

    root: str

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        return cls(storage.url_for(settings.inbox.root_url or settings.data))

    def area(self, stage: str) -> Area:
        if stage not in STAGES:
            raise ValueError(f"unknown life-cycle folder {stage!r}; known: {', '.join(STAGES)}")
        return Area(f"{self.root.rstrip('/')}/{stage}")

    @property
    def inbox(self) -> Area:
        return self.area("inbox")

    @property
    def claimed(self) -> Area:
        return self.area("claimed")

    @property
    def used(self) -> Area:
        return self.area("used")

    @property
    def quarantine(self) -> Area:
        return self.area("quarantine")

    @property
    def announced(self) -> Area:
        """Markers of claimed files whose arrival event the Prefect server accepted."""
        return Area(f"{self.root.rstrip('/')}/{STATE}/announced")

    def outcomes(self, name: str) -> Area:
        """The outcome records of one file."""
        return Area(f"{self.root.rstrip('/')}/{STATE}/outcomes").sub(name)

    def ensure(self) -> None:
        for stage in STAGES:
            self.area(stage).ensure()

    def where(self, name: str) -> str | None:
        """The life-cycle folder that holds ``name`` now (None: none does)."""
        for stage in STAGES:
            if self.area(stage).exists(name):
                return stage
        return None


# --------------------------------------------------------------------------------------------
# Settling a file once its DQM flows have reported


@dataclass
class Settled:
    """What :func:`settle` did for one file."""

    name: str
    #: "used", "quarantine", "waiting", "already used", "already quarantine", "missing",
    #: "held in claimed" (its namesake is in both used/ and quarantine/).
    action: str
    outcomes: dict[str, str] = field(default_factory=dict)
    expected: tuple[str, ...] = ()
    reason: str = ""

    def __str__(self) -> str:
        seen = ", ".join(f"{p}={o}" for p, o in sorted(self.outcomes.items())) or "none"
        text = f"{self.name}: {self.action} (reported: {seen}; expected {len(self.expected)})"
        return text + (f"; {self.reason}" if self.reason else "")


OutcomeSource = Callable[[str], Mapping[str, str]]

#: The event that says a file went to quarantine/ (the dashboard's service log shows it).
QUARANTINED = "p3s.file.quarantined"


def quarantined_event(
    name: str, reason: str, outcomes: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``p3s.file.quarantined`` event for ``name``, JSON-ready as Prefect's events API
    takes it; whoever moved the file emits it (one move per file: said once)."""
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": QUARANTINED,
        "resource": {"prefect.resource.id": f"p3s.file.{name}", "p3s.file.name": name},
        "payload": {"file": name, "reason": reason, "outcomes": dict(outcomes or {})},
    }


def redelivery_reason(name: str, detail: str = "") -> str:
    """The quarantine reason of a second file of a name that was processed already."""
    extra = f" ({detail})" if detail else ""
    return (
        f"{name} was delivered again: a file of this name was processed already and is in "
        f"used/; this copy was not processed{extra}. Compare the two, then remove this one or "
        "rename it to deliver it under a new name."
    )


def record_outcome(layout: Layout, name: str, payload: str, outcome: str, reason: str) -> None:
    """Keep what one DQM flow reported for ``name`` (idempotent: the same record again)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown DQM outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
    record = {"payload": payload, "outcome": outcome, "reason": reason}
    layout.outcomes(name).write_text(f"{check_name(payload)}.json", json.dumps(record))


def recorded_outcomes(layout: Layout, name: str) -> dict[str, dict[str, Any]]:
    """The outcome records of ``name``: payload -> {"outcome", "reason"}."""
    area = layout.outcomes(name)
    found: dict[str, dict[str, Any]] = {}
    for entry in area.entries():
        if entry.kind != "file" or not entry.name.endswith(".json"):
            continue
        text = area.read_text(entry.name)
        if text is None:
            continue
        try:
            record = json.loads(text)
            found[str(record["payload"])] = record
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable outcome record %s", area.child(entry.name))
    return found


def settle(
    settings: Settings,
    name: str,
    *,
    payload: str | None = None,
    outcome: str | None = None,
    reason: str = "",
    datatype: str | None = None,
    extra_outcomes: OutcomeSource | None = None,
) -> Settled:
    """Record a DQM outcome for ``name`` and move the file once every DQM flow has reported.

    The file goes from claimed/ to used/ when every payload its data type feeds has reported,
    or to quarantine/ with ``NAME.reason`` when any reported it corrupt. Runs again and again
    (several triggers per file, re-delivered events) without harm.

    Args:
        settings: where the folders are and which data types feed which payloads.
        name: the file name (checked: it may not leave its folder).
        payload, outcome, reason: what the DQM flow run that calls it found (None: record
            nothing, settle on what was reported before).
        datatype: the file's data type as the inbox named it (None: found from the name).
        extra_outcomes: more outcomes by payload, such as the DQM catalog's
            (:func:`p3s.dqm.catalog.catalog_outcomes`; None: only the recorded ones).

    Raises:
        UnsafeName: ``name`` could leave its folder.
        ValueError: the name matches no data type, or an unknown outcome.
    """
    check_name(name)
    layout = Layout.of(settings)
    expected = tuple(_datatype_of(name, settings.inbox.datatypes, datatype).feeds)
    if not layout.claimed.exists(name):
        where = layout.where(name)
        action = f"already {where}" if where in ("used", "quarantine") else "missing"
        if where == "inbox":
            action = "not claimed yet"
        return Settled(name, action, expected=expected)
    if payload is not None and outcome is not None:
        record_outcome(layout, name, payload, outcome, reason)
    records = recorded_outcomes(layout, name)
    outcomes = {p: str(r["outcome"]) for p, r in records.items()}
    extra = extra_outcomes(name) if extra_outcomes else {}
    for p, o in extra.items():
        outcomes.setdefault(p, o)
    missing = [p for p in expected if p not in outcomes]
    if missing:
        return Settled(name, "waiting", outcomes, expected, f"waiting for {', '.join(missing)}")
    corrupt = sorted(p for p, o in outcomes.items() if o == "corrupt")
    if corrupt:
        lines = [
            f"{p}: {records.get(p, {}).get('reason') or 'reported the file corrupt'}"
            for p in corrupt
        ]
        head = f"{name} is unreadable; DQM payloads reported it corrupt:"
        layout.quarantine.write_text(f"{name}.reason", "\n".join([head, *lines]) + "\n")
        # One line for logs and the event: "NAME is unreadable; ... corrupt: tpc: why; beam: why".
        dest, action, summary = layout.quarantine, "quarantine", f"{head} " + "; ".join(lines)
    else:
        dest, action, summary = layout.used, "used", ""
    try:
        moved = move(layout.claimed, dest, name)
    except FileExistsError:
        if dest != layout.used or layout.quarantine.exists(name):
            why = f"{dest.child(name)} exists already: an operator must decide which to keep"
            return Settled(name, "held in claimed", outcomes, expected, why)
        # Claimed while its namesake was already in used/ (a scan older than that check):
        # keep this copy in quarantine/ rather than in claimed/ for ever.
        summary = redelivery_reason(name, "its DQM outputs replaced the earlier ones")
        layout.quarantine.write_text(f"{name}.reason", summary + "\n")
        dest, action = layout.quarantine, "quarantine"
        try:
            moved = move(layout.claimed, dest, name)
        except FileExistsError:
            moved = False  # a concurrent run quarantined it a moment ago
    if not moved:  # another run of this flow moved it a moment ago
        where = layout.where(name)
        return Settled(name, f"already {where}", outcomes, expected)
    layout.outcomes(name).remove_self()
    layout.announced.remove(name)
    return Settled(name, action, outcomes, expected, summary)


def _datatype_of(name: str, datatypes: list[DataType], known: str | None = None) -> DataType:
    """The data type of ``name``: the one named ``known`` if configured, else by its name."""
    if known is None or all(d.name != known for d in datatypes):
        identity = classify(name, datatypes)
        if identity is None:
            raise ValueError(f"{name!r} matches no configured data type; it has no DQM flows")
        known = identity.datatype
    for datatype in datatypes:
        if datatype.name == known:
            return datatype
    raise AssertionError("classify() returned a data type that is not configured")


def sweep(settings: Settings, extra_outcomes: OutcomeSource | None = None) -> list[Settled]:
    """Settle every claimed file whose DQM flows have all reported (catalog or records).

    Catches files whose life-cycle triggers were missed (the lifecycle deployment was not
    deployed yet, an automation failed) or are still on their way; ``p3s inbox watch`` runs it
    every minute and emits :func:`quarantined_event` for each file it quarantines.
    Returns the files it moved.
    """
    layout = Layout.of(settings)
    moved = []
    for entry in layout.claimed.entries():
        if entry.kind != "file" or name_fault(entry.name) is not None:
            continue
        if classify(entry.name, settings.inbox.datatypes) is None:
            continue
        result = settle(settings, entry.name, extra_outcomes=extra_outcomes)
        if result.action in ("used", "quarantine"):
            moved.append(result)
    return moved
