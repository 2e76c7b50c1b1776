"""The XRootD server fixture for the storage tests."""

from tests.xrootd_server import xrootd_server  # noqa: F401 - a fixture, used by name
