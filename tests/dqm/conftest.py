"""Fixtures of the DQM tests: the XRootD server (the EOS stand-in) besides the root stack."""

from tests.xrootd_server import xrootd_server  # noqa: F401 - a fixture, used by name


def drain_prefect_clients() -> None:
    """Send the events and logs of flows run in this process while their server is up.

    Otherwise Prefect's background senders keep them until interpreter exit, when the test
    server is gone and they would retry against nothing.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=15, at_exit=False)
    APILogWorker.drain_all(timeout=15, at_exit=False)
