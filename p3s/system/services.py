"""Background processes that ``p3s up`` starts and ``p3s down`` stops: exactly those, no others.

Each managed process has a record ``RUN_DIR/NAME.json`` with its pid and start time; a pid
that the kernel has since given to another process never matches, so ``stop`` cannot kill a
stranger. Output goes to ``RUN_DIR/NAME.log``.

The start time compared is the kernel's, in clock ticks since boot (``/proc/PID/stat``), not
psutil's ``create_time``: that one adds the boot time as the wall clock sees it, which moves when
the clock is stepped (a VM resumed, NTP), and a live server then looked like a stale record.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


def start_ticks(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (field 22 of ``/proc/PID/stat``).

    Unlike a wall-clock time, it cannot change while the process lives.
    """
    with open(f"/proc/{pid}/stat", "rb") as stat:
        # The command name (field 2) may hold spaces and parentheses: count after its last ')'.
        fields = stat.read().rpartition(b")")[2].split()
    return int(fields[19])


@dataclass(frozen=True)
class ManagedProcess:
    """One named background service of this p3s home."""

    name: str
    run_dir: Path
    #: The signal that asks the service to stop (Prefect workers ignore SIGTERM at first).
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def record(self) -> Path:
        return self.run_dir / f"{self.name}.json"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None (stale records are removed)."""
        try:
            info = json.loads(self.record.read_text())
            proc = psutil.Process(info["pid"])
            if "start_ticks" in info:
                same = start_ticks(proc.pid) == info["start_ticks"]
            else:  # a record written by an older p3s
                same = abs(proc.create_time() - info["create_time"]) < 0.01
            if same and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        self.record.unlink(missing_ok=True)
        return None

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> tuple[psutil.Process, bool]:
        """Start the service unless it runs already; returns the process and whether it is new."""
        existing = self.process()
        if existing is not None:
            return existing, False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the starting terminal must not reach it
            )
        proc = psutil.Process(popen.pid)
        record = {
            "pid": proc.pid,
            "start_ticks": start_ticks(proc.pid),
            "create_time": proc.create_time(),  # for people reading the record
            "argv": list(argv),
        }
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.record)
        return proc, True

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the service and its children: polite signal, then SIGKILL. False if not running."""
        proc = self.process()
        if proc is None:
            return False
        family = [proc, *proc.children(recursive=True)]
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(self.stop_signal)
        _, alive = psutil.wait_procs([proc], timeout=timeout_s)
        # Whatever did not stop in time, and children the parent left behind, are killed.
        leftovers = [p for p in family if p.is_running()] + alive
        for p in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(leftovers, timeout=5)
        self.record.unlink(missing_ok=True)
        return True
