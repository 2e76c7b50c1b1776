"""Alarm documents render into valid automations; thresholds become exact glob patterns."""

from __future__ import annotations

import fnmatch
import json
import random
import uuid

import pytest

from p3s.alarms import documents
from p3s.alarms.ranges import above_patterns, below_patterns, sortable
from p3s.alarms.targets import Target
from p3s.system.settings import AlarmSettings

TARGETS = [
    Target("json", uuid.uuid4()),
    Target("chat", uuid.uuid4()),
    Target("email", uuid.uuid4()),
]


def _fits(patterns: list[str], text: str) -> bool:
    return any(fnmatch.fnmatchcase(text, p) for p in patterns)


@pytest.mark.parametrize("decimals", [0, 3])
def test_threshold_patterns_fit_exactly_the_values_below_or_above(decimals: int) -> None:
    rng = random.Random(7)
    thresholds = [0, 0.001, 1, 3.0, 2.513, 9.999, 10, 20, 999, 123456.789]
    for threshold in thresholds:
        below = below_patterns(threshold, decimals)
        above = above_patterns(threshold, decimals)
        assert len(below) <= 13 and len(above) <= 12
        candidates = [threshold, threshold + 0.001, threshold - 0.001, threshold + 1, -1.5, 0]
        candidates += [rng.uniform(0, 2 * threshold + 1) for _ in range(300)]
        for value in candidates:
            scaled_value = round(value * 10**decimals)
            scaled_limit = round(threshold * 10**decimals)
            text = sortable(value, decimals)
            assert _fits(below, text) == (scaled_value < scaled_limit), (threshold, value)
            assert _fits(above, text) == (scaled_value > scaled_limit), (threshold, value)


def test_sortable_refuses_nan() -> None:
    with pytest.raises(ValueError, match="finite"):
        sortable(float("nan"))


def test_every_document_renders_with_one_action_per_target_and_settings_in_it() -> None:
    settings = AlarmSettings(lifetime_min_ms=2.5, cooldown_seconds=123, no_file_seconds=45)
    alarms = {a.name: a for a in documents.load(settings, TARGETS, datataking_on=False)}
    assert sorted(alarms) == [
        "p3s-dqm-lifetime-low",
        "p3s-dqm-noisy-channels",
        "p3s-dqm-quality-bad",
        "p3s-dqm-run-failed",
        "p3s-no-file-arrived",
        "p3s-pilots-below-target",
        "p3s-pilots-lost",
        "p3s-storage-failures",
    ]
    for alarm in alarms.values():
        automation = alarm.automation
        assert automation.tags == [documents.TAG]
        assert [a.type for a in automation.actions] == [
            "call-webhook",
            "call-webhook",
            "send-notification",
        ]
        assert automation.description and "${" not in automation.model_dump_json()
    assert not alarms["p3s-no-file-arrived"].automation.enabled, "data taking is off"
    assert alarms["p3s-no-file-arrived"].automation.trigger.within.total_seconds() == 45
    failed = alarms["p3s-dqm-run-failed"].automation.trigger
    assert failed.within.total_seconds() == 123
    assert failed.match_related["prefect.resource.name"] == [
        "dqm-beam",
        "dqm-evdisplay",
        "dqm-purity",
        "dqm-tpc-monitor",
    ]
    lifetime = alarms["p3s-dqm-lifetime-low"].automation
    assert lifetime.trigger.match["p3s.value.sortable"] == below_patterns(2.5, 3)
    assert "2.5 ms" in lifetime.actions[2].subject
    on = documents.load(settings, TARGETS, datataking_on=True)
    assert all(a.automation.enabled for a in on)


def test_a_document_with_an_unknown_placeholder_is_refused_naming_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrigger: {type: event, within: ${no_such_setting}}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown placeholder \$\{no_such_setting\}"):
        documents.load(AlarmSettings(), TARGETS, datataking_on=False, folder=tmp_path)


def test_webhook_payloads_render_to_valid_json_whatever_the_message_holds() -> None:
    from prefect.server.events.jinja_filters import all_filters
    from prefect.server.utilities.user_templates import (
        register_user_template_filters,
        render_user_template_sync,
    )

    register_user_template_filters(all_filters)
    subject = 'Run {{ event.payload.name }} "failed"'
    body = "line one: {{ event.payload.error }}\nline <two> & 'three'"
    event = {
        "event": "p3s.test",
        "occurred": "2026-11-26T03:00:00Z",
        "resource": {"prefect.resource.id": "p3s.x"},
        "payload": {"name": "a\\b", "error": 'quote " and\nnewline'},
        "url": None,
    }
    generic = json.loads(
        render_user_template_sync(
            documents.webhook_payload("json", "p3s-x", subject, body), {"event": event}
        )
    )
    assert generic["alarm"] == "p3s-x"
    assert generic["subject"] == 'Run a\\b "failed"'
    assert generic["message"] == "line one: quote \" and\nnewline\nline <two> & 'three'"
    assert generic["resource"] == {"prefect.resource.id": "p3s.x"}
    chat = json.loads(
        render_user_template_sync(
            documents.webhook_payload("chat", "p3s-x", subject, body), {"event": event}
        )
    )
    assert chat == {"text": f"p3s alarm: {generic['subject']}\n{generic['message']}"}


def test_apply_compares_trigger_event_sets_whatever_their_order() -> None:
    """The server returns a trigger's ``after`` set in its own order; apply must not see a
    change in that. Two names that share a hash slot iterate in the order they were added, so
    the two automations below serialize to different JSON and must still compare equal."""
    from prefect.events.schemas.automations import AutomationCore

    from p3s.alarms.apply import _comparable

    names = [f"p3s.test.event-{n}" for n in range(200)]
    first, second = next(
        (a, b) for i, a in enumerate(names) for b in names[i + 1 :] if list({a, b}) != list({b, a})
    )

    def automation(after: list[str]) -> AutomationCore:
        return AutomationCore.model_validate(
            {
                "name": "p3s-test",
                "trigger": {
                    "type": "event",
                    "posture": "Proactive",
                    "after": after,
                    "expect": [first],
                    "within": 10,
                },
                "actions": [{"type": "do-nothing"}],
            }
        )

    one, other = automation([first, second]), automation([second, first])
    assert one.model_dump(mode="json") != other.model_dump(mode="json"), "the order shows in JSON"
    assert _comparable(one) == _comparable(other)
    assert _comparable(one) != _comparable(automation([first]))
