"""The file's life cycle as a task of each DQM flow run: record its outcome, move the file on.

Runs at the end of every DQM flow run (completed, failed or corrupt): it records what this
payload reported for the raw file and moves the file from claimed/ to used/ once every payload
of its data type has reported, or to quarantine/ (with ``NAME.reason``) when any reported it
corrupt; only the run that moved a file to quarantine/ emits ``p3s.file.quarantined``.
:func:`p3s.files.lifecycle.settle` is idempotent and safe when the runs of one file finish at once.
Storage failures are retried; if every try fails, the inbox watcher's sweep settles the file
later from the DQM catalog, so the DQM run's own outcome stands.
"""

from __future__ import annotations

from functools import partial

from p3s.tasks.retries import retry_on, storage_retries, storage_task_options
from prefect import get_run_logger, task
from prefect.events import emit_event

from p3s.dqm.catalog import catalog_outcomes
from p3s.files.lifecycle import Settled, quarantined_event, settle
from p3s.files.names import UnsafeName
from p3s.files.storage import FileVanished, StorageError
from p3s.system.settings import get_settings

#: Storage and OS errors are worth another try; a refused name or unknown data type is not.
_retry = retry_on(StorageError, OSError, unless=(FileVanished, UnsafeName, ValueError))


@task(name="file-lifecycle", task_run_name="lifecycle:{file_name}", **storage_task_options(_retry))
def _settle(
    file_name: str, payload: str, outcome: str, reason: str, datatype: str | None
) -> Settled:
    settings = get_settings()
    result = settle(
        settings,
        file_name,
        payload=payload,
        outcome=outcome,
        reason=reason,
        datatype=datatype,
        extra_outcomes=partial(catalog_outcomes, settings),
    )
    get_run_logger().info(str(result))
    if result.action == "quarantine":  # only the run that moved it
        emit_event(**quarantined_event(file_name, result.reason, result.outcomes))
    return result


def settle_file(
    file_name: str, payload: str, outcome: str, reason: str, datatype: str | None = None
) -> Settled | None:
    """Record ``payload``'s ``outcome`` for ``file_name`` and settle the file when it can.

    Returns what was done, or None when every try failed (logged; the sweep catches up).
    """
    settle_with_retries = _settle.with_options(**storage_retries())
    state = settle_with_retries(file_name, payload, outcome, reason, datatype, return_state=True)
    if state.is_completed():
        return state.result()
    get_run_logger().error(
        "the life cycle of %s could not be settled now (%s); the inbox watcher's sweep "
        "settles it from the DQM catalog",
        file_name,
        state.message,
    )
    return None
