"""Free TCP ports for the services that tests, benchmarks and a local set-up start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Ports are drawn below the kernel's ephemeral range: a port drawn inside it may be given to
#: an outgoing connection (of the many that a test session makes) before the service binds it.
_LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now, outside the ephemeral range."""
    top = max(_ephemeral_start() - 1, _LOWEST + 1000)
    for _ in range(200):
        port = random.randint(_LOWEST, top)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on {host} between {_LOWEST} and {top}")
