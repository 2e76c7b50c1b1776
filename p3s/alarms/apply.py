"""Apply the alarm documents to the Prefect server: create, update, leave alone, prune.

Automations are matched by name. One is updated when anything of it (trigger, actions,
description, enabled) differs from its document; ``prune`` deletes automations tagged
``p3s-alarm`` that no document names any more. Other automations (the deployments' event
triggers, anything made in the UI) are never touched.

Data taking (the no-file alarm) is the Prefect variable ``p3s-datataking`` (``on``/``off``,
off when missing): alarms whose document says ``datataking: true`` are enabled only while it is
on. :func:`set_datataking` switches it, enables or pauses those automations and emits
``p3s.datataking.started``/``stopped``, from which the no-file alarm starts counting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p3s.alarms import documents
from p3s.alarms.targets import save_targets
from p3s.system.settings import Settings

DATATAKING_VARIABLE = "p3s-datataking"


@dataclass(frozen=True)
class Change:
    """What apply did to one automation."""

    name: str
    action: str  # created, updated, unchanged, deleted
    id: str


def _comparable(automation: Any) -> dict[str, Any]:
    """The fields of an automation its document decides, as Python values.

    Not as JSON: a trigger's ``after``/``expect``/``for_each`` are sets, whose JSON order
    depends on the order their items were added and on the process's hash seed; the server's
    copy and the document's then differed in one process in ten.
    """
    from prefect.events.schemas.automations import AutomationCore

    core = AutomationCore.model_validate(automation.model_dump())
    return core.model_dump(exclude={"owner_resource"})


async def datataking_on() -> bool:
    from prefect.variables import Variable

    return str(await Variable.aget(DATATAKING_VARIABLE, default="off")).lower() == "on"


async def owned_automations() -> list[Any]:
    """Every automation tagged ``p3s-alarm`` on the server."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return [a for a in await client.read_automations() if documents.TAG in (a.tags or [])]


async def apply(
    settings: Settings, *, prune: bool = False, folder: Path | None = None
) -> list[Change]:
    """Make the server's alarms what the documents say; return what changed, in name order."""
    from prefect.client.orchestration import get_client

    targets = await save_targets(settings.alarms)
    alarms = documents.load(
        settings.alarms,
        targets,
        datataking_on=await datataking_on(),
        folder=folder or documents.FOLDER,
    )
    changes: list[Change] = []
    async with get_client() as client:
        existing = {a.name: a for a in await client.read_automations()}
        for alarm in alarms:
            found = existing.get(alarm.name)
            if found is None:
                new_id = await client.create_automation(alarm.automation)
                changes.append(Change(alarm.name, "created", str(new_id)))
            elif _comparable(found) != _comparable(alarm.automation):
                await client.update_automation(found.id, alarm.automation)
                changes.append(Change(alarm.name, "updated", str(found.id)))
            else:
                changes.append(Change(alarm.name, "unchanged", str(found.id)))
        if prune:
            wanted = {a.name for a in alarms}
            for automation in existing.values():
                if documents.TAG in (automation.tags or []) and automation.name not in wanted:
                    await client.delete_automation(automation.id)
                    changes.append(Change(automation.name, "deleted", str(automation.id)))
    return sorted(changes, key=lambda c: c.name)


async def delete_all() -> list[Change]:
    """Delete every automation tagged ``p3s-alarm``."""
    from prefect.client.orchestration import get_client

    changes = []
    async with get_client() as client:
        for automation in await owned_automations():
            await client.delete_automation(automation.id)
            changes.append(Change(automation.name, "deleted", str(automation.id)))
    return changes


async def set_datataking(
    settings: Settings, on: bool, *, folder: Path | None = None
) -> list[Change]:
    """Switch data taking on or off: the variable, the alarms that need it, and an event.

    The alarms that need data taking are resumed or paused where they exist (``apply``
    creates missing ones with the same state).
    """
    from prefect.client.orchestration import get_client
    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.variables import Variable

    await Variable.aset(DATATAKING_VARIABLE, "on" if on else "off", overwrite=True)
    needing = {
        alarm.name
        for alarm in documents.load(
            settings.alarms, [], datataking_on=on, folder=folder or documents.FOLDER
        )
        if alarm.datataking
    }
    changes = []
    async with get_client() as client:
        for automation in await owned_automations():
            if automation.name not in needing:
                continue
            if automation.enabled == on:
                changes.append(Change(automation.name, "unchanged", str(automation.id)))
                continue
            if on:
                await client.resume_automation(automation.id)
            else:
                await client.pause_automation(automation.id)
            changes.append(Change(automation.name, "updated", str(automation.id)))
    async with get_events_client() as events:
        await events.emit(
            Event(
                event="p3s.datataking.started" if on else "p3s.datataking.stopped",
                resource={
                    "prefect.resource.id": "p3s.datataking",
                    "prefect.resource.name": "data taking",
                },
            )
        )
    return changes


async def send_test(settings: Settings) -> list[str]:
    """Send a test notification straight to every configured target; return what was sent."""
    from p3s.alarms.targets import target_blocks

    sent = []
    subject = "p3s alarm test"
    body = "A test of the p3s alarm targets (p3s alarms test); nothing is wrong."
    for kind, block in target_blocks(settings.alarms).items():
        if kind == "email":
            await block.notify(body, subject)
        else:
            payload = documents.webhook_payload(kind, "p3s-test", subject, body)
            response = await block.call(_render_plain(payload, subject, body))
            response.raise_for_status()
        sent.append(kind)
    return sent


def _render_plain(template: str, subject: str, body: str) -> str:
    """Render a webhook payload template without an event (for the test notification)."""
    from prefect.server.utilities.user_templates import render_user_template_sync

    return render_user_template_sync(
        template,
        {
            "event": {
                "event": "p3s.alarm.test",
                "occurred": "",
                "resource": {},
                "payload": {},
                "url": None,
            }
        },
    )
