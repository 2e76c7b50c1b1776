"""The file life cycle: claimed/ -> used/ once every DQM flow reported, quarantine/ with a reason
when any reported the file corrupt; idempotent, safe when runs race. Local and XRootD."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from p3s.files.lifecycle import Layout, record_outcome, settle, sweep
from p3s.system.datatypes import DQM_DEPLOYMENTS
from p3s.system.settings import InboxSettings, Settings
from tests.inbox.conftest import Recorder, put, raw_name

PAYLOADS = list(DQM_DEPLOYMENTS)


def _settings(tmp_path: Path, layout: Layout) -> Settings:
    return Settings(home=tmp_path / "home", inbox=InboxSettings(root_url=layout.root))


def _none(_: str) -> dict[str, str]:
    return {}


def test_a_file_moves_to_used_once_all_four_flows_reported_and_again_changes_nothing(
    layout, tmp_path: Path
) -> None:
    layout, _ = layout
    settings = _settings(tmp_path, layout)
    name = raw_name(1)
    put(layout, name, stage="claimed")
    for payload in PAYLOADS[:3]:
        result = settle(settings, name, payload=payload, outcome="completed", extra_outcomes=_none)
        assert result.action == "waiting"
    assert "beam" in result.reason
    outcome = "failed"  # a failed (not corrupt) run still counts as finished
    result = settle(settings, name, payload="beam", outcome=outcome, extra_outcomes=_none)
    assert result.action == "used"
    assert layout.where(name) == "used"
    again = settle(settings, name, payload="beam", outcome="completed", extra_outcomes=_none)
    assert again.action == "already used"
    assert layout.claimed.names() == set() and layout.quarantine.names() == set()


def test_a_corrupt_file_goes_to_quarantine_with_a_reason_and_nothing_else_moves(
    layout, tmp_path: Path
) -> None:
    layout, _ = layout
    settings = _settings(tmp_path, layout)
    bad, other = raw_name(2), raw_name(3)
    put(layout, bad, b"garbage", stage="claimed")
    put(layout, other, b"good data", stage="claimed")
    put(layout, raw_name(4), b"used before", stage="used")
    for payload in PAYLOADS:
        settle(
            settings,
            bad,
            payload=payload,
            outcome="corrupt",
            reason=f"corrupt input {bad}: not an HDF5 file",
            extra_outcomes=_none,
        )
    assert layout.quarantine.names() == {bad, f"{bad}.reason"}
    reason = layout.quarantine.read_text(f"{bad}.reason")
    assert reason.startswith(f"{bad} is unreadable")
    assert reason.count("not an HDF5 file") == 4
    assert layout.claimed.names() == {other}
    assert layout.used.names() == {raw_name(4)}
    fs, path = layout.claimed.fs()
    with fs.open(f"{path}/{other}", "rb") as handle:
        assert handle.read() == b"good data"


def test_a_claimed_file_whose_namesake_is_in_used_goes_to_quarantine_not_held_in_claimed(
    layout, tmp_path: Path
) -> None:
    layout, _ = layout
    settings = _settings(tmp_path, layout)
    name = raw_name(8)
    put(layout, name, b"processed before", stage="used")
    put(layout, name, b"claimed again", stage="claimed")
    for payload in PAYLOADS:
        result = settle(settings, name, payload=payload, outcome="completed", extra_outcomes=_none)
    assert result.action == "quarantine" and "delivered again" in result.reason
    assert layout.claimed.names() == set()
    assert layout.quarantine.names() == {name, f"{name}.reason"}
    assert "processed already" in layout.quarantine.read_text(f"{name}.reason")
    fs, path = layout.used.fs()
    with fs.open(f"{path}/{name}", "rb") as handle:
        assert handle.read() == b"processed before"
    # A third copy, with namesakes in both used/ and quarantine/, is held and says why.
    put(layout, name, b"third copy", stage="claimed")
    for payload in PAYLOADS:
        held = settle(settings, name, payload=payload, outcome="completed", extra_outcomes=_none)
    assert held.action == "held in claimed" and "exists already" in held.reason
    assert layout.claimed.names() == {name}


def test_concurrent_runs_for_one_file_move_it_exactly_once(layout, tmp_path: Path) -> None:
    layout, _ = layout
    settings = _settings(tmp_path, layout)
    name = raw_name(5)
    put(layout, name, stage="claimed")
    start = threading.Barrier(len(PAYLOADS))
    results = []

    def report(payload: str) -> None:
        start.wait()
        results.append(
            settle(settings, name, payload=payload, outcome="completed", extra_outcomes=_none)
        )

    threads = [threading.Thread(target=report, args=(p,)) for p in PAYLOADS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    actions = sorted(r.action for r in results)
    assert actions.count("used") == 1, actions
    assert set(actions) <= {"used", "waiting", "already used"}
    assert layout.where(name) == "used"


def test_a_move_whose_destination_folder_appears_meanwhile_still_moves(
    tmp_path: Path, monkeypatch
) -> None:
    """The race CI met: the rename fails for want of used/, and a concurrent run creates used/
    before this one looks; the source is still there, so this run must move it, not report
    that another run did."""
    import os

    from p3s.files import lifecycle

    layout = Layout(f"file://{tmp_path / 'data'}")
    name = raw_name(8)
    put(layout, name, stage="claimed")
    real_rename = os.rename
    calls = []

    def rename_racing_a_mkdir(src: str, dst: str) -> None:
        calls.append(src)
        if len(calls) == 1:
            os.makedirs(os.path.dirname(dst))  # the other run's makedirs, in between
            raise FileNotFoundError(dst)
        real_rename(src, dst)

    monkeypatch.setattr(lifecycle.os, "rename", rename_racing_a_mkdir)
    assert lifecycle.move(layout.claimed, layout.used, name) is True
    assert layout.where(name) == "used" and len(calls) == 2
    # A source that is really gone is reported as such.
    assert lifecycle.move(layout.claimed, layout.used, raw_name(9)) is False


def test_the_sweep_settles_files_whose_outcomes_the_catalog_holds(tmp_path: Path) -> None:
    from p3s.dqm.catalog import catalog_outcomes, open_catalog

    layout = Layout(f"file://{tmp_path / 'data'}")
    settings = _settings(tmp_path, layout)
    name = raw_name(6)
    put(layout, name, stage="claimed")
    put(layout, raw_name(7), stage="claimed")  # no outcomes yet: stays
    catalog = open_catalog(settings.catalog)

    for payload in PAYLOADS:
        catalog.record_payload(
            name,
            payload,
            file_url=layout.claimed.child(name),
            run=6,
            subrun=1,
            outcome="completed",
            reason="fine",
            flow_run_id="00000000-0000-0000-0000-000000000000",
            started=datetime.now(UTC),
        )
    assert sweep(settings) == []  # the life cycle reads no catalog of its own
    moved = sweep(settings, partial(catalog_outcomes, settings))  # as `p3s inbox watch` does
    assert [m.name for m in moved] == [name]
    assert layout.used.names() == {name} and layout.claimed.names() == {raw_name(7)}


def test_a_file_the_watchs_sweep_quarantines_is_announced_once(tmp_path: Path, monkeypatch) -> None:
    """The sweep may settle a file before its last life-cycle run does (the catalog already
    holds every outcome): the quarantine is then announced by the watch, once."""
    from p3s.files import inbox

    monkeypatch.setattr(inbox, "SWEEP_SECONDS", 0.0)
    settings = Settings(home=tmp_path / "home")
    settings.inbox.poll_seconds = 0.2
    layout = Layout.of(settings)
    name = raw_name(8)
    put(layout, name, stage="claimed")
    for payload in PAYLOADS:
        settle(settings, name, payload=payload, outcome="corrupt", reason="not HDF5")
    assert layout.where(name) == "quarantine"  # the last settle moved it: no sweep needed
    late = raw_name(9)
    put(layout, late, stage="claimed")
    for payload in PAYLOADS[:-1]:
        settle(settings, late, payload=payload, outcome="corrupt", reason="truncated")
    # The last payload's outcome reaches only the records (its life-cycle run is still queued).
    record_outcome(layout, late, PAYLOADS[-1], "corrupt", "truncated")
    recorder = Recorder()
    stop = threading.Event()
    thread = threading.Thread(
        target=inbox.watch,
        args=(settings, lambda _: None),
        kwargs={"emit": recorder, "stop": stop.is_set},
    )
    thread.start()
    try:
        for _ in range(300):
            if layout.where(late) == "quarantine":
                break
            threading.Event().wait(0.1)
        threading.Event().wait(1.0)  # further sweeps find nothing more to say
    finally:
        stop.set()
        thread.join(30)
    assert layout.where(late) == "quarantine"
    said = [e for e in recorder.events if e["event"] == "p3s.file.quarantined"]
    assert [e["resource"]["p3s.file.name"] for e in said] == [late]
    assert "truncated" in said[0]["payload"]["reason"]


def test_the_demo_delivers_a_subrun_not_delivered_before(tmp_path: Path) -> None:
    from p3s.stack.demo import free_subrun

    layout = Layout(f"file://{tmp_path / 'data'}")
    settings = _settings(tmp_path, layout)
    assert free_subrun(settings, 1) == 1
    put(layout, raw_name(1, 1), stage="used")
    put(layout, raw_name(1, 2), stage="quarantine")
    put(layout, raw_name(2, 3), stage="claimed")  # another run: no bearing on run 1
    assert free_subrun(settings, 1) == 3
    assert free_subrun(settings, 2) == 1


def test_p3s_inbox_watch_sweeps_with_the_catalogs_outcomes(tmp_path: Path, monkeypatch) -> None:
    """The watch that `p3s up` starts gives its sweep the DQM catalog: a file whose life-cycle
    tasks all failed, but whose runs are in the catalog, is settled by it."""
    import os
    import signal
    import time

    from typer.testing import CliRunner

    from p3s.cli import app
    from p3s.dqm.catalog import open_catalog
    from p3s.files import inbox
    from p3s.system.settings import get_settings

    saved_env = dict(os.environ)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(inbox, "SWEEP_SECONDS", 0.0)
    monkeypatch.setenv("P3S_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("P3S_INBOX__POLL_SECONDS", "0.2")
    monkeypatch.setenv("P3S_INBOX__NOTIFY", "false")
    get_settings.cache_clear()
    settings = get_settings()
    layout = Layout.of(settings)
    name = raw_name(6)
    put(layout, name, stage="claimed")
    for payload in PAYLOADS:
        open_catalog(settings.catalog).record_payload(
            name,
            payload,
            file_url=layout.claimed.child(name),
            run=6,
            subrun=1,
            outcome="completed",
            reason="fine",
            flow_run_id="00000000-0000-0000-0000-000000000000",
            started=datetime.now(UTC),
        )

    def stop_once_settled() -> None:
        for _ in range(300):
            if layout.where(name) == "used":
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # the watch's own handler: it ends its loop

    stopper = threading.Thread(target=stop_once_settled)
    stopper.start()
    try:
        result = CliRunner().invoke(app, ["inbox", "watch"])
    finally:
        stopper.join(60)
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        os.environ.clear()
        os.environ.update(saved_env)
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert layout.where(name) == "used"
