"""One storage layer through fsspec: local folders and ``file://`` by default, EOS over XRootD.

Every URL is an fsspec URL: a plain path or ``file:///abs/path`` for local folders,
``root://host:port//path`` for XRootD (through fsspec-xrootd). No FUSE mount is assumed.

- :func:`stage_in` copies a file to local scratch and checks its size and adler32 checksum
  (the server's checksum when it offers one, as XRootD does; for local files both sides are
  computed here).
- :func:`stage_out` writes under a temporary name beside the destination, checks it, then
  renames it into place, so a half-written output is never visible under its final name.
- Transient failures (server unreachable, timeout, read error, a copy whose checksum differs)
  are retried with exponential backoff (``settings.storage``); a missing file is never retried.

Errors are :class:`StorageError` subclasses: :class:`StorageUnavailable` (transient: retry
later), :class:`FileVanished` (the file is gone: do not retry), :class:`ChecksumMismatch`
(the copy kept differing from the source after every try).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from p3s.system.settings import get_settings

__all__ = [
    "ChecksumMismatch",
    "FileVanished",
    "StorageError",
    "StorageUnavailable",
    "adler32",
    "adler32_local",
    "adler32_of",
    "exists",
    "filesystem",
    "listdir",
    "local_path",
    "remote_checksum",
    "Staged",
    "stage_in",
    "stage_in_checked",
    "stage_out",
    "url_for",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 4 * 1024 * 1024
"""Bytes read at a time when checksumming (4 MiB)."""
_MISSING_MARKERS = ("[3011]", "no such file")
_REFUSED_MARKERS = ("[3010]", "permission denied", "not authorized")
FAILED_EVENT = "p3s.storage.failed"
"""Emitted for every failed try of a transfer (retried or final)."""


class StorageError(RuntimeError):
    """A storage operation failed (base class)."""


class StorageUnavailable(StorageError):
    """The storage did not answer or broke off (unreachable, timeout, read error): retry later."""


class FileVanished(StorageError):
    """The file does not exist (any more): retrying cannot help."""


class ChecksumMismatch(StorageError):
    """A copy's size or adler32 checksum kept differing from its source's."""


def url_for(path_or_url: str | os.PathLike[str]) -> str:
    """The fsspec URL of a local path (``file:///abs``) or an URL unchanged.

    Raises:
        ValueError: the string names a protocol fsspec does not know.
    """
    text = os.fspath(path_or_url)
    scheme = urlsplit(text).scheme
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, not a protocol
        if scheme not in fsspec.available_protocols():
            raise ValueError(f"{text!r}: unknown storage protocol {scheme!r}")
        return text
    return "file://" + str(Path(text).expanduser().resolve())


def _is_xrootd(url: str) -> bool:
    return urlsplit(url).scheme in ("root", "xroot")


def filesystem(url: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` and the path inside it.

    XRootD filesystems get the request timeout of ``settings.storage.timeout_seconds``.
    """
    full = url_for(url)
    options: dict[str, Any] = {}
    if _is_xrootd(full):
        _configure_xrootd_client()
        options["timeout"] = get_settings().storage.timeout_seconds
    return url_to_fs(full, **options)


_XRD_CONFIGURED = False


def _configure_xrootd_client() -> None:
    """Bound how long the XRootD client keeps trying to connect before a request fails."""
    global _XRD_CONFIGURED
    if _XRD_CONFIGURED:
        return
    from XRootD.client import EnvPutInt

    timeout = get_settings().storage.timeout_seconds
    EnvPutInt("ConnectionWindow", max(1, timeout // 4))
    EnvPutInt("ConnectionRetry", 1)
    EnvPutInt("RequestTimeout", timeout)
    EnvPutInt("StreamErrorWindow", 1)
    _XRD_CONFIGURED = True


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _classify(exc: BaseException, url: str, action: str) -> StorageError:
    """The StorageError for an exception raised by fsspec while doing ``action`` on ``url``."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc).lower()
    if isinstance(exc, FileNotFoundError) or any(m in text for m in _MISSING_MARKERS):
        return FileVanished(
            f"{url}: the file does not exist (it was removed or never arrived) while {action}"
        )
    if isinstance(exc, PermissionError) or any(m in text for m in _REFUSED_MARKERS):
        return StorageError(f"{url}: permission denied while {action}: {exc}")
    detail = str(exc) or type(exc).__name__
    return StorageUnavailable(f"{url}: storage unavailable while {action}: {detail}")


@dataclass(frozen=True)
class _Retry:
    attempts: int
    backoff_s: float

    @classmethod
    def from_settings(cls, attempts: int | None) -> _Retry:
        storage = get_settings().storage
        return cls(max(1, attempts or storage.attempts), storage.backoff_seconds)


def _with_retries(
    operation: Callable[[], T], url: str, action: str, retry: _Retry, on_error: Callable[[], None]
) -> T:
    """Run ``operation``; retry StorageUnavailable and ChecksumMismatch with backoff."""
    for attempt in range(1, retry.attempts + 1):
        try:
            return operation()
        except (StorageUnavailable, ChecksumMismatch) as exc:
            error: StorageError = exc
        except OSError as exc:
            error = _classify(exc, url, action)
            if not isinstance(error, StorageUnavailable):
                raise error from exc
        on_error()
        _announce_failure(error, url, action, attempt, retry.attempts)
        if attempt == retry.attempts:
            raise error
        delay = retry.backoff_s * 2 ** (attempt - 1)
        log.warning("%s (try %d of %d); again in %.1f s", error, attempt, retry.attempts, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def _announce_failure(
    error: StorageError, url: str, action: str, attempt: int, attempts: int
) -> None:
    """Emit ``p3s.storage.failed`` for one failed try (the storage-failure alarm counts them).

    Only when a Prefect API is configured: without one Prefect would start a server of its
    own. Announcing never fails the transfer.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    try:
        from prefect.events import emit_event

        host = urlsplit(url).hostname or "local"
        emit_event(
            event=FAILED_EVENT,
            resource={
                "prefect.resource.id": f"p3s.storage.{host}",
                "prefect.resource.name": host,
                "p3s.storage.host": host,
            },
            payload={
                "url": url,
                "action": action,
                "error": str(error),
                "kind": type(error).__name__,
                "attempt": attempt,
                "attempts": attempts,
            },
        )
    except Exception:  # noqa: BLE001 - an alarm event is best effort
        log.debug("could not emit %s for %s", FAILED_EVENT, url, exc_info=True)


def _invalidate(fs: fsspec.AbstractFileSystem) -> Callable[[], None]:
    def invalidate() -> None:
        try:
            fs.invalidate_cache()
        except Exception:  # noqa: BLE001 - best effort: a broken handle cache is not fatal
            log.debug("could not invalidate the cache of %s", fs, exc_info=True)

    return invalidate


def adler32_of(handle: IO[bytes], *, also: Callable[[bytes], object] | None = None) -> str:
    """The adler32 checksum (8 lowercase hex digits) of what ``handle`` reads to its end; each
    chunk also goes to ``also`` when given (a second hash, a byte count: one read for all)."""
    value = 1
    while chunk := handle.read(CHUNK):
        value = zlib.adler32(chunk, value)
        if also is not None:
            also(chunk)
    return f"{value & 0xFFFFFFFF:08x}"


def adler32_local(path: str | os.PathLike[str]) -> str:
    """The adler32 checksum of a local file, as 8 lowercase hex digits."""
    with open(path, "rb") as handle:
        return adler32_of(handle)


def _adler32_stream(fs: fsspec.AbstractFileSystem, path: str) -> str:
    with fs.open(path, "rb") as handle:
        return adler32_of(handle)


def remote_checksum(url: str) -> str | None:
    """The adler32 checksum the server reports for ``url``, or None if it offers none.

    Local files have no server: None. XRootD answers ``xrdfs query checksum``.
    """
    full = url_for(url)
    if not _is_xrootd(full):
        return None
    fs, path = filesystem(full)
    try:
        algorithm, value = fs.checksum(path)
    except OSError as exc:
        error = _classify(exc, full, "asking for its checksum")
        if isinstance(error, FileVanished | StorageUnavailable):
            raise error from exc
        return None
    if algorithm.lower() != "adler32":
        return None
    return value.lower().zfill(8)


def adler32(path_or_url: str | os.PathLike[str]) -> str:
    """The adler32 checksum of a local file or a stored one (8 hex digits).

    The server's checksum is used when it offers one; otherwise the file is read.
    """
    full = url_for(path_or_url)
    local = local_path(full)
    if local is not None:
        try:
            return adler32_local(local)
        except OSError as exc:
            raise _classify(exc, full, "computing its checksum") from exc
    value = remote_checksum(full)
    if value is not None:
        return value
    fs, path = filesystem(full)
    try:
        return _adler32_stream(fs, path)
    except OSError as exc:
        raise _classify(exc, full, "computing its checksum") from exc


def _source_facts(fs: fsspec.AbstractFileSystem, path: str, url: str) -> tuple[int, str]:
    """Size (bytes) and adler32 of the source: the server's checksum, else one computed here."""
    fs.invalidate_cache(path.rstrip("/").rpartition("/")[0] or "/")  # ask, do not remember
    info = fs.info(path)
    if info.get("type") == "directory":
        raise StorageError(f"{url}: is a folder, not a file")
    size = int(info["size"])
    checksum = remote_checksum(url) if _is_xrootd(url) else None
    if checksum is None:
        checksum = _adler32_stream(fs, path)
    return size, checksum


@dataclass(frozen=True)
class Staged:
    """A local copy made by :func:`stage_in_checked`, with the facts it was checked against."""

    path: Path
    #: Bytes, equal in the source and the copy.
    size: int
    #: adler32 (8 hex digits), equal in the source and the copy.
    adler32: str


def stage_in(
    url: str | os.PathLike[str], scratch_dir: str | os.PathLike[str], *, attempts: int | None = None
) -> Path:
    """Copy ``url`` into ``scratch_dir`` and check its size and adler32 checksum.

    The local copy's path; :func:`stage_in_checked` also returns its size and checksum.
    """
    return stage_in_checked(url, scratch_dir, attempts=attempts).path


def stage_in_checked(
    url: str | os.PathLike[str], scratch_dir: str | os.PathLike[str], *, attempts: int | None = None
) -> Staged:
    """Copy ``url`` into ``scratch_dir`` and check its size and adler32 checksum.

    Args:
        url: the stored file (path, ``file://`` or ``root://`` URL).
        scratch_dir: local folder (created if needed); the copy keeps the file's name.
        attempts: tries for transient failures (None: ``settings.storage.attempts``).

    Returns:
        The local copy, its size and adler32 (computed once, here: callers reuse them).

    Raises:
        FileVanished: the file does not exist (no retry).
        StorageUnavailable: the storage kept failing for every try.
        ChecksumMismatch: every copy differed from the source in size or checksum.
    """
    full = url_for(url)
    fs, path = filesystem(full)
    name = Path(path).name
    scratch = Path(scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    local = scratch / name
    partial = scratch / f".{name}.part-{uuid.uuid4().hex[:8]}"

    def copy() -> Staged:
        size, expected = _source_facts(fs, path, full)
        try:
            if _is_xrootd(full):  # fsspec-xrootd reads 256 kB per request by default
                fs.get_file(path, str(partial), chunk_size=CHUNK)
            else:
                fs.get_file(path, str(partial))
            got_size = partial.stat().st_size
            got = adler32_local(partial)
            if got_size != size or got != expected:
                raise ChecksumMismatch(
                    f"{full}: the copy has {got_size} bytes, adler32 {got}; the source has "
                    f"{size} bytes, adler32 {expected}"
                )
            partial.replace(local)
        finally:
            partial.unlink(missing_ok=True)
            fs.invalidate_cache(path)  # XRootD: close the cached read handle of the source
        log.info("staged in %s (%d bytes, adler32 %s) to %s", full, size, expected, local)
        return Staged(local, size, expected)

    return _with_retries(
        copy, full, "staging it in", _Retry.from_settings(attempts), _invalidate(fs)
    )


def stage_out(
    local: str | os.PathLike[str],
    dest_url: str | os.PathLike[str],
    *,
    attempts: int | None = None,
    adler32: str | None = None,
) -> str:
    """Copy a local file to ``dest_url`` atomically and return the destination URL.

    The file is written as ``.NAME.tmp-XXXXXXXX`` beside the destination, its size and adler32
    are checked against the local file, then it is renamed to its final name: readers never
    see a half-written file. Parent folders are created. An existing destination is replaced.

    Args:
        local: the local file.
        dest_url: the final URL (path, ``file://`` or ``root://``), the file's own name included.
        attempts: tries for transient failures (None: ``settings.storage.attempts``).
        adler32: the checksum the copy must have, when the caller knows it (computed with the
            file's sha256, or recorded when the file was first written): the local file is then
            not read for it. None: read here.

    Raises:
        FileNotFoundError: ``local`` does not exist.
        StorageUnavailable, ChecksumMismatch: as for :func:`stage_in`.
    """
    source = Path(local)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such local file to stage out")
    full = url_for(dest_url)
    fs, path = filesystem(full)
    parent, _, name = path.rstrip("/").rpartition("/")
    temp = _join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    size, expected = source.stat().st_size, adler32 or adler32_local(source)

    def copy() -> str:
        try:
            fs.makedirs(parent, exist_ok=True)
            _upload(fs, source, temp)
            fs.invalidate_cache(parent)
            got_size = int(fs.info(temp)["size"])
            got = remote_checksum(_unstrip(fs, temp)) if _is_xrootd(full) else None
            if got is None:
                got = _adler32_stream(fs, temp)
            if got_size != size or got != expected:
                raise ChecksumMismatch(
                    f"{full}: the written copy has {got_size} bytes, adler32 {got}; "
                    f"{source} has {size} bytes, adler32 {expected}"
                )
            fs.mv(temp, path)  # replaces an older copy in one step (rename, XRootD mv)
        except BaseException:
            _remove_quietly(fs, temp)
            raise
        log.info("staged out %s (%d bytes, adler32 %s) to %s", source, size, expected, full)
        return full

    return _with_retries(
        copy, full, "staging out to it", _Retry.from_settings(attempts), _invalidate(fs)
    )


def _upload(fs: fsspec.AbstractFileSystem, source: Path, path: str) -> None:
    """Write ``source`` to ``path``: a kernel copy locally, else in chunks (fsspec-xrootd has
    no ``put_file``)."""
    if isinstance(fs, LocalFileSystem):
        shutil.copyfile(source, path)
        return
    with open(source, "rb") as reader, fs.open(path, "wb") as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm_file(path)
    except Exception:  # noqa: BLE001 - cleanup after a failure must not hide that failure
        log.debug("could not remove %s", path, exc_info=True)


def local_path(url: str | os.PathLike[str]) -> Path | None:
    """The local path of a ``file://`` URL or plain path; None for a remote one."""
    full = url_for(url)
    return Path(full[len("file://") :]) if full.startswith("file://") else None


def exists(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` names an existing file or folder."""
    full = url_for(url)
    fs, path = filesystem(full)
    try:
        return bool(fs.exists(path))
    except OSError as exc:
        raise _classify(exc, full, "checking that it exists") from exc


def listdir(url: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of a folder: dicts with ``url``, ``name``, ``size`` (bytes) and ``type``.

    Hidden temporaries of :func:`stage_out` (names starting with ``.``) are left out.
    """
    full = url_for(url)
    fs, path = filesystem(full)
    try:
        entries = fs.ls(path, detail=True)
    except OSError as exc:
        raise _classify(exc, full, "listing it") from exc
    finally:
        fs.invalidate_cache(path)  # a later stat must ask the server, not this listing
    listing = []
    for entry in entries:
        name = entry["name"].rstrip("/").rpartition("/")[2]
        if name.startswith("."):
            continue
        listing.append(
            {
                "url": _join(full, name),
                "name": name,
                "size": int(entry.get("size") or 0),
                "type": entry.get("type", "file"),
            }
        )
    return sorted(listing, key=lambda item: item["name"])
