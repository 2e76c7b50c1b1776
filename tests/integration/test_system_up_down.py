"""`p3s up` brings the embedded system up idempotently; `p3s down` stops exactly what it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration
P3S = str(Path(sys.executable).parent / "p3s")


def p3s(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([P3S, *args], env=env, capture_output=True, text=True, timeout=300)


def recorded_pids(home: Path) -> dict[str, int]:
    """The services' pid files (the run folder also holds the pilot counts)."""
    found = {p.stem: json.loads(p.read_text()) for p in (home / "run").glob("*.json")}
    return {name: record["pid"] for name, record in found.items() if "pid" in record}


def test_up_is_idempotent_and_down_stops_exactly_its_processes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "P3S_HOME": str(tmp_path / "home"),
        "P3S_SERVER__PORT": str(free_port()),
        "P3S_UI__PORT": str(free_port()),
    }
    for key in [k for k in env if k.startswith("PREFECT_")]:
        del env[key]  # the CLI must find its server from the p3s settings alone
    bystander = subprocess.Popen(["sleep", "300"])  # a process p3s did not start
    try:
        first = p3s("up", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Prefect server started" in first.stdout and "pilot worker started" in first.stdout
        pids = recorded_pids(tmp_path / "home")
        assert set(pids) == {"prefect-server", "pilots-p3s", "inbox-watch", "content-app"}
        assert all(psutil.pid_exists(pid) for pid in pids.values())
        # The pilots (Dask workers and their fork servers) are children of the pilot worker.
        pilots = psutil.Process(pids["pilots-p3s"]).children(recursive=True)

        again = p3s("up", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running" in again.stdout
        assert recorded_pids(tmp_path / "home") == pids  # nothing new was started

        assert p3s("status", env=env).returncode == 0
        down = p3s("down", env=env)
        assert down.returncode == 0
        for pid in [*pids.values(), *(p.pid for p in pilots)]:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert bystander.poll() is None  # untouched
        assert p3s("status", env=env).returncode == 1  # the API no longer answers
        assert "not running" in p3s("down", env=env).stdout
    finally:
        bystander.kill()
        p3s("down", env=env)
