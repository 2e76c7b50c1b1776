"""One Prefect engine process per pilot for all its p3s jobs (``P3S_PILOTS__ENGINE=shared``, the
default).

A p3s job's run spends its life waiting on its payload, and in a forked child of its own
(:mod:`p3s.pilots.execute`) that wait holds about 38 MiB: the pages each child copies from its
fork server as it uses Prefect's objects, once per run. Here the pilot forks one **engine
process** from its fork server, at its first p3s job, and every later job of that pilot runs
in it as a thread, with the same steps as a child (the claim check, ``run_flow``): what each
waiting run adds is its thread, its engine's objects and its payload.

What the child's process boundary gave is kept:

- cancellation: the engine SIGTERMs the run's payload process groups (SIGKILL after the grace
  period), and the run's thread then leaves the run without a final state (Prefect's ``Abort``
  out of the flow: the engine proposes nothing), as a killed child did; the pilot worker sets
  ``Cancelled``;
- time limits: :func:`p3s.jobs.process.execute_payload` in the thread, unchanged;
- a lost pilot: the engine watches its pilot (a pidfd) and its pipe to it; when either goes,
  or the batch system SIGTERMs it, it kills every payload and exits at once, leaving the runs
  that were not final without a final state (the pilot worker runs them again), as a child did;
  with no run in flight it sends its last logs and events first;
- exactly once: each thread checks the run's claim as a child does.

Other flows (the DQM flows compute in their own process) always fork a child: a thread cannot
be killed.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import subprocess
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any
from uuid import UUID

from p3s.pilots.run_process import (
    ENGINE_ERROR,
    NOT_CLAIMED,
    PR_SET_PDEATHSIG,
    claimed_for,
    die_with_parent,
    flush_logs_and_events,
    kill_own_payloads,
    load_entrypoint,
    prime_related_objects,
    share_tls_contexts,
    skip_engine_waits,
    start_with_pipe,
)
from p3s.system.pidwait import wait_for_exit

#: Entrypoints whose runs a shared engine runs: flows whose work is a payload process.
SHARED_ENTRYPOINTS = frozenset({"flows/job.py:p3s_job"})


def serves(entrypoint: str) -> bool:
    """Whether this pilot runs ``entrypoint``'s runs in its shared engine."""
    if entrypoint not in SHARED_ENTRYPOINTS:
        return False
    from p3s.system.settings import get_settings

    return get_settings().pilots.engine == "shared"


class EngineGone(RuntimeError):
    """The pilot's engine process ended before it took the run."""


class EngineHandle:
    """The pilot's side of its engine process: hands it runs and cancellations, and hands each
    run's exit code back to the Dask task that waits for it."""

    def __init__(self, ctx: BaseContext, pilot: str) -> None:
        self.proc, self._conn = start_with_pipe(ctx, engine_main, pilot, f"p3s-engine-{pilot}")
        self._lock = threading.Lock()
        self._waiting: dict[str, Future[int | None]] = {}
        self.dead = False
        threading.Thread(target=self._read, daemon=True, name="p3s-engine-replies").start()

    def _read(self) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                run_id, code = self._conn.recv()
                future = self._waiting.pop(run_id, None)
                if future is not None:
                    future.set_result(code)
        # The engine ended (killed, or its pilot going): its runs end with its exit code.
        self.proc.join()
        with self._lock:
            self.dead = True
            left, self._waiting = list(self._waiting.values()), {}
        for future in left:
            future.set_result(self.proc.exitcode)

    def run(self, run_id: str, entrypoint: str, claim: str, related: dict[str, Any] | None) -> Any:
        """Run one flow run in the engine; returns its exit code (as a child's would be)."""
        future: Future[int | None] = Future()
        with self._lock:
            if self.dead:
                raise EngineGone(f"engine process {self.proc.pid} has ended")
            self._waiting[run_id] = future
            self._conn.send(("run", run_id, entrypoint, claim, related))
        return future.result()

    def cancel(self, run_id: str, grace_s: float) -> bool:
        """Stop the run's payloads; returns whether the engine has the run."""
        with self._lock:
            if self.dead or run_id not in self._waiting:
                return False
            with contextlib.suppress(OSError):
                self._conn.send(("cancel", run_id, grace_s))
            return True


_engine: EngineHandle | None = None
_engine_lock = threading.Lock()


def engine_for(ctx: BaseContext, pilot: str) -> EngineHandle:
    """This pilot's engine process, started (from its fork server) if it has none running."""
    global _engine
    with _engine_lock:
        if _engine is None or _engine.dead:
            _engine = EngineHandle(ctx, pilot)
        return _engine


def cancel_local(run_id: str, grace_s: float) -> bool:
    """Stop ``run_id``'s payloads if this pilot's engine runs it."""
    engine = _engine
    return engine is not None and engine.cancel(run_id, grace_s)


# -- the engine process ---------------------------------------------------------------------


