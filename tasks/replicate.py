"""The output transport as a task of each completed DQM flow run: replicate its products.

The products folder the run staged out (``OUTBOX/runRRRRRR/SSSS/PAYLOAD``) is copied to the
same place under the replica root with adler32 verification and a manifest
(:func:`p3s.files.transport.replicate`); storage failures and a differing checksum are retried with
backoff. A folder already replicated with the same manifest is left alone.
"""

from __future__ import annotations

from p3s.tasks.retries import retry_on, storage_retries, storage_task_options
from prefect import get_run_logger, task

from p3s.files.storage import ChecksumMismatch, StorageUnavailable
from p3s.files.transport import Replica, TransportError, replicate
from p3s.system.settings import get_settings

#: A replica that differed is copied again; so is a storage that did not answer.
_retry = retry_on(StorageUnavailable, ChecksumMismatch, TransportError, OSError)


@task(
    name="output-transport", task_run_name="transport:{outbox_url}", **storage_task_options(_retry)
)
def _replicate(outbox_url: str, known: dict[str, str] | None) -> Replica:
    replica = replicate(get_settings(), outbox_url, known)
    verb = "replicated" if replica.copied else "already replicated"
    get_run_logger().info(
        "%s %d files (adler32 checked) from %s to %s",
        verb,
        len(replica.files),
        replica.source,
        replica.dest,
    )
    return replica


def replicate_outputs(outbox_url: str, known: dict[str, str] | None = None) -> Replica:
    """Copy the products folder ``outbox_url`` to the replica location; ``known``: the adler32
    of each product by name, as the run's stage-out recorded it (the copies are checked
    against it without reading the products again).

    Raises what the last try raised (:class:`~p3s.files.transport.TransportError`, a storage error).
    """
    return _replicate.with_options(**storage_retries())(outbox_url, known)
