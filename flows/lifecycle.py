"""The ``file-lifecycle`` flow: after each DQM flow, move its file on when all have reported.

Triggered by every ``p3s.dqm.finished`` event (``prefect.yaml``); the event's file name,
payload, outcome and reason become the parameters. The file goes to used/ once every DQM flow
of its data type has reported, or to quarantine/ with ``NAME.reason`` if any reported it
corrupt (and a ``p3s.file.quarantined`` event says so, for the dashboard's service log).
Safe to run several times per file.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.events import emit_event

from p3s.lifecycle import quarantined_event, settle
from p3s.settings import get_settings


@flow(name="file-lifecycle", flow_run_name="lifecycle:{file_name}")
def file_lifecycle(
    file_name: str, payload: str | None = None, outcome: str | None = None, reason: str = ""
) -> str:
    """Record what ``payload`` reported for ``file_name`` and settle the file when it can."""
    result = settle(get_settings(), file_name, payload=payload, outcome=outcome, reason=reason)
    get_run_logger().info(str(result))
    if result.action == "quarantine":  # only the run that moved it
        emit_event(**quarantined_event(file_name, result.reason, result.outcomes))
    return result.action