class _RunWatch:
    """The payload watch of one run (see :data:`p3s.jobs.process.payload_watch`)."""

    def __init__(self, engine: _Engine, run_id: str) -> None:
        self.engine, self.run_id = engine, run_id

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        with self.engine.lock:
            self.engine.payloads.setdefault(self.run_id, set()).add(proc)
        self._abort_if_cancelled()

    def ended(self, proc: subprocess.Popen[bytes]) -> None:
        with self.engine.lock:
            self.engine.payloads.get(self.run_id, set()).discard(proc)
        self._abort_if_cancelled()

    def _abort_if_cancelled(self) -> None:
        if self.run_id in self.engine.cancelled:
            from prefect.exceptions import Abort

            # Out of the flow and the engine with no state proposed: the run is the pilot
            # worker's to set Cancelled, as after a child killed by a cancellation. (Raised at
            # the start, execute_payload stops the payload first.)
            raise Abort("cancelled on its pilot: payload stopped")


class _Engine:
    def __init__(self, pilot: str, conn: Connection) -> None:
        self.pilot, self.conn = pilot, conn
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.unfinished: set[str] = set()
        self.cancelled: set[str] = set()
        self.payloads: dict[str, set[subprocess.Popen[bytes]]] = {}

    def serve(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "run":
                    _, run_id, entrypoint, claim, related = message
                    with self.lock:
                        self.unfinished.add(run_id)
                    # Each run in a copy of this thread's context: the fork server's settings.
                    context = contextvars.copy_context()
                    threading.Thread(
                        target=context.run,
                        args=(self.run, run_id, entrypoint, claim, related),
                        daemon=True,
                        name=f"p3s-run-{run_id}",
                    ).start()
                elif message[0] == "cancel":
                    self.cancel(message[1], message[2])
        except (EOFError, OSError):
            self.end()  # the pilot is gone

    def run(self, run_id: str, entrypoint: str, claim: str, related: dict[str, Any] | None) -> None:
        code = ENGINE_ERROR
        try:
            code = self.execute(run_id, entrypoint, claim, related)
        finally:
            with self.lock:
                self.unfinished.discard(run_id)
                self.payloads.pop(run_id, None)
                self.cancelled.discard(run_id)
            with self.send_lock, contextlib.suppress(OSError):
                self.conn.send((run_id, code))

    def execute(
        self, run_id: str, entrypoint: str, claim: str, related: dict[str, Any] | None
    ) -> int:
        from prefect.exceptions import Abort
        from prefect.flow_engine import load_flow_run, run_flow
        from prefect.logging.loggers import flow_run_logger

        from p3s.jobs.process import payload_watch

        try:
            flow_run = load_flow_run(UUID(run_id))
        except Exception:
            return ENGINE_ERROR
        if not claimed_for(flow_run.state, claim):
            return NOT_CLAIMED
        prime_related_objects(related)
        logger = flow_run_logger(flow_run=flow_run)
        payload_watch.set(_RunWatch(self, run_id))
        try:
            logger.info(
                "p3s pilot %s runs this flow run (shared engine pid %s)", self.pilot, os.getpid()
            )
            flow = load_entrypoint(entrypoint)
            run_flow(flow, flow_run=flow_run, return_type="state", error_logger=logger)
        except Abort:
            return ENGINE_ERROR  # cancelled: the pilot reports that
        except Exception:
            logger.exception("the flow run could not be executed on pilot %s", self.pilot)
            return ENGINE_ERROR
        return 0

    def cancel(self, run_id: str, grace_s: float) -> None:
        with self.lock:
            if run_id not in self.unfinished:
                return
            self.cancelled.add(run_id)
            procs = list(self.payloads.get(run_id, ()))
        threading.Thread(target=_stop_payloads, args=(procs, grace_s), daemon=True).start()

    def end(self, *_signal: object) -> None:
        """The pilot is lost, or the batch system stops the job: as a child would, kill every
        payload and leave the runs not yet final without a final state (they run again). With
        none in flight, the last logs and events go out first."""
        with self.lock:
            busy = bool(self.unfinished)
        if busy:
            kill_own_payloads()
            os._exit(ENGINE_ERROR)
        flush_logs_and_events()
        os._exit(0)


def _stop_payloads(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM each payload's process group, SIGKILL what is left after ``grace_s``."""
    for proc in procs:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def engine_main(pilot: str, pilot_pid: int, conn: Connection) -> None:
    """Body of a pilot's engine process."""
    die_with_parent()
    if os.getppid() == 1:  # the fork server died before PR_SET_PDEATHSIG took effect
        os._exit(ENGINE_ERROR)
    # Dying with the fork server (on a pilot that retires, within seconds of it) would lose
    # the last logs of the last runs: the pilot's own end is watched below instead.
    with contextlib.suppress(OSError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, 0)
    engine = _Engine(pilot, conn)
    signal.signal(signal.SIGTERM, engine.end)
    os.environ["P3S_PILOT_NAME"] = pilot
    skip_engine_waits()
    share_tls_contexts()

    def watch_pilot() -> None:
        wait_for_exit(pilot_pid)
        engine.end()

    threading.Thread(target=watch_pilot, daemon=True, name="p3s-engine-pilot").start()
    engine.serve()
