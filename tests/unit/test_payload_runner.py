"""The payload runner: env, exit codes, time limits, streamed and kept output."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from p3s.jobs.policy import resolve_command
from p3s.jobs.process import TIMELIMIT_ERRCODE, execute_payload
from tests.conftest import SCRIPTS


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger(f"test-runner-{time.monotonic_ns()}")
    log.setLevel(logging.DEBUG)
    log.addHandler(Collect())
    return log


def lines(logger: logging.Logger) -> list[str]:
    return logger.handlers[0].lines  # type: ignore[attr-defined]


def run(
    payload: str,
    logger: logging.Logger,
    tmp_path: Path,
    timeout: float = 20,
    settle: float = 0.0,
    **env: str,
):
    cmd = resolve_command(payload, env, roots=[SCRIPTS])
    return execute_payload(
        cmd,
        {**os.environ, **env},
        timeout_s=timeout,
        log_dir=tmp_path,
        logger=logger,
        kill_grace_s=0.5,
        stop_settle_s=settle,
    )


def test_env_and_output(logger: logging.Logger, tmp_path: Path) -> None:
    out = run(f"{SCRIPTS}/show_env.sh a", logger, tmp_path, P3S_TEST_VALUE="v 1")
    assert out.exit_code == 0 and out.errcode == 0 and not out.timed_out
    assert "P3S_TEST_VALUE=v 1" in Path(out.stdout_path).read_text()
    assert "[stdout] P3S_TEST_VALUE=v 1" in lines(logger)
    assert "[stderr] to stderr" in lines(logger)


def test_exit_code_is_kept(logger: logging.Logger, tmp_path: Path) -> None:
    out = run(f"{SCRIPTS}/exit_with.sh 42", logger, tmp_path)
    assert out.exit_code == 42 and out.errcode == 42


def test_time_limit_terminates_then_kills_the_group(logger: logging.Logger, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    out = run(f"{SCRIPTS}/runaway.sh", logger, tmp_path, timeout=1, P3S_PID_FILE=str(pid_file))
    assert out.timed_out and out.errcode == TIMELIMIT_ERRCODE
    assert not psutil.pid_exists(int(pid_file.read_text()))
    assert any("time limit of 1 s" in line for line in lines(logger))


@pytest.mark.parametrize("name", ["TERM", "KILL"])
def test_a_payload_stopped_from_outside_holds_then_reports_its_signal(
    name: str, logger: logging.Logger, tmp_path: Path
) -> None:
    out = run(f"{SCRIPTS}/signal_self.sh {name}", logger, tmp_path, settle=0.2)
    # Nothing ended this process meanwhile: the payload's own death is its outcome.
    assert out.exit_code == -getattr(signal, f"SIG{name}") and not out.timed_out
    assert any(f"payload ended by SIG{name} from outside p3s" in ln for ln in lines(logger))


def test_a_payload_that_fails_is_reported_without_holding(
    logger: logging.Logger, tmp_path: Path
) -> None:
    out = run(f"{SCRIPTS}/exit_with.sh 3", logger, tmp_path, settle=30)
    assert out.exit_code == 3
    assert not any("from outside p3s" in ln for ln in lines(logger))
