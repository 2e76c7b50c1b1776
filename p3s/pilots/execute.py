"""What runs on a pilot: each flow run in its own child, forked from a warm fork server.

A pilot (a Dask worker) receives :func:`run_on_pilot` as a Dask task. The task forks a child
from the pilot's ``forkserver`` (started once, with Prefect and every ``p3s.flows`` module
already imported by :mod:`p3s.pilots.preload`), so a child is ready in milliseconds instead of
the seconds a fresh interpreter takes. The child:

0. watches its pilot: if the Dask worker dies (batch job killed, evicted, at walltime), or the
   batch system SIGTERMs the job's processes, the child kills its payload's process groups
   and exits within a quarter of a second without a final state, so the run, rescheduled by
   the pilot worker, never executes twice at the same time;

1. reads the flow run and runs it only if it is still ``Pending`` with the claim that names
   this execution's Dask task: a run already ``Running`` elsewhere, or claimed again for
   another execution after this one's pilot was lost, is never started twice;
2. runs it with ``prefect.flow_engine.run_flow`` (the engine sets Running and the final state);
3. flushes its logs and events and exits.

Because each run is a process, cancellation and a lost pilot can kill it: the child dies with
the fork server (``PR_SET_PDEATHSIG``), the fork server exits when its Dask worker dies, and the
payload of a ``p3s-job`` dies with the child (see :mod:`p3s.jobs.process`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import multiprocessing
import os
import signal
import ssl
import sys
import threading
import time
import types
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil

from p3s.system.pidwait import wait_for_exit
from p3s.system.settings import PROJECT_DIR

#: Exit code of a child that found its run no longer Pending (someone else has it).
NOT_CLAIMED = 3
#: Exit code of a child whose flow could not be loaded or whose engine raised.
ENGINE_ERROR = 1
#: Top-level folders of the repository that are importable as ``p3s.<folder>``.
PACKAGE_FOLDERS = ("flows", "tasks")

_PR_SET_PDEATHSIG = 1
_context: BaseContext | None = None
_context_lock = threading.Lock()
#: Children running on this pilot, by flow run id: the cancellation hook finds them here.
_running: dict[str, multiprocessing.process.BaseProcess] = {}
_cancelled: set[str] = set()
#: Runs this pilot hands to its shared engine (see :mod:`p3s.pilots.shared`).
_shared_runs: set[str] = set()
#: Set in a child once its run has its final state: it may then outlive its pilot.
_final = threading.Event()
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


def _die_with_parent() -> None:
    """Die (SIGKILL) when the fork server exits, which it does when its Dask worker dies."""
    from multiprocessing import forkserver

    # multiprocessing hands every child the write end of the fork server's "alive" pipe; while
    # any child holds it the fork server never sees its worker die. Close it here.
    server = forkserver._forkserver  # type: ignore[attr-defined]
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def load_entrypoint(entrypoint: str) -> Any:
    """The flow at ``path.py:name``, from the installed ``p3s`` package when it is one of its
    modules (already imported by the fork server: no cost), else loaded from the file."""
    path, _, name = entrypoint.rpartition(":")
    rel = Path(path)
    if not rel.is_absolute() and rel.suffix == ".py" and rel.parts[0] in PACKAGE_FOLDERS:
        module = "p3s." + ".".join(rel.with_suffix("").parts)
        with contextlib.suppress(ImportError, AttributeError):
            return getattr(importlib.import_module(module), name)
    from prefect.flows import load_flow_from_entrypoint

    full = rel if rel.is_absolute() else PROJECT_DIR / rel
    return load_flow_from_entrypoint(f"{full}:{name}", use_placeholder_flow=False)


def _flush() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=10)
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=10)


def _kill_own_payloads() -> None:
    """SIGKILL every process group below this process (payloads run in their own)."""
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.kill()


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
    events."""
    if _final.is_set():
        return
    _kill_own_payloads()
    os._exit(ENGINE_ERROR)


def _outlive_pilot() -> None:
    """Once the run is final, a pilot retired or lost must not cut the child's last logs
    and events short (the flush may take seconds): no longer die with the fork server."""
    _final.set()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, 0)


