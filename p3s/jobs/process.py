"""Run one payload as a subprocess: time limit, exit code, streamed and kept logs.

The function knows nothing of Prefect beyond a ``logging.Logger`` to stream into, so that a flow
can call it directly (no extra task-run API calls on the hot path) and a workflow can wrap it
as a task.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Protocol

from p3s.jobs.policy import Command
from p3s.system.pidwait import wait_for_exit

#: p3s's error code for a payload killed at its time limit.
TIMELIMIT_ERRCODE = 77
#: Lines of each stream forwarded to the run log; the files keep everything.
MAX_LOGGED_LINES = 5000

_PR_SET_PDEATHSIG = 1

#: Signals with which a batch system ends a job (scancel, eviction, walltime, OOM kill).
BATCH_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP})


class PayloadWatch(Protocol):
    """Told of each payload of the current run (a pilot's shared engine: it stops them when
    the run is cancelled, and ends the run without a final state then)."""

    def started(self, proc: subprocess.Popen[bytes]) -> None: ...

    def ended(self, proc: subprocess.Popen[bytes]) -> None: ...


#: The watch of the run this thread executes, if any.
payload_watch: ContextVar[PayloadWatch | None] = ContextVar("p3s_payload_watch", default=None)


def _die_with_parent() -> None:
    # Linux only: if the process running the flow dies (a killed worker or pilot), the
    # payload gets SIGTERM instead of running on as an orphan.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class PayloadOutcome:
    """What happened to one payload."""

    exit_code: int
    timed_out: bool
    duration_s: float
    stdout_path: str
    stderr_path: str
    pid: int

    @property
    def errcode(self) -> int:
        """The code p3s recorded: 77 at the time limit, else the exit code."""
        return TIMELIMIT_ERRCODE if self.timed_out else self.exit_code

    def as_record(self) -> dict[str, object]:
        return {**asdict(self), "errcode": self.errcode}


def _pump(stream: IO[bytes], sink: IO[bytes], logger: logging.Logger, level: int, tag: str) -> None:
    for logged, raw in enumerate(iter(stream.readline, b"")):
        sink.write(raw)
        sink.flush()
        if logged < MAX_LOGGED_LINES:
            logger.log(level, "[%s] %s", tag, raw.decode("utf-8", "replace").rstrip("\n"))
        elif logged == MAX_LOGGED_LINES:
            logger.warning("[%s] more output is kept in %s only", tag, sink.name)
    stream.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the payload's process group, then SIGKILL what is left after ``grace_s``."""
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    # Children of the payload may outlive it in the same group: make sure none is left.
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _settle_outside_stop(returncode: int, settle_s: float, logger: logging.Logger) -> None:
    """Hold back the outcome of a payload ended by a stop signal that p3s did not send.

    A batch system ends a pilot's job (scancel, eviction) by signalling all its processes in
    turn: the payload may die first, and reporting its exit code then would fail the run for
    good. If this process is being ended too, its own handler exits within ``settle_s``
    seconds (the run, with no final state, goes again on another pilot); if not, the
    payload's death was its own (an OOM kill, an operator's ``kill``) and is reported.
    """
    if settle_s <= 0 or -returncode not in BATCH_STOP_SIGNALS:
        return
    name = signal.Signals(-returncode).name
    logger.warning(
        "payload ended by %s from outside p3s: its exit code is held %.0f s "
        "in case the batch system is ending this pilot",
        name,
        settle_s,
    )
    time.sleep(settle_s)


def execute_payload(
    command: Command,
    env: Mapping[str, str],
    *,
    timeout_s: float | None,
    log_dir: Path,
    logger: logging.Logger,
    kill_grace_s: float = 5.0,
    stop_settle_s: float = 0.0,
    cwd: Path | None = None,
) -> PayloadOutcome:
    """Run a vetted command to completion or to its time limit.

    Args:
        command: from :func:`p3s.jobs.policy.resolve_command`.
        env: the complete environment of the payload.
        timeout_s: wall-clock limit in seconds; ``None`` or 0 for none.
        log_dir: receives ``stdout.log`` and ``stderr.log``.
        logger: each output line is logged here (stdout at INFO, stderr at WARNING).
        kill_grace_s: seconds between SIGTERM and SIGKILL at the time limit.
        stop_settle_s: how long to hold the outcome of a payload that a stop signal from
            outside ended (see :func:`_settle_outside_stop`).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_dir / "stdout.log", log_dir / "stderr.log"
    started = time.monotonic()
    with open(stdout_path, "wb") as out_file, open(stderr_path, "wb") as err_file:
        proc = subprocess.Popen(
            list(command.argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a time limit stops all of it
            preexec_fn=_die_with_parent,
        )
        pumps = [
            threading.Thread(
                target=_pump, args=(proc.stdout, out_file, logger, logging.INFO, "stdout")
            ),
            threading.Thread(
                target=_pump, args=(proc.stderr, err_file, logger, logging.WARNING, "stderr")
            ),
        ]
        for pump in pumps:
            pump.start()
        timed_out = False
        watch = payload_watch.get()
        try:
            if watch is not None:
                watch.started(proc)
            # Popen.wait(timeout) wakes every 50 ms until the payload ends: block instead.
            if not wait_for_exit(proc.pid, timeout_s or None):
                raise subprocess.TimeoutExpired(proc.args, timeout_s or 0)
            proc.wait()
        except subprocess.TimeoutExpired:
            timed_out = True
            logger.error("time limit of %s s reached: stopping the payload", timeout_s)
            stop_process_group(proc, kill_grace_s)
        except BaseException:
            # Cancellation or a crash of the caller: never leave the payload running.
            stop_process_group(proc, kill_grace_s)
            raise
        finally:
            for pump in pumps:
                pump.join(timeout=10)
    if watch is not None:
        watch.ended(proc)
    if not timed_out:
        _settle_outside_stop(proc.returncode, stop_settle_s, logger)
    return PayloadOutcome(
        exit_code=proc.returncode,
        timed_out=timed_out,
        duration_s=round(time.monotonic() - started, 3),
        stdout_path=str(stdout_path),
        stderr_path=str(stderr_path),
        pid=proc.pid,
    )
