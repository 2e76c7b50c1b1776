"""What runs on a pilot: flow runs in children forked from a warm fork server, each child
serving many runs in turn.

A pilot (a Dask worker) receives :func:`run_on_pilot` as a Dask task. The task hands the run to
one of the pilot's idle flow-run children, or forks a new child from the pilot's ``forkserver``
(started once, with Prefect and every ``p3s.flows`` module already imported by
:mod:`p3s.pilots.preload`), so a child is ready in milliseconds instead of the seconds a fresh
interpreter takes. A child:

0. watches its pilot: if the Dask worker dies (batch job killed, evicted, at walltime), or the
   batch system SIGTERMs the job's processes, a child in a run kills its payload's process
   groups and exits within a quarter of a second without a final state, so the run,
   rescheduled by the pilot worker, never executes twice at the same time; an idle child
   exits, and none takes a run once its pilot is gone;

1. takes the pilot's next run, reads it and runs it only if it is still ``Pending`` with the
   claim that names this execution's Dask task: a run already ``Running`` elsewhere, or
   claimed again for another execution after this one's pilot was lost, is never started
   twice;
2. runs it with ``prefect.flow_engine.run_flow`` (the engine sets Running and the final state),
   in a copy of the child's first context: nothing of a run's Prefect context reaches the next;
3. says the run is final (the Dask task returns, the slot frees), sends its logs and events,
   and waits for the pilot's next run: up to ``P3S_PILOTS__REUSE_RUNS`` runs (1: a fresh child
   per run), then, or after ``P3S_PILOTS__CHILD_IDLE_SECONDS`` without one, it exits. A reused child
   saves each run a fork, the first touch of a fresh heap's pages, the exit
   and an events websocket (a DQM run in a fresh child cost about 0.3 CPU-s more, measured).

Because each run is a process, cancellation and a lost pilot can kill it: the child dies with
the fork server (``PR_SET_PDEATHSIG``), the fork server exits when its Dask worker dies, and the
payload of a ``p3s-job`` dies with the child (see :mod:`p3s.jobs.process`). A killed child is
never reused: the pilot forks a fresh one for its next run.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import multiprocessing
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any
from uuid import UUID

import psutil

from p3s.pilots import shared
from p3s.pilots.run_process import (
    ENGINE_ERROR,
    NOT_CLAIMED,
    PR_SET_PDEATHSIG,
    claimed_for,
    die_with_parent,
    flush_for_next_run,
    flush_logs_and_events,
    kill_own_payloads,
    load_entrypoint,
    prime_related_objects,
    share_tls_contexts,
    skip_engine_waits,
    start_with_pipe,
)
from p3s.system.pidwait import wait_for_exit

_context: BaseContext | None = None
_context_lock = threading.Lock()
#: The child of each run on this pilot, by flow run id: the cancellation hook finds them here.
_running: dict[str, _Child] = {}
_cancelled: set[str] = set()
#: This pilot's children between runs (at most one per slot: a child is forked only when
#: every child of the pilot is in a run).
_pool: list[_Child] = []
_pool_lock = threading.Lock()
#: Runs this pilot hands to its shared engine (see :mod:`p3s.pilots.shared`).
_shared_runs: set[str] = set()
#: Set in a child once its run has its final state: it may then outlive its pilot.
_final = threading.Event()
#: Set in a child while it waits for its next run: nothing of it is left to send.
_idle = threading.Event()
#: Set in a child once its pilot is gone (or the batch system ends the job): no more runs.
_pilot_gone = threading.Event()
#: The settings context :func:`settle_client_handshakes` entered in the fork server.
_handshake_settings: Any = None


def fork_context() -> BaseContext:
    """The pilot's ``forkserver`` context; its server preloads Prefect and the p3s flows."""
    global _context
    with _context_lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["p3s.pilots.preload"])
            # Dask marks worker processes daemonic (so the nanny's exit ends them), and
            # multiprocessing refuses children to daemonic processes. The children here die
            # with the worker through the fork server and PR_SET_PDEATHSIG, so lift the guard.
            multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]
            _context = ctx
        return _context


