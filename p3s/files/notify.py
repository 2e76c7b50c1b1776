"""Wake the inbox watch the moment a local file is complete (Linux inotify).

A scan every ``poll_seconds`` plus ``settle_seconds`` of size stability is what any storage
allows, and it costs a second or more of every file's latency. On a local inbox the kernel says
when a file is complete: its writer closed it after writing (``IN_CLOSE_WRITE``) or it was
renamed into the folder in one step (``IN_MOVED_TO``, what transfer tools and ``p3s demo`` do).
:class:`InboxNotifier` collects those names; the scanner takes them as complete at once, and
the watch wakes on them instead of sleeping out its poll.

Files written from another host (NFS, a FUSE mount of EOS) raise no inotify event here: they
are found by the regular scan and settle as before. Remote inboxes (``root://``) have no
notifier at all.
"""

from __future__ import annotations

import contextlib
import logging
import os

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

_MASK = flags.CLOSE_WRITE | flags.MOVED_TO | flags.Q_OVERFLOW


class InboxNotifier:
    """Names of files completed in one local folder since the last :meth:`take`."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._inotify = INotify()
        self._inotify.add_watch(os.fspath(folder), _MASK)
        self._closed: set[str] = set()

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> InboxNotifier | None:
        """A notifier for ``folder``, or None where inotify is unavailable (not Linux, the
        per-user watch limit reached): the watch then polls, as on remote storage."""
        try:
            return cls(folder)
        except OSError as exc:
            log.warning("inbox: no inotify on %s (%s); polling only", folder, exc)
            return None

    def wait(self, timeout_s: float) -> None:
        """Block until a file completes or ``timeout_s`` passes."""
        events = self._inotify.read(timeout=max(0, int(timeout_s * 1000)))
        for event in events:
            if event.mask & flags.Q_OVERFLOW:
                # Names were missed; the scan still finds those files, and they settle.
                log.warning("inbox: inotify queue overflowed; missed files settle as polled")
            elif event.name:
                self._closed.add(event.name)

    def take(self) -> set[str]:
        """The names completed since the last call (without blocking)."""
        self.wait(0)
        closed, self._closed = self._closed, set()
        return closed

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._inotify.close()
