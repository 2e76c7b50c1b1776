"""Each alarm fires once for its incident, with a useful message, on a real Prefect server.

The alarms are applied to the SQLite stack with a loopback receiver as both the generic JSON
webhook and the Slack/Mattermost-style chat webhook. Then every incident is caused at once:

- two DQM runs (dqm-beam) fail for real on a file that is not HDF5;
- data taking is switched on and one file arrives, then none (a few seconds' window);
- a real purity run and a real TPC monitor run on a simulated file, with thresholds that its
  lifetime (ms) and noisy-channel count cross;
- the TPC monitor run is flagged bad by a data-quality check (noise RMS at most 1 ADC);
- four real stage-outs fail (the destination's parent is a file), threshold three;
- three lost pilots and two below-target reports of a pool are posted as the pilot worker
  posts them (a batch system losing pilots is the pilot tests' business).

One wait collects the notifications (each within 60 s of its incident); a quiet period after
the last one shows that none came twice.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from p3s.payloads.rawformat import Geometry, raw_filename
from p3s.payloads.simulate import simulate_file

from p3s.alarms import apply as alarms_apply
from p3s.files import storage
from p3s.system.settings import Settings, get_settings
from tests.alarms.receiver import Mailbox, Receiver, receiver, smtp_receiver
from tests.conftest import Stack
from tests.dqm.conftest import drain_prefect_clients

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]
ALARMS = [
    "p3s-dqm-lifetime-low",
    "p3s-dqm-noisy-channels",
    "p3s-dqm-quality-bad",
    "p3s-dqm-run-failed",
    "p3s-no-file-arrived",
    "p3s-pilots-below-target",
    "p3s-pilots-lost",
    "p3s-storage-failures",
]
QUALITY_CHECKS = """\
payload: tpc_monitor
version: 1
checks:
  - name: noise-rms
    quantity: mean_rms
    per: plane
    good: [0.0, 1.0]
"""
#: What ``p3s alarms test`` sends (kept apart from the alarms).
TEST_ALARM, TEST_SUBJECT = "p3s-test", "p3s alarm test"
#: Each incident must be notified this soon (s).
DEADLINE_S = 60.0
#: After the last notification, wait this long for duplicates: more than the no-file window
#: (10 s) plus one proactive evaluation period of the triggers service (5 s).
QUIET_S = 16.0


async def _no_run_left(timeout_s: float) -> None:
    """Wait until no flow run of the server is scheduled, pending or running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    live = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    flt = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live)))
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while await client.count_flow_runs(flow_run_filter=flt):
            if time.monotonic() > deadline:
                raise AssertionError(f"flow runs of earlier tests still live after {timeout_s} s")
            await asyncio.sleep(1)


