"""Where alarms go: one Prefect block per configured target, saved by ``p3s alarms apply``.

- ``json``: an :class:`~p3s.blocks.alarms.AlarmWebhook` (``settings.alarms.webhook_url``) that
  gets a generic JSON document (alarm, subject, message, event, resource, payload, links);
- ``chat``: an AlarmWebhook (``settings.alarms.chat_url``) that gets ``{"text": ...}``, the body
  Slack and Mattermost incoming webhooks both accept;
- ``email``: an :class:`~p3s.blocks.alarms.SmtpEmail` notification block
  (``settings.alarms.smtp_host`` and ``email_to``).

Blocks are saved under fixed names (``p3s-alarm-*``) with ``overwrite``, so their ids, and with
them the automations, stay the same from one apply to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from p3s.system.settings import AlarmSettings

Kind = Literal["json", "chat", "email"]
BLOCK_NAMES: dict[Kind, str] = {
    "json": "p3s-alarm-webhook",
    "chat": "p3s-alarm-chat",
    "email": "p3s-alarm-email",
}


@dataclass(frozen=True)
class Target:
    """A saved notification target: its kind and the block document the actions name."""

    kind: Kind
    block_document_id: UUID


def target_blocks(alarms: AlarmSettings) -> dict[Kind, Any]:
    """The block of each configured target (not saved yet)."""
    from p3s.blocks.alarms import AlarmWebhook

    blocks: dict[Kind, Any] = {}
    json_headers = {"Content-Type": "application/json"}
    if alarms.webhook_url:
        blocks["json"] = AlarmWebhook(url=alarms.webhook_url, headers=json_headers)
    if alarms.chat_url:
        blocks["chat"] = AlarmWebhook(url=alarms.chat_url, headers=json_headers)
    if alarms.smtp_host and alarms.email_to:
        from p3s.blocks.alarms import SmtpEmail

        blocks["email"] = SmtpEmail(
            host=alarms.smtp_host,
            port=alarms.smtp_port,
            sender=alarms.email_from,
            recipients=alarms.email_to,
            username=alarms.smtp_username,
            password=alarms.smtp_password,
            starttls=alarms.smtp_starttls,
        )
    return blocks


async def save_targets(alarms: AlarmSettings) -> list[Target]:
    """Save the block of every configured target; return them in a fixed order."""
    targets = []
    for kind, block in target_blocks(alarms).items():
        block_id = await block.asave(BLOCK_NAMES[kind], overwrite=True)
        targets.append(Target(kind, block_id))
    return targets
