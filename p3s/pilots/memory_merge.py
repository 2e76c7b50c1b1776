"""Identical memory pages of a pilot's flow-run children, merged by the kernel (KSM).

Every flow-run child is forked from the pilot's warm fork server and shares its pages until it
writes to them. Running a flow writes reference counts all over the preloaded Prefect and p3s
objects, so each child soon holds its own copy of about 30 MiB of pages (measured: 36-42 MiB
of its own per waiting child, 2 MiB of it its own Python allocations), and hundreds of runs
waiting on their payloads fill a host. Most of those copies end up byte for byte the same as
the fork server's and as each other's: the kernel's same-page merging folds them back into one
(measured: 20 forked children of the fork server's imports, 21 MiB each, 0.9 MiB each once
merged).

The fork server marks itself mergeable (``PR_SET_MEMORY_MERGE``, Linux 6.4 and newer; its
children inherit the mark). That costs nothing unless the host runs the kernel's merging
thread: ``echo 1 > /sys/kernel/mm/ksm/run`` (root; see the README's pilots section), which an
operator turns on where many runs wait at once on one host.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

#: prctl option of Linux 6.4+: make every anonymous mapping of the process, and of its future
#: children, mergeable.
_PR_SET_MEMORY_MERGE = 67
KSM = Path("/sys/kernel/mm/ksm")


def mark_mergeable() -> bool:
    """Mark this process (and the children it forks from now on) for same-page merging.

    False where the kernel has no such option (older than 6.4, or not Linux).
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return False
    return libc.prctl(_PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0


def is_marked(pid: int) -> bool:
    """Whether process ``pid`` has every page mergeable (``ksm_merge_any`` of its ksm_stat)."""
    try:
        stat = Path(f"/proc/{pid}/ksm_stat").read_text()
    except OSError:
        return False
    return "ksm_merge_any: yes" in stat


def host_merging() -> bool:
    """Whether this host's kernel runs its same-page merging thread."""
    try:
        return (KSM / "run").read_text().strip() == "1"
    except OSError:
        return False
