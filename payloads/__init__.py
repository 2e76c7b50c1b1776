"""The DQM payloads of protoDUNE-SP: plain numpy analyses of raw np04 files (see README.md)."""

PAYLOADS = ("tpc_monitor", "purity", "evdisplay", "beam")
"""The one list of the DQM payloads, in the order a shifter reads them: each is a module
``p3s.payloads.NAME`` with ``analyse``. The DQM deployments, content pages, checks and the demo
follow it."""