@dataclass
class Fired:
    receiver: Receiver
    mailbox: Mailbox
    settings: Settings
    started: float
    first_apply: list[Any]
    failed_runs: list[Any]
    good_file: str

    def by_alarm(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for body in self.receiver.bodies("/json"):
            if body.get("alarm") != TEST_ALARM:
                found.setdefault(body.get("alarm", "?"), []).append(body)
        return found

    def chat(self) -> list[str]:
        texts = [body["text"] for body in self.receiver.bodies("/chat")]
        return [text for text in texts if not text.startswith(f"p3s alarm: {TEST_SUBJECT}")]

    def mails(self) -> list[tuple[list[str], str, str]]:
        return [mail for mail in self.mailbox.mails if mail[1] != TEST_SUBJECT]


def _simulate(path: Path, run: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    simulate_file(
        path,
        run=run,
        subrun=1,
        n_events=2,
        n_ticks=1500,
        seed=run,
        geometry=Geometry.reduced(n_apas=1, fibers_per_apa=2),
    )
    return path


def _run_flow(payload: str, file_url: str) -> Any:
    """Run one DQM flow in this process as a flow run of the stack's server."""
    from p3s.flows.dqm import DQM_FLOWS

    return DQM_FLOWS[payload](file_url=file_url, return_state=True)


async def _post(events: list[tuple[str, dict[str, str], dict[str, Any]]]) -> None:
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    async with get_events_client() as client:
        for name, resource, payload in events:
            await client.emit(Event(event=name, resource=resource, payload=payload))


def _pilot_events(pool: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """What p3s/pilots/worker.py posts for lost pilots, and the below-target report."""
    events = []
    for n in range(3):
        events.append(
            (
                "p3s.pilot.lost",
                {
                    "prefect.resource.id": f"p3s.pilot.{pool}.pilot-{n}",
                    "prefect.resource.name": f"pilot-{n}",
                    "p3s.pool": pool,
                },
                {
                    "pilot": f"pilot-{n}",
                    "runs": [str(uuid.uuid4())],
                    "reason": "pilot lost (pilotTO): batch job killed, evicted or at its walltime",
                },
            )
        )
    for connected in (1, 0):
        events.append(
            (
                "p3s.pilots.below-target",
                {"prefect.resource.id": f"p3s.pilot-pool.{pool}", "prefect.resource.name": pool},
                {"required": 4, "connected": connected, "starting": 3, "seconds": 120},
            )
        )
    return events


def _storage_failures(folder: Path, count: int) -> None:
    """Real failed stage-outs: the destination's parent folder is a file."""
    source = folder / "product.txt"
    source.write_text("a product\n")
    blocker = folder / "not-a-folder"
    blocker.write_text("")
    for n in range(count):
        with pytest.raises(storage.StorageUnavailable):
            storage.stage_out(source, storage.url_for(blocker) + f"/out-{n}.txt", attempts=1)


@pytest.fixture(scope="module")
def fired(stack: Stack) -> Iterator[Fired]:
    env = {
        "P3S_ALARMS__WEBHOOK_URL": "",
        "P3S_ALARMS__COOLDOWN_SECONDS": "300",
        "P3S_ALARMS__NO_FILE_SECONDS": "10",
        "P3S_ALARMS__PILOTS_LOST_COUNT": "2",
        "P3S_ALARMS__STORAGE_FAILURES_COUNT": "3",
        "P3S_ALARMS__STORAGE_WINDOW_SECONDS": "120",
        "P3S_ALARMS__LIFETIME_MIN_MS": "1000",
        "P3S_ALARMS__NOISY_CHANNELS_MAX": "0",
        "P3S_STORAGE__ATTEMPTS": "1",
        # Data-quality checks of the TPC monitor only, one that its run fails (noise RMS per
        # plane at most 1 ADC): one bad flag, for APA 0 of run 72.
        "P3S_DQM_CHECKS_DIR": "",
    }
    with receiver() as rx, smtp_receiver() as mail, pytest.MonkeyPatch.context() as mp:
        env["P3S_ALARMS__WEBHOOK_URL"] = f"{rx.url}/json"
        env["P3S_ALARMS__CHAT_URL"] = f"{rx.url}/chat"
        env["P3S_ALARMS__SMTP_HOST"] = mail.host
        env["P3S_ALARMS__SMTP_PORT"] = str(mail.port)
        env["P3S_ALARMS__EMAIL_TO"] = '["shifter@np04.test"]'
        checks = Path(tempfile.mkdtemp(prefix="p3s-checks-"))
        (checks / "tpc_monitor.yaml").write_text(QUALITY_CHECKS)
        env["P3S_DQM_CHECKS_DIR"] = str(checks)
        for key, value in env.items():
            mp.setenv(key, value)
        get_settings.cache_clear()  # this process now works for the stack, with these alarms
        settings = get_settings()
        folder = settings.data / "alarms-test"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            # Runs that earlier tests left behind would raise alarms of their own (a corrupt
            # file of the UI tests fails on another flow: another incident); let them end.
            asyncio.run(_no_run_left(300))
            # `p3s up` applied the alarms (no target): start from none, to see them created.
            asyncio.run(alarms_apply.delete_all())
            first = asyncio.run(alarms_apply.apply(settings, prune=True))
            started = time.monotonic()
            # Data taking on, one file, then silence: the no-file window runs meanwhile.
            asyncio.run(alarms_apply.set_datataking(settings, True))
            asyncio.run(
                _post(
                    [
                        (
                            "p3s.file.arrived",
                            {
                                "prefect.resource.id": "p3s.file.alarm-test.h5",
                                "p3s.file.url": "file:///inbox/alarm-test.h5",
                                "p3s.datatype": "alarm-test",
                            },
                            {"url": "file:///inbox/alarm-test.h5"},
                        ),
                        *_pilot_events("p3s-pilots-test"),
                    ]
                )
            )
            not_hdf5 = folder / raw_filename(71, 1)
            not_hdf5.write_text("run,subrun\n71,1\n" * 100)
            failed = [_run_flow("beam", storage.url_for(not_hdf5)) for _ in range(2)]
            _storage_failures(folder, 4)
            good = _simulate(folder / raw_filename(72, 1), 72)
            for payload in ("purity", "tpc_monitor"):
                state = _run_flow(payload, storage.url_for(good))
                assert state.is_completed(), (payload, state.message)
            drain_prefect_clients()

            def everything() -> bool:
                found = Fired(rx, mail, settings, 0, [], [], "").by_alarm()
                return set(found) >= set(ALARMS) and len(mail.mails) >= len(ALARMS)

            rx.wait_until(everything, DEADLINE_S - (time.monotonic() - started))
            count = len(rx.posts) + len(mail.mails)
            while True:  # quiet period: nothing more arrives
                time.sleep(QUIET_S)
                if len(rx.posts) + len(mail.mails) == count:
                    break
                count = len(rx.posts) + len(mail.mails)
            yield Fired(rx, mail, settings, started, first, failed, storage.url_for(good))
        finally:
            asyncio.run(alarms_apply.set_datataking(settings, False))
            asyncio.run(alarms_apply.delete_all())
            get_settings.cache_clear()


def test_apply_creates_then_leaves_unchanged_then_updates_a_changed_alarm(fired: Fired) -> None:
    assert {c.name: c.action for c in fired.first_apply} == dict.fromkeys(ALARMS, "created")
    again = asyncio.run(alarms_apply.apply(fired.settings))
    assert {c.name: c.action for c in again} == dict.fromkeys(ALARMS, "unchanged")
    changed = fired.settings.model_copy(deep=True)
    changed.alarms.noisy_channels_max = 7
    updated = {c.name: c.action for c in asyncio.run(alarms_apply.apply(changed))}
    assert updated.pop("p3s-dqm-noisy-channels") == "updated"
    assert set(updated.values()) == {"unchanged"}
    asyncio.run(alarms_apply.apply(fired.settings))


def test_prune_deletes_only_p3s_alarms_no_document_names(fired: Fired, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    async def create(name: str, tags: list[str]) -> None:
        async with get_client() as client:
            await client.create_automation(
                AutomationCore.model_validate(
                    {
                        "name": name,
                        "tags": tags,
                        "trigger": {"type": "event", "expect": ["p3s.nothing"]},
                        "actions": [{"type": "do-nothing"}],
                    }
                )
            )

    asyncio.run(create("p3s-retired-alarm", ["p3s-alarm"]))
    asyncio.run(create("someone-elses", []))
    changes = asyncio.run(alarms_apply.apply(fired.settings, prune=True))
    assert [c.name for c in changes if c.action == "deleted"] == ["p3s-retired-alarm"]

    async def names() -> set[str]:
        async with get_client() as client:
            return {a.name for a in await client.read_automations()}

    assert "someone-elses" in asyncio.run(names())


def test_each_alarm_fires_exactly_once_for_its_incident(fired: Fired) -> None:
    found = fired.by_alarm()
    assert {name: len(bodies) for name, bodies in found.items()} == dict.fromkeys(ALARMS, 1)
    assert sorted(fired.chat()) == sorted(
        f"p3s alarm: {bodies[0]['subject']}\n{bodies[0]['message']}" for bodies in found.values()
    ), "the chat webhook got the same alarms, as {'text': ...}"
    mails = sorted((to, subject, body.strip()) for to, subject, body in fired.mails())
    assert mails == sorted(
        (["shifter@np04.test"], bodies[0]["subject"], bodies[0]["message"])
        for bodies in found.values()
    ), "every alarm was e-mailed once, with the same subject and message"


def test_the_server_triggered_each_alarm_once_and_no_action_failed(fired: Fired) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async def events() -> list[Any]:
        names = ["prefect.automation.triggered", "prefect.automation.action.failed"]
        async with get_client() as client:
            page = await client.read_events(
                EventFilter(
                    event=EventNameFilter(name=names),
                    # This module's automations only: earlier tests' runs fired the ones of
                    # the same names that `p3s up` applied.
                    resource=EventResourceFilter(
                        id=[f"prefect.automation.{change.id}" for change in fired.first_apply]
                    ),
                ),
                50,
            )
            return page.events

    counts: dict[tuple[str, str], int] = {}
    for event in asyncio.run(events()):
        name = event.resource.get("prefect.resource.name", "")
        if name in ALARMS:
            key = (event.event, name)
            counts[key] = counts.get(key, 0) + 1
    assert counts == {("prefect.automation.triggered", name): 1 for name in ALARMS}


def test_a_failed_dqm_run_alarm_names_the_run_its_fault_and_links_to_it(fired: Fired) -> None:
    (body,) = fired.by_alarm()["p3s-dqm-run-failed"]
    run_ids = {str(state.state_details.flow_run_id) for state in fired.failed_runs}
    assert body["event"] == "prefect.flow-run.Corrupt", "a Failed state named Corrupt"
    assert "dqm-beam: np04_raw_run000071_0001_dl1.h5" in body["subject"]
    assert "not an HDF5 file" in body["message"]
    links = [run_id for run_id in run_ids if f"/runs/flow-run/{run_id}" in body["message"]]
    assert len(links) == 1, body["message"]


def test_the_no_file_alarm_names_the_last_file(fired: Fired) -> None:
    (body,) = fired.by_alarm()["p3s-no-file-arrived"]
    assert body["subject"] == "No file arrived for 10.0 s"
    assert "Last file: file:///inbox/alarm-test.h5" in body["message"]


def test_dqm_value_alarms_give_the_value_threshold_and_place(fired: Fired) -> None:
    (lifetime,) = fired.by_alarm()["p3s-dqm-lifetime-low"]
    assert "< 1000.0 ms (TPC 1, run 72)" in lifetime["subject"]
    assert "/runs/flow-run/" in lifetime["message"]
    assert "p3s dqm purity --run 72" in lifetime["message"]
    assert float(lifetime["payload"]["value"]) < 1000
    (noisy,) = fired.by_alarm()["p3s-dqm-noisy-channels"]
    assert "noisy channels > 0 (APA 0 plane" in noisy["subject"]
    assert noisy["payload"]["value"] > 0


def test_a_bad_quality_flag_alarms_once_for_its_run_and_apa_with_the_reason(fired: Fired) -> None:
    (bad,) = fired.by_alarm()["p3s-dqm-quality-bad"]
    assert bad["subject"].startswith("Run 72 APA 0 flagged bad: mean_rms in APA 0 plane ")
    assert "ADC, above the limit 1 ADC (noise-rms)." in bad["subject"]
    assert "Data quality of run 72, APA 0: bad (was not evaluated)." in bad["message"]
    assert "p3s dqm checks --run 72 --problems" in bad["message"]
    assert bad["resource"]["prefect.resource.id"] == "p3s.dqm.quality.run000072.apa-0"


def test_pilot_and_storage_alarms_say_what_to_look_at(fired: Fired) -> None:
    (lost,) = fired.by_alarm()["p3s-pilots-lost"]
    assert lost["subject"] == "Pilots lost in pool p3s-pilots-test"
    assert re.search(r"the latest: pilot-\d \(pilot lost \(pilotTO\)", lost["message"])
    assert "condor_q" in lost["message"]
    (short,) = fired.by_alarm()["p3s-pilots-below-target"]
    # Two reports of one incident (1, then 0 connected): the alarm fires once, with the values
    # of whichever the server's trigger saw first (one may precede the automation's load).
    assert re.search(r"\b[01] pilots connected, 4 required, 3 waiting to start", short["message"])
    (failures,) = fired.by_alarm()["p3s-storage-failures"]
    assert failures["subject"] == "Storage failures on local"
    assert re.search(r"staging out to it file://\S+/not-a-folder/out-\d\.txt", failures["message"])
    assert "storage unavailable" in failures["message"]


def test_the_cli_lists_applies_and_reports_data_taking(fired: Fired) -> None:
    from typer.testing import CliRunner

    from p3s.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    listed = runner.invoke(app, ["alarms", "list"])
    assert listed.exit_code == 0, listed.output
    assert all(name in listed.output for name in ALARMS)
    applied = runner.invoke(app, ["alarms", "apply"])
    assert applied.exit_code == 0, applied.output
    assert applied.output.count("unchanged") == len(ALARMS), applied.output
    status = runner.invoke(app, ["alarms", "datataking", "status"])
    assert status.output.strip() == "data taking is on"


def test_the_cli_sends_a_test_notification_to_every_target(fired: Fired) -> None:
    from typer.testing import CliRunner

    from p3s.cli import app

    result = CliRunner().invoke(app, ["alarms", "test"])
    assert result.exit_code == 0, result.output
    assert "sent a test notification to: json, chat, email" in result.output
    (generic,) = [b for b in fired.receiver.bodies("/json") if b.get("alarm") == TEST_ALARM]
    assert generic["subject"] == TEST_SUBJECT and "nothing is wrong" in generic["message"]
    chat = [b["text"] for b in fired.receiver.bodies("/chat")]
    assert sum(text.startswith(f"p3s alarm: {TEST_SUBJECT}\n") for text in chat) == 1
    assert [m[0] for m in fired.mailbox.mails if m[1] == TEST_SUBJECT] == [["shifter@np04.test"]]
