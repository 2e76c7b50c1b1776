"""What every process that runs flow runs on a pilot does, whether a flow-run child
(:mod:`p3s.pilots.execute`) or the pilot's shared engine process (:mod:`p3s.pilots.shared`).

Both import this module and neither imports the other's internals: the exit codes they report,
the claim check (exactly once), loading a flow by its entrypoint (as Prefect workers do, never
an import of a flow module by name), priming Prefect's caches with what the pilot worker read,
the two waits of Prefect's engine a pilot does not need, shared TLS contexts, dying with the
fork server, killing the process's own payloads and flushing the last logs and events.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import importlib
import os
import signal
import ssl
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil

from p3s.system.settings import PROJECT_DIR

#: Exit code of a child that found its run no longer Pending (someone else has it).
NOT_CLAIMED = 3
#: Exit code of a child whose flow could not be loaded or whose engine raised.
ENGINE_ERROR = 1
#: Top-level folders of the repository that are importable as ``p3s.<folder>``.
PACKAGE_FOLDERS = ("flows", "tasks")
#: ``prctl`` option: the signal this process gets when its parent exits.
PR_SET_PDEATHSIG = 1
#: Seconds a process waits for its logs, and then its events, to reach the server.
FLUSH_TIMEOUT_S = 10.0


def start_with_pipe(ctx: Any, target: Any, pilot: str, name: str) -> tuple[Any, Any]:
    """Fork ``target(pilot, pilot_pid, conn)`` from the pilot's fork server (``ctx``): the
    started process and the pilot's end of the pipe to it."""
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=target, args=(pilot, os.getpid(), theirs), name=name)
    proc.start()
    theirs.close()
    return proc, ours


def die_with_parent() -> None:
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
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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


def flush_logs_and_events() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=FLUSH_TIMEOUT_S)
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=FLUSH_TIMEOUT_S)


def flush_for_next_run() -> None:
    """Send a run's last logs and events, and keep the events worker, its websocket open, for
    the process's next run (a reused flow-run child): a new one per run cost a connection
    and its handshake. One that does not empty in time is drained as at exit."""
    from concurrent.futures import wait

    from prefect._internal.concurrency.services import _QueueServiceBase
    from prefect.events.worker import EventsWorker

    # Prefect keeps the instances of all its services (log and events workers) in one map.
    services = list(_QueueServiceBase._instances.values())
    events = [s for s in services if isinstance(s, EventsWorker)]
    # The log worker batches: it counts no item done, so it can only be drained (a new one,
    # a thread and a client, is cheap).
    logs = [s._drain() for s in services if not isinstance(s, EventsWorker)]
    wait(logs, timeout=FLUSH_TIMEOUT_S)
    deadline = time.monotonic() + FLUSH_TIMEOUT_S
    for worker in events:
        # An event counts done once the websocket has taken it (or failed to).
        while worker._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
    if any(worker._queue.unfinished_tasks for worker in events):
        with contextlib.suppress(Exception):
            EventsWorker.drain_all(timeout=FLUSH_TIMEOUT_S)


def kill_own_payloads() -> None:
    """SIGKILL every process group below this process (payloads run in their own)."""
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.kill()


class _SuspensionWatcher:
    """One Prefect suspension observer for all the runs of a process.

    Prefect's engine starts an observer per deployment run: its own thread, event loop, API
    client, events websocket (whose every connection makes the server query its events table
    for a backfill) and a read of the run. A pilot's child runs many runs and the shared engine
    many at once: here one observer (Prefect's ``FlowRunSuspendingObserver``) is started on a
    process's first run and then watches each run from its start to its end. It measured about
    a tenth of the server's CPU per DQM run (``bench/orchestration.py``, 2026-12-07). p3s flows
    never suspend themselves; a run suspended from outside is still noticed, and nothing waits
    for the observer to be ready (Prefect's engine blocked each run's start until it was).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[UUID, Any] = {}
        self._started = False
        self._loop: Any = None
        self._observer: Any = None

    @contextlib.contextmanager
    def watching(
        self, flow_run_id: UUID, suspension_request: Any, polling_interval: float = 10
    ) -> Iterator[None]:
        """Prefect's ``observe_flow_run_suspension``: watch ``flow_run_id`` while it runs."""
        with self._lock:
            self._requests[flow_run_id] = suspension_request
            if not self._started:
                self._started = True
                threading.Thread(
                    target=_with_settings_only().run,
                    args=(self._run, polling_interval),
                    daemon=True,
                    name="p3s-suspension",
                ).start()
            self._call(lambda observer: observer.add_in_flight_flow_run_id(flow_run_id))
        try:
            yield
        finally:
            with self._lock:
                self._requests.pop(flow_run_id, None)
                self._call(lambda observer: observer.remove_in_flight_flow_run_id(flow_run_id))

    def _call(self, action: Any) -> None:
        """Run ``action(observer)`` on the observer's loop, once it has one (under the lock)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended
                self._loop.call_soon_threadsafe(action, self._observer)

    def _mark_suspended(self, flow_run_id: UUID, state: Any) -> None:
        from prefect._flow_run_suspension import mark_flow_run_suspension_requested

        if not mark_flow_run_suspension_requested(flow_run_id, state):
            request = self._requests.get(flow_run_id)
            if request is not None:
                request.mark_requested(state)

    def _run(self, polling_interval: float) -> None:
        import asyncio

        with contextlib.suppress(Exception):
            asyncio.run(self._observe(polling_interval))
        with self._lock:  # it could not start (the server away): the next run starts another
            self._started, self._loop, self._observer = False, None, None

    async def _observe(self, polling_interval: float) -> None:
        import asyncio

        from prefect._internal.observers import FlowRunSuspendingObserver

        async with FlowRunSuspendingObserver(
            on_suspended=self._mark_suspended, polling_interval=polling_interval
        ) as observer:
            with self._lock:
                self._loop, self._observer = asyncio.get_running_loop(), observer
                watched = list(self._requests)
            # Runs that began before the websocket was subscribed: their state is read once,
            # so a suspension that came before is not missed (later runs are added as they
            # begin, with the websocket already listening).
            await asyncio.gather(*(observer.watch_flow_run_id(run_id) for run_id in watched))
            await asyncio.Event().wait()  # for the life of the process (a daemon thread)


_suspension_watcher = _SuspensionWatcher()


def _with_settings_only() -> contextvars.Context:
    """A context that holds this thread's Prefect settings (the pilot's handshake among them)
    and nothing of its runs: for a thread that outlives the run that started it."""
    from prefect.context import SettingsContext

    context = contextvars.Context()
    context.run(SettingsContext.__var__.set, SettingsContext.get())
    return context


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
    (see :class:`_SuspensionWatcher` and :func:`_heartbeats_not_joined`), and
    leave SIGTERM to the process's own handler (a child's ``_end_as_lost``, the shared engine's
    ``end``)."""
    from prefect import flow_engine

    flow_engine.capture_sigterm = contextlib.nullcontext  # type: ignore[assignment]
    flow_engine.observe_flow_run_suspension = _suspension_watcher.watching  # type: ignore[assignment]
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
