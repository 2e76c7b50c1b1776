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
import multiprocessing
import os
import signal
import sys
import threading
import time
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
    flush_logs_and_events,
    kill_own_payloads,
    load_entrypoint,
    prime_related_objects,
    share_tls_contexts,
    skip_engine_waits,
)
from p3s.system.pidwait import wait_for_exit

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
    kill_own_payloads()
    os._exit(ENGINE_ERROR)


def _outlive_pilot() -> None:
    """Once the run is final, a pilot retired or lost must not cut the child's last logs
    and events short (the flush may take seconds): no longer die with the fork server."""
    _final.set()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, 0)


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
    die_with_parent()
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
        flush_logs_and_events()
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
