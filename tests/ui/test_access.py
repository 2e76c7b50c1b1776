"""A protected Prefect server: the content app asks for the server's own credentials (HTTP
Basic), refuses requests without them, and talks to the API with the shifter's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from p3s.ui_extensions.app import create_app

from p3s.pilots.status import PilotCounts, write_status
from p3s.system.settings import Settings
from tests.ui.conftest import AUTH, RUN, Site

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]


def _protected_settings(site: Site, home: Path) -> Settings:
    """The app's settings against the protected server (the stack's data and catalog)."""
    settings = site.stack.settings.model_copy(deep=True)
    settings.home = home
    settings.server.api_url = site.protected_api
    settings.data_root = site.stack.settings.data
    settings.catalog_url = site.stack.settings.catalog
    return settings


async def _get(settings: Settings, paths: list[str], auth: tuple[str, str] | None) -> list:
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://app", auth=auth) as c:
        return [await c.get(path, timeout=60) for path in paths]


def test_a_protected_app_refuses_requests_without_the_servers_credentials(
    site: Site, tmp_path: Path
) -> None:
    settings = _protected_settings(site, tmp_path)
    # The protected server itself refuses the anonymous client.
    assert httpx.get(f"{site.protected_api}/admin/version").status_code == 401
    paths = ["/dashboard", f"/purity?run={RUN}", "/api/summary.json", "/runs", "/jobs"]
    paths += [f"/products/{RUN}/2/beam/pid.png", "/plots/noisy-trend.png"]
    for auth in (None, ("shifter", "wrong"), ("intruder", AUTH.split(":")[1])):
        for answer in asyncio.run(_get(settings, paths, auth)):
            assert answer.status_code == 401, (auth, answer.request.url)
            assert answer.headers["www-authenticate"].startswith('Basic realm="p3s"')
            assert "ok" not in answer.text.lower()
    # The style sheet holds no data: anyone gets it.
    (css,) = asyncio.run(_get(settings, ["/static/p3s.css"], None))
    assert css.status_code == 200 and "font-family" in css.text


def test_with_the_credentials_the_app_shows_the_same_data_through_the_protected_api(
    site: Site, tmp_path: Path
) -> None:
    settings = _protected_settings(site, tmp_path)
    write_status(  # what a pilot worker on this host would have published
        settings,
        PilotCounts(
            pool=settings.pilots.pool_name, cluster="local", total=2, idle=1, running=1, lost=1
        ),
    )
    at = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    user, password = AUTH.split(":", 1)
    protected, purity = asyncio.run(
        _get(settings, [f"/api/summary.json?at={at}", f"/purity?run={RUN}"], (user, password))
    )
    assert protected.status_code == 200 and purity.status_code == 200
    assert f"<td>{RUN}</td>" in purity.text or f">{RUN}</a>" in purity.text
    open_data = httpx.get(f"{site.url}/api/summary.json", params={"at": at}, timeout=60).json()
    data = protected.json()
    assert data["api_url"] == site.protected_api
    # dqm-purity runs are all final (lifecycle and transport runs may still move)
    assert data["jobs"]["flow dqm-purity"] == open_data["jobs"]["flow dqm-purity"]
    assert data["pilots"]["total"] == 2 and data["pilots"]["lost"] == 1
    pilots = next(row for row in data["status"] if row["name"] == "pilots")
    assert pilots["actual"] == "2" and pilots["verdict"] == "OK"
