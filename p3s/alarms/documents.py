"""The alarm documents of ``automations/`` and the automations they render into.

One YAML document per alarm, in the shape of Prefect's automations API (``AutomationCore``:
``name``, ``description``, ``trigger``; ``enabled`` and ``tags`` are set here) plus two p3s keys:

- ``notify``: ``subject`` and ``body``, Prefect Jinja templates rendered by the server when the
  alarm fires (``event``, ``flow_run``, ``labels`` ... are in their context); ``p3s alarms
  apply`` turns them into one action per configured target (:mod:`p3s.alarms.targets`);
- ``datataking: true``: the alarm is enabled only while data taking is on.

``${name}`` placeholders take the alarm settings (``${cooldown_seconds}``, ``${lifetime_min_ms}``
...) and a few derived values (``${lifetime_below}``: the glob patterns of lifetimes below the
threshold, ``${noisy_above}``, ``${dqm_flows}``) when the document is rendered.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from p3s.alarms.ranges import DECIMALS, above_patterns, below_patterns
from p3s.alarms.targets import Target
from p3s.system.datatypes import DQM_DEPLOYMENTS
from p3s.system.settings import PROJECT_DIR, AlarmSettings

FOLDER = PROJECT_DIR / "automations"
#: Tag of every automation ``p3s alarms`` owns (``--prune`` deletes only these).
TAG = "p3s-alarm"
_CORE_KEYS = {"name", "description", "trigger", "actions_on_trigger", "actions_on_resolve"}
_P3S_KEYS = {"notify", "datataking"}


@dataclass(frozen=True)
class Alarm:
    """One alarm document, rendered: the automation to apply and where it came from."""

    path: Path
    automation: Any  # prefect.events.schemas.automations.AutomationCore
    datataking: bool

    @property
    def name(self) -> str:
        return str(self.automation.name)


def placeholders(alarms: AlarmSettings) -> dict[str, str]:
    """The values of ``${name}`` in alarm documents, as YAML text."""
    values = {key: json.dumps(value) for key, value in alarms.model_dump().items()}
    values["lifetime_below"] = json.dumps(
        below_patterns(alarms.lifetime_min_ms, DECIMALS["lifetime_ms"])
    )
    values["noisy_above"] = json.dumps(
        above_patterns(alarms.noisy_channels_max, DECIMALS["noisy_channels"])
    )
    values["dqm_flows"] = json.dumps(sorted(d.split("/")[0] for d in DQM_DEPLOYMENTS.values()))
    return values


def _jinja_set(variable: str, template: str) -> str:
    return f"{{% set {variable} %}}{template.strip()}{{% endset %}}"


def webhook_payload(kind: str, alarm: str, subject: str, body: str) -> str:
    """The payload template of a ``call-webhook`` action: generic JSON or chat text."""
    head = _jinja_set("subject", subject) + _jinja_set("message", body)
    if kind == "chat":
        text = _jinja_set("text", "p3s alarm: {{ subject }}\n{{ message }}")
        return head + text + '{"text": {{ text | tojson }}}'
    return head + (
        "{"
        f'"alarm": {json.dumps(alarm)}, '
        '"subject": {{ subject | tojson }}, '
        '"message": {{ message | tojson }}'
        "{% if event %}, "
        '"event": {{ event.event | tojson }}, '
        '"occurred": {{ event.occurred | string | tojson }}, '
        '"resource": {{ event.resource | tojson }}, '
        '"payload": {{ event.payload | tojson }}, '
        '"event_url": {{ event.url | tojson }}'
        "{% endif %}}"
    )


def actions(alarm: str, notify: dict[str, str], targets: list[Target]) -> list[dict[str, Any]]:
    """One action per target, each carrying the alarm's subject and body."""
    subject, body = notify["subject"], notify["body"]
    out: list[dict[str, Any]] = []
    for target in targets:
        block = str(target.block_document_id)
        if target.kind == "email":
            out.append(
                {
                    "type": "send-notification",
                    "block_document_id": block,
                    "subject": subject.strip(),
                    "body": body.strip(),
                }
            )
        else:
            payload = webhook_payload(target.kind, alarm, subject, body)
            out.append({"type": "call-webhook", "block_document_id": block, "payload": payload})
    return out


def render(path: Path, alarms: AlarmSettings, targets: list[Target], datataking_on: bool) -> Alarm:
    """Read one alarm document and render it into an automation.

    Raises:
        ValueError: the document names an unknown placeholder or key, or is not a valid
            automation (the message names the file).
    """
    from prefect.events.schemas.automations import AutomationCore

    try:
        text = string.Template(path.read_text()).substitute(placeholders(alarms))
    except KeyError as exc:
        raise ValueError(f"{path}: unknown placeholder ${{{exc.args[0]}}}") from None
    document = yaml.safe_load(text) or {}
    unknown = set(document) - _CORE_KEYS - _P3S_KEYS
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_CORE_KEYS | _P3S_KEYS)}"
        )
    notify = document.pop("notify", None)
    if not notify or set(notify) != {"subject", "body"}:
        raise ValueError(f"{path}: notify must give a subject and a body template")
    datataking = bool(document.pop("datataking", False))
    document["enabled"] = datataking_on or not datataking
    document["tags"] = [TAG]
    document["actions"] = actions(document["name"], notify, targets)
    try:
        automation = AutomationCore.model_validate(document)
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid automation: {exc}") from exc
    return Alarm(path, automation, datataking)


def load(
    alarms: AlarmSettings,
    targets: list[Target],
    *,
    datataking_on: bool,
    folder: Path = FOLDER,
) -> list[Alarm]:
    """Every alarm document of ``folder`` (``*.yaml``), rendered, in name order.

    Raises:
        ValueError: a document is invalid, or two documents share a name.
    """
    rendered = [render(p, alarms, targets, datataking_on) for p in sorted(folder.glob("*.yaml"))]
    names = [a.name for a in rendered]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{folder}: alarm names used twice: {duplicates}")
    return rendered
