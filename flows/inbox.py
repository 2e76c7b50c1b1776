"""The ``inbox-scan`` flow: one pass of the inbox scan (the same logic as ``p3s inbox watch``).

Its deployment ``inbox-scan/scheduled`` runs it on a schedule; the schedule is paused by
default because ``p3s up`` starts the ``p3s inbox watch`` process, which scans every 0.5 s.
Resume the schedule where no watcher runs (``prefect deployment schedule resume``).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from p3s.files.inbox import scan_once
from p3s.system.settings import get_settings


@flow(name="inbox-scan", log_prints=False)
def inbox_scan() -> dict[str, list[str]]:
    """Claim the complete files of the inbox and announce each with ``p3s.file.arrived``."""
    logger = get_run_logger()
    report = scan_once(get_settings())
    for line in report.lines():
        logger.info(line)
    if report.not_announced:
        logger.warning("the Prefect API did not take %d events", len(report.not_announced))
    return {"claimed": report.claimed, "announced": report.announced, "waiting": report.waiting}
