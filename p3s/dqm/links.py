"""Where each content page lives: the URLs that artifacts, templates and tests build.

One place spells the paths, so an artifact of a DQM run and the app's routes cannot disagree.
"""

from __future__ import annotations

from p3s.payloads import PAYLOADS
from p3s.system.settings import Settings

#: The content page of each DQM payload, under the app's base URL: named for the payload,
#: but for the ones below.
_SHORT_PAGES = {"tpc_monitor": "tpc"}
PAYLOAD_PAGES = {payload: _SHORT_PAGES.get(payload, payload) for payload in PAYLOADS}


def page_path(payload: str, run: int, subrun: int) -> str:
    """The path of one payload's page for one raw file (purity: the run's rows)."""
    if payload not in PAYLOAD_PAGES:
        raise ValueError(f"no content page for payload {payload!r}; known: {sorted(PAYLOAD_PAGES)}")
    if payload == "purity":
        return f"/purity?run={int(run)}"
    return f"/{PAYLOAD_PAGES[payload]}/{int(run)}/{int(subrun)}"


def page_url(settings: Settings, payload: str, run: int, subrun: int) -> str:
    """The absolute URL of :func:`page_path` under ``settings.ui_url``."""
    return settings.ui_url + page_path(payload, run, subrun)


def product_path(run: int, subrun: int, payload: str, name: str) -> str:
    """The path that serves one stored product (a PNG, CSV, JSON or ROOT file)."""
    return f"/products/{int(run)}/{int(subrun)}/{payload}/{name}"


def prefect_ui_url(settings: Settings) -> str:
    """The Prefect UI beside the API (``.../api`` stripped)."""
    return settings.api_url.rstrip("/").removesuffix("/api")


def flow_run_ui_url(settings: Settings, flow_run_id: str) -> str:
    """A flow run's page in the Prefect UI."""
    return f"{prefect_ui_url(settings)}/runs/flow-run/{flow_run_id}"
