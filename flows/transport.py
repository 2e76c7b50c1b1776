"""The ``output-transport`` flow: replicate one finished DQM output set, checksums verified.

Triggered by ``p3s.dqm.finished`` events whose outcome is ``completed`` (``prefect.yaml``);
the event's ``p3s.outbox.url`` is the products folder. Storage failures are retried.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from p3s.settings import get_settings
from p3s.transport import replicate


@flow(
    name="output-transport",
    flow_run_name="transport:{outbox_url}",
    retries=2,
    retry_delay_seconds=10,
)
def output_transport(outbox_url: str) -> str:
    """Copy the products folder ``outbox_url`` to the replica location; returns its URL."""
    replica = replicate(get_settings(), outbox_url)
    verb = "replicated" if replica.copied else "already replicated"
    get_run_logger().info(
        "%s %d files (adler32 checked) from %s to %s",
        verb,
        len(replica.files),
        replica.source,
        replica.dest,
    )
    return replica.dest
