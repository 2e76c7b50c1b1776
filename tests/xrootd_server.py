"""A real XRootD server (Debian's xrootd-server) on loopback for tests: the EOS stand-in.

Use the session fixture from a conftest.py::

    pytest_plugins = ["tests.xrootd_server"]

    def test_x(xrootd_server):
        url = xrootd_server.url("inbox/a.h5")   # root://127.0.0.1:PORT//store/inbox/a.h5
        local = xrootd_server.local("inbox/a.h5")  # the same file in the exported folder

The server runs as user ``xrootd`` (xrootd refuses root), exports ``/store`` under a temporary
``oss.localroot`` and answers adler32 checksum queries. ``stop()``, ``start()`` and
``restart()`` (same port) let fault tests break it on purpose.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXPORT = "/store"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class XRootDServer:
    """One xrootd process on 127.0.0.1:port exporting ``/store`` from ``base/root/store``."""

    def __init__(self, base: Path, port: int | None = None, user: str = "xrootd") -> None:
        if shutil.which("xrootd") is None:
            raise RuntimeError(
                "xrootd is not installed: run scripts/install.sh (Debian xrootd-server)"
            )
        self.base = base
        self.port = port or _free_port()
        self.user = user
        self.localroot = base / "root"
        self.export = self.localroot / EXPORT.lstrip("/")
        self.config = base / "xrd.cfg"
        self.log = base / "log" / "xrd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._prepare()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def root_url(self) -> str:
        """The URL of the exported folder, e.g. ``root://127.0.0.1:1094//store``."""
        return f"root://{self.host}/{EXPORT}"

    def url(self, relative: str = "") -> str:
        """The root:// URL of ``relative`` inside the export."""
        return self.root_url + ("/" + relative.lstrip("/") if relative else "")

    def local(self, relative: str = "") -> Path:
        """The local path of ``relative`` inside the exported folder."""
        return self.export / relative.lstrip("/") if relative else self.export

    def chown(self, path: Path) -> None:
        """Give ``path`` (and what is below it) to the server's user, so it may change it."""
        entry = pwd.getpwnam(self.user)
        for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.chown(item, entry.pw_uid, entry.pw_gid)

    def _prepare(self) -> None:
        self.export.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"all.export {EXPORT}\n"
            f"oss.localroot {self.localroot}\n"
            f"xrd.port {self.port}\n"
            "xrd.network nodnr\n"
            "xrootd.chksum adler32\n"
            f"all.adminpath {self.base / 'admin'}\n"
            f"all.pidpath {self.base / 'admin'}\n"
        )
        if os.geteuid() == 0:
            (self.base / "admin").mkdir(exist_ok=True)
            for path in (
                self.base,
                self.localroot,
                self.export,
                self.log.parent,
                self.base / "admin",
            ):
                self.chown(path) if path != self.base else os.chmod(path, 0o755)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        command = ["xrootd", "-c", str(self.config), "-l", str(self.log)]
        if os.geteuid() == 0:
            command[1:1] = ["-R", self.user]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while not self._listening():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"xrootd exited with code {self.process.returncode}; see {self.log}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"xrootd did not listen on {self.host} in {timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until its port is closed."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)  # a server frozen by a fault test must hear it
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        deadline = time.monotonic() + 5
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server, stay down ``down_s`` seconds, start it again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture(scope="session")
def xrootd_server() -> Iterator[XRootDServer]:
    """A running XRootD server on loopback, stopped and removed at the end of the session.

    Its folder is made outside pytest's temporary folders, which are private to root and
    which the ``xrootd`` user could not enter.
    """
    base = Path(tempfile.mkdtemp(prefix="p3s-xrootd-"))
    base.chmod(0o755)
    server = XRootDServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
