"""Output transport: replicate one finished DQM output set to a second location, checked.

p3s planned the automated transport of DQM outputs to FNAL. Here a products folder of the
outbox (``OUTBOX/run…/…/PAYLOAD``) is copied to the same relative place under the replica
root (``settings.inbox.replica_url``, default ``DATA/replica``; ``root://`` in production):

1. every file is staged out into a hidden ``.incoming-XXXX`` folder beside the destination
   (atomic per file), straight from a local outbox, through scratch from a remote one; each
   copy's adler32 is checked against the source's: the one recorded when the DQM run wrote
   its products (no file is read again for it), or read here for a file without one;
2. a ``MANIFEST.adler32`` is written;
3. the folder is renamed to its final name in one step, so a reader sees the whole set or none.

A set whose replica already carries the same manifest is left alone (the flow may run twice).
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from p3s.files import storage
from p3s.files.lifecycle import Area
from p3s.files.names import check_name
from p3s.system.settings import Settings

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.adler32"


class TransportError(RuntimeError):
    """An output set could not be replicated (outside the outbox, empty, checksum differs)."""


@dataclass(frozen=True)
class Replica:
    """The result of one replication."""

    source: str
    dest: str
    files: dict[str, str]
    #: False when the replica was already there and identical.
    copied: bool


def outbox_url(settings: Settings) -> str:
    return storage.url_for(getattr(settings, "outbox", None) or settings.data / "outbox")


def replica_url(settings: Settings) -> str:
    return storage.url_for(settings.inbox.replica_url or settings.data / "replica")


def relative_to_outbox(url: str, outbox: str) -> str:
    """The path of ``url`` inside ``outbox`` (each part a checked name).

    Raises:
        TransportError: ``url`` is not inside the outbox, or a part could leave its folder.
    """
    full, base = storage.url_for(url).rstrip("/"), outbox.rstrip("/")
    if not full.startswith(base + "/"):
        raise TransportError(f"{url} is not inside the outbox {outbox}; only outputs travel")
    rel = full[len(base) + 1 :]
    parts = rel.split("/")
    try:
        for part in parts:
            check_name(part)
    except ValueError as exc:
        raise TransportError(f"{url}: {exc}") from exc
    return posixpath.join(*parts)


def _files(url: str) -> dict[str, str]:
    """Relative path -> URL of every file under the folder ``url``."""
    fs, path = storage.filesystem(url)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    found = {}
    for full in fs.find(path):
        rel = full[len(path) + 1 :]
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # temporaries of an atomic stage-out
        found[rel] = url.rstrip("/") + "/" + rel
    return found


def _manifest(checksums: dict[str, str]) -> str:
    return "".join(f"{value}  {rel}\n" for rel, value in sorted(checksums.items()))


def replicate(
    settings: Settings, source_url: str, known: Mapping[str, str] | None = None
) -> Replica:
    """Copy the output set at ``source_url`` (a folder in the outbox) to the replica root.

    Args:
        known: adler32 of files of the set by path inside it, as recorded when they were
            written (the DQM run's products): each copy is checked against it, and the source
            is not read for it. Files not named here are read for their checksum.

    Raises:
        TransportError: not in the outbox, no files, a known file missing, or a source file
            that no longer has its recorded checksum.
        storage.StorageError: the storage failed (transient failures are retried inside);
            :class:`~p3s.files.storage.ChecksumMismatch` when a copy kept differing.
    """
    rel = relative_to_outbox(source_url, outbox_url(settings))
    source = storage.url_for(source_url).rstrip("/")
    files = {r: u for r, u in _files(source).items() if r != MANIFEST}
    if not files:
        raise TransportError(f"{source} holds no files to replicate")
    known = dict(known or {})
    missing = sorted(set(known) - set(files))
    if missing:
        raise TransportError(f"{source} lacks {', '.join(missing)}, written by its DQM run")
    checksums = {r: known.get(r) or storage.adler32(u) for r, u in files.items()}
    manifest = _manifest(checksums)
    root = Area(replica_url(settings))
    dest = root.url.rstrip("/") + "/" + rel
    parent_url, _, leaf = dest.rpartition("/")
    parent = Area(parent_url)
    if Area(dest).read_text(MANIFEST) == manifest:
        log.info("%s is already replicated at %s", source, dest)
        return Replica(source, dest, checksums, copied=False)
    incoming = parent.sub(f".incoming-{leaf}-{uuid.uuid4().hex[:8]}")
    settings.scratch.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="transport-", dir=settings.scratch) as tmp:
            for rel_file, url in sorted(files.items()):
                _copy(url, incoming.url + "/" + rel_file, checksums[rel_file], Path(tmp))
    except BaseException:
        incoming.remove_self()
        raise
    incoming.write_text(MANIFEST, manifest)
    _swap_in(parent, incoming, leaf)
    log.info("replicated %d files of %s to %s", len(files), source, dest)
    return Replica(source, dest, checksums, copied=True)


def _copy(url: str, target: str, adler32: str, scratch: Path) -> None:
    """Write the file ``url`` to ``target``, checked against ``adler32``: straight from a local
    source, through ``scratch`` from a remote one."""
    local = storage.local_path(url)
    if local is None:
        staged = storage.stage_in_checked(url, scratch / uuid.uuid4().hex[:8])
        if staged.adler32 != adler32:
            raise TransportError(f"{url}: adler32 {staged.adler32}, recorded {adler32}")
        local = staged.path
    storage.stage_out(local, target, adler32=adler32)


def _swap_in(parent: Area, incoming: Area, leaf: str) -> None:
    """Rename ``incoming`` to ``parent/leaf``; an older replica is moved aside, then removed."""
    fs, parent_path = parent.fs()
    _, incoming_path = incoming.fs()
    final = parent_path + "/" + leaf
    old = None
    if parent.exists(leaf):
        old = parent_path + f"/.replaced-{leaf}-{uuid.uuid4().hex[:8]}"
        fs.mv(final, old, recursive=True)
    fs.mv(incoming_path, final, recursive=True)
    fs.invalidate_cache(parent_path)
    if old is not None:
        fs.rm(old, recursive=True)