def warm_up() -> None:
    """Start the fork server now, so the first flow run does not pay its start (seconds)."""
    from multiprocessing import forkserver

    fork_context()
    forkserver.ensure_running()


def _watch_pilot(pilot_pid: int) -> None:
    """Thread of a flow-run child: when its pilot (Dask worker) dies, end the payload and the
    child at once. (The fork server also exits then, but only after seconds of shutdown.)
    It sleeps until then (a pidfd): a loop of short sleeps, in each of hundreds of waiting
    children, took a good part of the host's CPU."""
    wait_for_exit(pilot_pid)
    _end_as_lost()


def _end_as_lost(*_signal: object) -> None:
    """End the child as on a lost pilot: payloads killed, exit with no final state, and the
    pilot worker runs the flow again. Also the child's SIGTERM handler: the batch system ends
    a pilot's job (scancel, eviction, walltime) by signalling every process of it, and
    Prefect's engine would report that as Crashed, a final state that never runs again. Once
    the run is final nothing is left to stop: the child stays to send its last logs and
    events, then exits instead of waiting for another run; an idle child exits now."""
    # Set before the phase is read, as the child reads this after it changes its phase: one
    # of the two always sees the other (see _enter_run, _enter_idle).
    _pilot_gone.set()
    if _idle.is_set():
        os._exit(0)
    if _final.is_set():
        return
    kill_own_payloads()
    os._exit(ENGINE_ERROR)


def _outlive_pilot() -> None:
    """Once the run is final, a pilot retired or lost must not cut the child's last logs
    and events short (the flush may take seconds): no longer die with the fork server."""
    _final.set()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, 0)


def _enter_idle(server_pid: int) -> None:
    """The last run's logs and events are sent: die with the fork server again (re-armed,
    since :func:`_outlive_pilot` cleared it), and exit if it or the pilot is already gone."""
    _idle.set()
    die_with_parent()
    if _pilot_gone.is_set() or os.getppid() != server_pid:
        os._exit(0)


def _enter_run(pilot_pid: int, server_pid: int) -> None:
    """Before a run is taken: a child whose pilot or fork server is gone takes none."""
    _idle.clear()
    _final.clear()
    if _pilot_gone.is_set() or os.getppid() != server_pid or wait_for_exit(pilot_pid, 0):
        os._exit(0)  # idle until now: nothing left to send


def _csrf_required(client: Any) -> bool:
    """Whether the server asks for CSRF tokens (its ``/csrf-token`` hands one out)."""
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        client.request("GET", "/csrf-token", params={"client": "p3s-pilot-preload"})
    except PrefectHTTPStatusError as exc:  # told apart as Prefect's own client does
        response = exc.response
        disabled = response.status_code == 422 and "CSRF protection is disabled" in response.text
        return not (disabled or response.status_code == 404)
    return True