@contextlib.contextmanager
def _suspension_observed_in_background(
    flow_run_id: UUID, suspension_request: Any, polling_interval: float = 10
) -> Iterator[None]:
    """Prefect's suspension observer of a deployment's flow run, without its waits.

    Prefect's engine blocks the start of every deployment run until the observer's events
    websocket is connected (0.3 s on an idle host, over 1 s on a busy one: the largest part of
    a warm pilot's dispatch), and its thread then wakes every 0.2 s to see whether the run
    ended. p3s flows never suspend themselves; the observer (Prefect's own class, as
    ``prefect._flow_run_suspension.observe_flow_run_suspension`` runs it) still watches the
    run from its own thread, but nothing waits for it to be ready, and its loop sleeps until
    the run ends.
    """
    import asyncio
    import contextvars

    from prefect._flow_run_suspension import mark_flow_run_suspension_requested
    from prefect._internal.observers import FlowRunSuspendingObserver

    def mark_suspended(run_id: UUID, state: Any) -> None:
        if not mark_flow_run_suspension_requested(run_id, state):
            suspension_request.mark_requested(state)

    stopped = threading.Event()
    running: dict[str, Any] = {}

    async def observe() -> None:
        wake = asyncio.Event()
        running["stop"] = (asyncio.get_running_loop(), wake)
        if stopped.is_set():
            return
        async with FlowRunSuspendingObserver(
            on_suspended=mark_suspended, polling_interval=polling_interval
        ) as observer:
            await observer.watch_flow_run_id(flow_run_id)
            await wake.wait()

    def run() -> None:
        with contextlib.suppress(Exception):
            asyncio.run(observe())

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        if "stop" in running:
            loop, wake = running["stop"]
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                loop.call_soon_threadsafe(wake.set)


def _heartbeats_not_joined(engine: Any, join_on_exit: bool = True) -> Any:
    """Prefect's flow-run heartbeats, without joining their thread when the run ends.

    Prefect's heartbeat thread sleeps in whole seconds (``time.sleep(1)``) between checks of
    its stop flag, and the sync engine joins it after the final state: every run's end
    waited 0 to 1 s (0.98 s in a profile of 10 empty runs here), a pilot slot held for
    nothing. The thread (a daemon) still stops at its next check and sends no heartbeat
    after the final state.
    """
    from prefect import flow_engine

    return flow_engine._p3s_send_heartbeats(engine, join_on_exit=False)  # type: ignore[attr-defined]


def skip_engine_waits() -> None:
    """Patch the two waits of Prefect's sync flow engine that a pilot's child does not need
    (see :func:`_suspension_observed_in_background` and :func:`_heartbeats_not_joined`), and
    leave SIGTERM to the child's own handler (:func:`_end_as_lost`)."""
    from prefect import flow_engine

    flow_engine.capture_sigterm = contextlib.nullcontext  # type: ignore[assignment]
    flow_engine.observe_flow_run_suspension = _suspension_observed_in_background  # type: ignore[assignment]
    if not hasattr(flow_engine, "_p3s_send_heartbeats"):
        flow_engine._p3s_send_heartbeats = flow_engine._send_heartbeats  # type: ignore[attr-defined]
        flow_engine._send_heartbeats = _heartbeats_not_joined  # type: ignore[assignment]


class _SslWithSharedContexts(types.ModuleType):
    """The ``ssl`` module as Prefect's client module sees it, with ``create_default_context``
    memoised (see :func:`share_tls_contexts`)."""

    def __init__(self) -> None:
        super().__init__("ssl")
        self.create_default_context = functools.lru_cache(maxsize=8)(ssl.create_default_context)

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)


def share_tls_contexts() -> None:
    """Let every Prefect client of this process share one TLS context per CA file.

    Each ``PrefectClient``/``SyncPrefectClient`` builds a fresh ``ssl`` context and loads
    certifi's CA bundle into it, even for plain-HTTP servers: 29 ms of CPU each, and Prefect's
    engine makes three clients per flow run (profiled here: 86 ms of the 328 ms of client CPU
    per run). A context is safe to share between clients; Prefect only ever sets the same
    options on it.
    """
    from prefect.client import orchestration

    if not isinstance(orchestration.ssl, _SslWithSharedContexts):
        orchestration.ssl = _SslWithSharedContexts()  # type: ignore[assignment]


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


#: Kinds of the objects Prefect's events relate a flow run to, as its resource cache keys them.
RELATED_KINDS = ("flow", "deployment", "work-queue", "work-pool")


