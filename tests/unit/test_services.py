"""Records of managed processes: a live service is found by its record however the wall clock
moves; a pid reused by another process is not taken for it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from p3s.system.services import ManagedProcess, start_ticks


@pytest.fixture
def sleeper(tmp_path: Path):
    service = ManagedProcess("sleeper", tmp_path)
    proc, new = service.start([sys.executable, "-c", "import time; time.sleep(60)"], env={})
    assert new
    yield service, proc
    service.stop(timeout_s=5)


def test_start_ticks_agree_with_psutil() -> None:
    me = psutil.Process()
    ticks = start_ticks(me.pid)
    boot = psutil.boot_time()
    assert abs(boot + ticks / os.sysconf("SC_CLK_TCK") - me.create_time()) < 0.05


def test_a_live_service_is_found_after_the_wall_clock_moved(sleeper) -> None:
    service, proc = sleeper
    record = json.loads(service.record.read_text())
    # The boot time derived from the wall clock moved by 3 s (a VM resumed, NTP stepped):
    # psutil's create_time of the same process now differs; the kernel's start ticks do not.
    record["create_time"] += 3.0
    service.record.write_text(json.dumps(record))
    found = service.process()
    assert found is not None and found.pid == proc.pid
    assert service.record.exists()


def test_a_reused_pid_is_not_taken_for_the_service(sleeper) -> None:
    service, proc = sleeper
    record = json.loads(service.record.read_text())
    record["start_ticks"] -= 1  # the same pid, another process's start
    service.record.write_text(json.dumps(record))
    assert service.process() is None
    assert not service.record.exists()  # a stale record is removed
    assert proc.is_running()  # and nothing was done to the process that has the pid now