def settle_client_handshakes() -> None:
    """Check the server's API version and CSRF use once per pilot, in its fork server.

    Every Prefect client otherwise repeats both in every flow-run child: a GET of
    ``/admin/version`` per client context and a GET of ``/csrf-token`` per client (answered
    "disabled" by a server without CSRF protection). Traced in one child of a trivial job: 4
    of its 19 requests. Prefect's ``server_version_check_enabled`` setting exists for such
    worker subprocesses; a server that does require CSRF keeps the tokens.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_CLIENT_CSRF_SUPPORT_ENABLED,
        PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED,
    )
    from prefect.settings.context import temporary_settings

    global _handshake_settings
    with get_client(sync_client=True) as client:
        client.raise_for_api_version_mismatch()  # raises on an incompatible server
        csrf = _csrf_required(client)
    updates: dict[Any, Any] = {PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED: False}
    if not csrf:
        updates[PREFECT_CLIENT_CSRF_SUPPORT_ENABLED] = False
    # The environment for threads that build their settings afresh; the settings context
    # for this thread and the children forked from it (held: never left).
    for setting, value in updates.items():
        os.environ[setting.name] = str(value).lower()
    _handshake_settings = temporary_settings(updates=updates)
    _handshake_settings.__enter__()


def settle_result_storage() -> None:
    """Read the server's default result storage once per pilot, in its fork server.

    Prefect's engine asks the server for it (``GET /admin/storage``) twice per flow run, and
    a flow-run child, a fresh fork, has no cache: 2 of a trivial job's 16 requests. The answer
    changes only when an administrator sets another default, as rarely as the server's version.
    """
    from prefect import results
    from prefect.client.orchestration import get_client

    # Read here, not through Prefect's helper, which answers None (local storage) on errors:
    # a server that cannot answer now leaves every child to ask it, as before.
    with get_client(sync_client=True) as client:
        block_id = client.read_server_default_result_storage().default_result_storage_block_id

    async def read_async() -> Any:
        return block_id

    results._read_server_default_result_storage_block_id = lambda: block_id  # type: ignore[assignment]
    results._aread_server_default_result_storage_block_id = read_async  # type: ignore[assignment]


def _start_child(pilot: str, pilot_pid: int) -> None:
    """What a flow-run child does once, before its first run."""
    die_with_parent()
    if os.getppid() == 1:  # the fork server died before PR_SET_PDEATHSIG took effect
        os._exit(ENGINE_ERROR)
    threading.Thread(target=_watch_pilot, args=(pilot_pid,), daemon=True).start()
    signal.signal(signal.SIGTERM, _end_as_lost)
    os.environ["P3S_PILOT_NAME"] = pilot
    skip_engine_waits()
    share_tls_contexts()


def _execute(
    run_id: str, entrypoint: str, claim: str, pilot: str, related: Any, served: int = 1
) -> int:
    """One flow run in this child (its ``served``-th), if it is still claimed for this
    execution; its exit code."""
    from prefect.flow_engine import load_flow_run, run_flow
    from prefect.logging.loggers import flow_run_logger

    try:
        flow_run = load_flow_run(UUID(run_id))
    except Exception:
        traceback.print_exc()  # the pilot's log: the run has no logger yet
        return ENGINE_ERROR
    if not claimed_for(flow_run.state, claim):
        return NOT_CLAIMED
    prime_related_objects(related)
    logger = flow_run_logger(flow_run=flow_run)
    try:
        logger.info(
            "p3s pilot %s runs this flow run (child pid %s, its run %s, %.0f MiB resident)",
            pilot,
            os.getpid(),
            served,
            psutil.Process().memory_info().rss / 2**20,
        )
        flow = load_entrypoint(entrypoint)
        run_flow(flow, flow_run=flow_run, return_type="state", error_logger=logger)
    except Exception:
        logger.exception("the flow run could not be executed on pilot %s", pilot)
        return ENGINE_ERROR
    return 0


def _next_run(conn: Connection) -> tuple[Any, ...] | None:
    """The pilot's next run for this idle child; None when the pilot has no more for it (its
    end of the pipe closed: retired, or the child has served its runs) or none came in
    ``P3S_PILOTS__CHILD_IDLE_SECONDS``."""
    from p3s.system.settings import get_settings

    try:
        if not conn.poll(get_settings().pilots.child_idle_seconds):
            return None
        return conn.recv()
    except (EOFError, OSError):
        return None


def serve_runs(pilot: str, pilot_pid: int, conn: Connection) -> None:
    """Body of a flow-run child: the pilot's runs one after another (see the module docstring).

    To the pilot it says ``("took", run_id)`` when it takes a run, ``("done", run_id, code)``
    once the run is final (``code`` as a child's exit code would say it), and ``("idle",)``
    once the run's logs and events are sent."""
    _start_child(pilot, pilot_pid)
    server_pid = os.getppid()
    _idle.set()
    try:
        _serve(conn, pilot, pilot_pid, server_pid, contextvars.copy_context())
    finally:  # no more runs (or one raised what no flow should): the last logs and events
        flush_logs_and_events()


def _serve(
    conn: Connection, pilot: str, pilot_pid: int, server_pid: int, first: contextvars.Context
) -> None:
    """The loop of :func:`serve_runs`; each run in a copy of ``first``, the child's context
    before any run (the fork server's settings, no run's Prefect context)."""
    served = 0
    while (message := _next_run(conn)) is not None:
        _, run_id, entrypoint, claim, related = message
        served += 1
        _enter_run(pilot_pid, server_pid)
        try:
            conn.send(("took", run_id))
        except OSError:
            return  # no pilot waits for it: the run is not this child's
        code = ENGINE_ERROR
        try:
            code = first.copy().run(_execute, run_id, entrypoint, claim, pilot, related, served)
        finally:
            # The run is final: free the pilot's slot now, and send the last logs and events
            # (a websocket that may take seconds to open) on our own time.
            _outlive_pilot()
            with contextlib.suppress(OSError):
                conn.send(("done", run_id, code))
        flush_for_next_run()
        _enter_idle(server_pid)
        with contextlib.suppress(OSError):
            conn.send(("idle",))


def stop_tree(pid: int, grace_s: float) -> None:
    """SIGTERM every process group below a child (payloads run in their own sessions) and
    SIGKILL the child itself at once, then SIGKILL whatever is left after ``grace_s`` seconds.

    The child gets no SIGTERM: Prefect's engine in it would report the stop as a crash, and
    the run is to end Cancelled (the pilot worker sets that when the child is gone).
    """
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    groups = set()
    for proc in family[1:]:
        with contextlib.suppress(psutil.Error, OSError):
            groups.add(os.getpgid(proc.pid))
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(psutil.NoSuchProcess):
        root.kill()
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


class _Child:
    """The pilot's side of one flow-run child: its process, its pipe, the runs it took."""

    def __init__(self, ctx: BaseContext, pilot: str) -> None:
        self.proc, self.conn = start_with_pipe(ctx, serve_runs, pilot, f"p3s-child-{pilot}")
        self.runs = 0
        self.idle = True  # its last run's logs and events are sent (a fresh child has none)
        self._lock = threading.Lock()
        self._taken = False
        self._stop_when_taken: float | None = None

    def alive(self) -> bool:
        """Whether it still runs; reads what it said meanwhile (that it became idle)."""
        try:
            while self.conn.poll(0):
                if self.conn.recv()[0] == "idle":
                    self.idle = True
        except (EOFError, OSError):
            return False
        return self.proc.is_alive()

    def hand(self, run_id: str, entrypoint: str, claim: str, related: Any) -> bool:
        """Send it a run; False if it has ended (its pipe closed)."""
        with self._lock:
            self._taken, self._stop_when_taken, self.idle = False, None, False
        try:
            self.conn.send(("run", run_id, entrypoint, claim, related))
        except OSError:
            return False
        return True

    def outcome(self) -> tuple[int | None, bool]:
        """Wait until the run it was handed is final or it ends: the exit code (as a child
        exiting after its run would give it) and whether it took the run at all."""
        while True:
            message = self._receive()
            if message is None:  # it ended: killed, lost, or it left idle before it took it
                self.proc.join()
                return self.proc.exitcode, self._taken
            if message[0] == "took":
                self._took()
            elif message[0] == "done":
                return message[2], True
            # ("idle",): its run before this one was flushed; it takes this one now.

    def _receive(self) -> tuple[Any, ...] | None:
        wait([self.conn, self.proc.sentinel])
        try:
            if self.conn.poll(0):  # also what it said just before it ended
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        return None

    def _took(self) -> None:
        with self._lock:
            self._taken = True
            self.runs += 1
            grace = self._stop_when_taken
        if grace is not None:
            self._stop(grace)

    def stop(self, grace_s: float) -> None:
        """Stop its run (cancellation): now if it has taken it; if it is still sending the
        logs of its run before, once it takes this one (the last logs of that run still go)."""
        with self._lock:
            if not self._taken:
                self._stop_when_taken = grace_s
                return
        self._stop(grace_s)

    def _stop(self, grace_s: float) -> None:
        # Not on the worker's event loop: the grace period may take seconds.
        threading.Thread(target=stop_tree, args=(self.proc.pid, grace_s), daemon=True).start()

    def close(self) -> None:
        """No more runs for it: it exits once its last logs and events are sent."""
        with contextlib.suppress(OSError):
            self.conn.close()
        if not self.proc.is_alive():
            with contextlib.suppress(ValueError):
                self.proc.close()


def _take_child(ctx: BaseContext, pilot: str) -> _Child:
    """An idle child of this pilot (the one idle last: its pages are the warmest), else one
    still sending its last run's logs (it takes the run right after), else a fresh child."""
    with _pool_lock:
        for child in [c for c in _pool if not c.alive()]:
            _pool.remove(child)
            child.close()
        if _pool:
            ready = [c for c in _pool if c.idle] or _pool
            child = ready[-1]
            _pool.remove(child)
            return child
    return _Child(ctx, pilot)


def _release(child: _Child, run_id: str, ended: bool) -> None:
    """Back to the pool for the pilot's next run, unless it ended, was cancelled (it is being
    killed) or has served its ``P3S_PILOTS__REUSE_RUNS`` runs."""
    from p3s.system.settings import get_settings

    if ended or run_id in _cancelled or child.runs >= get_settings().pilots.reuse_runs:
        child.close()
        return
    with _pool_lock:
        _pool.append(child)


def _run_in_child(
    ctx: BaseContext, pilot: str, run_id: str, entrypoint: str, claim: str, related: Any
) -> int | None:
    """Run the flow run in a child of this pilot; its exit code."""
    child = _take_child(ctx, pilot)
    _running[run_id] = child
    try:
        code, taken = _hand_and_wait(child, run_id, entrypoint, claim, related)
        if not taken and run_id not in _cancelled:
            # It ended between runs (idle time out, killed) before it took this one: nothing
            # of the run was executed, a fresh child takes it. (A cancellation that found the
            # old child meanwhile: the run is Cancelling, the fresh child's claim check
            # refuses it.)
            child.close()
            child = _running[run_id] = _Child(ctx, pilot)
            code, taken = _hand_and_wait(child, run_id, entrypoint, claim, related)
    finally:
        _running.pop(run_id, None)
    _release(child, run_id, ended=not child.proc.is_alive() or not taken)
    return code


def _hand_and_wait(
    child: _Child, run_id: str, entrypoint: str, claim: str, related: Any
) -> tuple[int | None, bool]:
    if not child.hand(run_id, entrypoint, claim, related):
        child.proc.join()
        return child.proc.exitcode, False
    return child.outcome()


def cancel_local(run_id: str, grace_s: float = 5.0) -> bool:
    """Stop the child running ``run_id`` on this pilot, if any (called through
    ``Client.run`` on every pilot); returns whether this pilot had it."""
    if run_id in _shared_runs:
        _cancelled.add(run_id)
        if shared.cancel_local(run_id, grace_s):
            return True
        _cancelled.discard(run_id)
        return False
    child = _running.get(run_id)
    if child is None:
        return False
    _cancelled.add(run_id)
    child.stop(grace_s)
    return True


def run_on_pilot(
    run_id: str, entrypoint: str, claim: str, related: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Dask task of one flow run: hand it to a child, wait for it, say how it ended.

    ``claim`` is the Dask key the pilot worker named in its claim (the run's Pending state);
    ``related`` the run's objects for its events (see :func:`prime_related_objects`).

    Returns:
        ``run_id``, ``pilot`` (Dask worker name), ``exit_code`` (negative: killed by that
        signal), ``cancelled`` (stopped by :func:`cancel_local`), ``seconds`` (wall time).
    """
    from distributed import get_worker

    pilot = str(get_worker().name)
    ctx = fork_context()
    started = time.monotonic()
    if shared.serves(entrypoint):
        _shared_runs.add(run_id)
        try:
            try:
                code = shared.engine_for(ctx, pilot).run(run_id, entrypoint, claim, related)
            except shared.EngineGone:  # it ended just now: a fresh one takes the run
                code = shared.engine_for(ctx, pilot).run(run_id, entrypoint, claim, related)
        finally:
            _shared_runs.discard(run_id)
        return _outcome(run_id, pilot, code, started)
    code = _run_in_child(ctx, pilot, run_id, entrypoint, claim, related)
    return _outcome(run_id, pilot, code, started)


def _outcome(run_id: str, pilot: str, code: int | None, started: float) -> dict[str, Any]:
    cancelled = run_id in _cancelled
    _cancelled.discard(run_id)
    return {
        "run_id": run_id,
        "pilot": pilot,
        "exit_code": code,
        "cancelled": cancelled,
        "seconds": round(time.monotonic() - started, 3),
    }
