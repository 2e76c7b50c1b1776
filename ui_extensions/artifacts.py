"""The artifact that links a DQM run to its content page (``tasks/publish.py`` creates it)."""

from __future__ import annotations

from p3s.settings import get_settings

from .links import page_url


def artifact_key(payload: str, run: int, subrun: int) -> str:
    """``<payload>-page-runRRRRRR-SSSS`` (lowercase letters, digits and dashes)."""
    return f"{payload.replace('_', '-')}-page-run{run:06d}-{subrun:04d}".lower()


def publish_page_link(payload: str, run: int, subrun: int) -> str:
    """Create a link artifact on the current flow run pointing at its content page.

    Returns the URL (``settings.ui.base_url`` or the app's own address).
    """
    from prefect.artifacts import create_link_artifact

    url = page_url(get_settings(), payload, run, subrun)
    create_link_artifact(
        url,
        link_text=f"{payload} run {run} subrun {subrun}: shifters' page",
        key=artifact_key(payload, run, subrun),
        description=f"Content page of DQM {payload}, run {run} subrun {subrun}",
    )
    return url
