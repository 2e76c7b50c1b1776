"""The p3s priorities and the work queues that serve them.

p3s served jobs from priority 10 down to 0. Prefect serves the work queue with the lowest
``priority`` number first, so p3s priority ``p`` goes to queue ``priority-p`` whose Prefect
priority is ``11 - p``; the pool's ``default`` queue (used by ``prefect deployment run``
without ``--work-queue``) sits with p3s priority 0.
"""

from __future__ import annotations

P3S_PRIORITIES = range(10, -1, -1)


def queue_for_priority(priority: int) -> str:
    """Name of the work queue that serves p3s priority ``priority`` (0..10)."""
    if not 0 <= priority <= 10:
        raise ValueError(f"p3s priority must be within 0..10, got {priority}")
    return f"priority-{priority}"


def prefect_priority(priority: int) -> int:
    """Prefect's queue priority (1 is served first) for a p3s priority (10 is served first)."""
    return 11 - priority
