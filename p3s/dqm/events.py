"""The ``p3s.dqm.quality`` event: a run's flag in one area that became bad (or medium).

One event per run and area whose flag changed to a worse quality than before (a new run, a
recheck after a change of a limit or of the reference run). Its resource id names the run
and area (``p3s.dqm.quality.run000102.apa-1``), so the alarm ``p3s-dqm-quality-bad``
(``automations/dqm-quality-bad.yaml``) notifies once per run and APA/TPC.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from p3s.dqm.catalog import QUALITIES, FlagChange

__all__ = ["QUALITY_EVENT", "emit_quality", "quality_events"]

QUALITY_EVENT = "p3s.dqm.quality"


def quality_events(changes: Iterable[FlagChange]) -> list[dict[str, Any]]:
    """The events (``event``, ``resource``, ``payload``) for flags that got worse.

    ``run`` (the whole run) has no event of its own: its areas carry the alarm.
    """
    events = []
    for change in changes:
        before = QUALITIES.index(change.before) if change.before in QUALITIES else 0
        if change.area == "run" or QUALITIES.index(change.quality) <= before:
            continue
        area = change.area.lower().replace(" ", "-")
        events.append(
            {
                "event": QUALITY_EVENT,
                "resource": {
                    "prefect.resource.id": f"p3s.dqm.quality.run{change.run:06d}.{area}",
                    "prefect.resource.name": f"run {change.run} {change.area}",
                    "p3s.run": str(change.run),
                    "p3s.area": change.area,
                    "p3s.quality": change.quality,
                },
                "payload": {
                    "run": change.run,
                    "area": change.area,
                    "quality": change.quality,
                    "before": change.before,
                    "reasons": list(change.reasons),
                    "reason": change.reasons[0] if change.reasons else "",
                },
            }
        )
    return events


def emit_quality(changes: Iterable[FlagChange]) -> int:
    """Emit :func:`quality_events` to the Prefect server; the number emitted."""
    from prefect.events import emit_event

    events = quality_events(changes)
    for event in events:
        emit_event(**event)
    return len(events)
