"""Waiting for a process to end without polling."""

from __future__ import annotations

import subprocess
import sys
import time

from p3s.system.pidwait import _poll, wait_for_exit


def test_a_wait_ends_when_the_process_does_and_not_before() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    try:
        assert not wait_for_exit(proc.pid, timeout_s=0.05)  # still running
        started = time.monotonic()
        assert wait_for_exit(proc.pid, timeout_s=30)
        assert time.monotonic() - started < 30
        assert proc.poll() == 0  # exited, and still ours to reap
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_is_gone_or_unreaped_counts_as_ended() -> None:
    proc = subprocess.Popen(["true"])
    while proc.poll() is None:
        time.sleep(0.01)
    assert wait_for_exit(proc.pid, timeout_s=1)  # reaped: no such process
    zombie = subprocess.Popen(["true"])
    time.sleep(0.3)  # exited, not reaped
    assert wait_for_exit(zombie.pid, timeout_s=5)
    assert _poll(zombie.pid, time.monotonic() + 5, 0.01)  # the fallback agrees
    zombie.wait()


def test_the_fallback_times_out_on_a_live_process() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    try:
        assert not _poll(proc.pid, time.monotonic() + 0.1, 0.02)
    finally:
        proc.kill()
        proc.wait()
