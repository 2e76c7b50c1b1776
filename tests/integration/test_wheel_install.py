"""A non-editable install (a wheel, in a fresh virtual environment) finds its packaged payloads.

The wheel is built from this tree and installed into a new venv without pip's dependencies:
those come from the test environment's site-packages through a path entry, which does not run
that site's ``.pth`` files, so the editable install of this checkout is not on the path and
every ``p3s`` module is the wheel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os
import p3s.payloads
from p3s.payloads.runner import PAYLOADS
from p3s.jobs.policy import resolve_command
from p3s.system.settings import PACKAGED_PAYLOADS, Settings
settings = Settings()
runner = PACKAGED_PAYLOADS / "bin" / "p3s-dqm"
print(json.dumps({
    "package": p3s.payloads.__file__,
    "packaged": str(PACKAGED_PAYLOADS),
    "roots": [str(r) for r in settings.payload_roots],
    "runner_executable": os.access(runner, os.X_OK),
    "vetted": list(resolve_command(str(runner), {}, roots=settings.payload_roots).argv),
    "payloads": list(PAYLOADS),
}))
"""


def test_a_wheel_install_finds_its_packaged_payloads(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = wheels.glob("p3s-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + [str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P3S_", "PYTHON"))}
    env["P3S_HOME"] = str(tmp_path / "home")
    found = subprocess.run(
        [str(python), "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    probe = json.loads(found.stdout)
    installed = site.resolve() / "p3s" / "payloads"
    assert Path(probe["package"]).resolve().parent == installed  # the wheel's, not this tree's
    assert Path(probe["packaged"]) == installed
    assert probe["roots"] == [str(installed)]
    assert probe["runner_executable"], "the packaged DQM runner lost its executable bit"
    assert probe["vetted"] == [str(installed / "bin" / "p3s-dqm")]  # it may run as a payload
    assert probe["payloads"] == ["tpc_monitor", "purity", "evdisplay", "beam"]
    assert (installed / "workflows").is_dir() and any((installed / "workflows").glob("*.graphml"))
