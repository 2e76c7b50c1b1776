"""Fixtures of the DQM tests: the XRootD server (the EOS stand-in) besides the root stack."""

from tests.xrootd_server import xrootd_server  # noqa: F401 - a fixture, used by name