def prime_related_objects(related: dict[str, Any] | None) -> None:
    """Put the flow, deployment, work queue and work pool of the run (read by the pilot worker,
    cached there) into Prefect's cache of related objects for events: each child otherwise
    reads all four again for its first event (4 of a trivial job's 16 requests)."""
    if not related:
        return
    from prefect.events.related import RESOURCE_CACHE
    from prefect.types._datetime import now

    for key, obj in related.items():
        RESOURCE_CACHE[key] = ({"kind": key.split(".", 1)[0], "object": obj}, now("UTC"))


def claimed_for(state: Any, claim: str) -> bool:
    """Whether a flow run's state is the pilot worker's claim for the execution ``claim``."""
    return state is not None and state.is_pending() and (state.message or "").endswith(claim)


def child_main(
    run_id: str,
    entrypoint: str,
    claim: str,
    pilot: str,
    pilot_pid: int,
    done: Connection | None = None,
    related: dict[str, Any] | None = None,
) -> None:
    """Body of the child process of one flow run (see the module docstring)."""
    _die_with_parent()
    if os.getppid() == 1:  # the fork server died before PR_SET_PDEATHSIG took effect
        os._exit(ENGINE_ERROR)
    threading.Thread(target=_watch_pilot, args=(pilot_pid,), daemon=True).start()
    signal.signal(signal.SIGTERM, _end_as_lost)
    os.environ["P3S_PILOT_NAME"] = pilot
    from prefect.flow_engine import load_flow_run, run_flow
    from prefect.logging.loggers import flow_run_logger

    skip_engine_waits()
    share_tls_contexts()

    flow_run = load_flow_run(UUID(run_id))
    if not claimed_for(flow_run.state, claim):
        sys.exit(NOT_CLAIMED)
    prime_related_objects(related)
    logger = flow_run_logger(flow_run=flow_run)
    code = 0
    try:
        logger.info("p3s pilot %s runs this flow run (child pid %s)", pilot, os.getpid())
        flow = load_entrypoint(entrypoint)
        run_flow(flow, flow_run=flow_run, return_type="state", error_logger=logger)
    except Exception:
        logger.exception("the flow run could not be executed on pilot %s", pilot)
        code = ENGINE_ERROR
    finally:
        # The run has its final state: free the pilot's slot now, and send the last logs and
        # events (a websocket that may take seconds to open) on our own time.
        _outlive_pilot()
        if done is not None:
            with contextlib.suppress(OSError):
                done.send(code)
                done.close()
        _flush()
    sys.exit(code)


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


def cancel_local(run_id: str, grace_s: float = 5.0) -> bool:
    """Stop the child running ``run_id`` on this pilot, if any (called through
    ``Client.run`` on every pilot); returns whether this pilot had it."""
    from p3s.pilots import shared

    if run_id in _shared_runs:
        _cancelled.add(run_id)
        if shared.cancel_local(run_id, grace_s):
            return True
        _cancelled.discard(run_id)
        return False
    proc = _running.get(run_id)
    if proc is None or proc.pid is None:
        return False
    _cancelled.add(run_id)
    # Not on the worker's event loop: the grace period may take seconds.
    threading.Thread(target=stop_tree, args=(proc.pid, grace_s), daemon=True).start()
    return True


def run_on_pilot(
    run_id: str, entrypoint: str, claim: str, related: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Dask task of one flow run: fork its child, wait for it, say how it ended.

    ``claim`` is the Dask key the pilot worker named in its claim (the run's Pending state);
    ``related`` the run's objects for its events (see :func:`prime_related_objects`).

    Returns:
        ``run_id``, ``pilot`` (Dask worker name), ``exit_code`` (negative: killed by that
        signal), ``cancelled`` (stopped by :func:`cancel_local`), ``seconds`` (wall time).
    """
    from distributed import get_worker

    from p3s.pilots import shared

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
    done_r, done_w = ctx.Pipe(duplex=False)  # type: ignore[attr-defined]
    proc = ctx.Process(  # type: ignore[attr-defined]
        target=child_main,
        args=(run_id, entrypoint, claim, pilot, os.getpid(), done_w, related),
        name=f"p3s-run-{run_id}",
    )
    proc.start()
    done_w.close()
    _running[run_id] = proc
    code: int | None = None
    try:
        # Either the child says its run is final (it then flushes logs on its own), or it ends.
        wait([done_r, proc.sentinel])
        if done_r.poll():
            with contextlib.suppress(EOFError, OSError):
                code = done_r.recv()
        if code is None:
            proc.join()
            code = proc.exitcode
    finally:
        done_r.close()
        _running.pop(run_id, None)
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
