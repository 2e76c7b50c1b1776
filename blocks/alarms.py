"""Block types of the alarm targets; the server's actions service loads them when an alarm
fires (the ``prefect.collections`` entry point ``p3s-alarms`` imports this module there).

- ``AlarmWebhook`` (``p3s-alarm-webhook``): Prefect's Webhook with its own HTTP client per
  call. Prefect 3.9.1's Webhook closes a transport shared by every webhook call when a call
  ends, so alarms firing together broke each other's connections (``ReadError``), although
  the receiver had the request.
- ``SmtpEmail`` (``p3s-smtp-email``): a notification block that sends alarms by e-mail through
  an SMTP server with the standard library (a site relay or a local ``postfix``); Prefect's
  own e-mail blocks go through a web service (SendGrid) or the prefect-email collection.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from typing import Any

import httpx
from prefect.blocks.abstract import NotificationBlock, NotificationError
from prefect.blocks.webhook import Webhook
from prefect.utilities.urls import SSRFProtectedAsyncHTTPTransport, validate_restricted_url
from pydantic import Field, SecretStr


class AlarmWebhook(Webhook):
    """A webhook for alarm actions: one HTTP client, and connection, per call."""

    _block_type_name = "p3s alarm webhook"
    _block_type_slug = "p3s-alarm-webhook"
    _description = "Alarm webhooks (JSON, Slack, Mattermost) with a client per call (p3s)."

    timeout_seconds: float = Field(10.0, description="How long one webhook call may take (s).")

    async def call(self, payload: dict[str, Any] | str | None = None) -> httpx.Response:
        """POST (or ``method``) ``payload``: a string as the body, anything else as JSON."""
        url = self.url.get_secret_value()
        transport = None
        if not self.allow_private_urls:
            validate_restricted_url(url)
            transport = SSRFProtectedAsyncHTTPTransport(verify=self.verify)
        body: dict[str, Any] = {"json": payload}
        if isinstance(payload, str):
            body = {"content": payload}
        async with httpx.AsyncClient(
            transport=transport, verify=self.verify, timeout=self.timeout_seconds
        ) as client:
            return await client.request(
                self.method, url, headers=self.headers.get_secret_value(), **body
            )


class SmtpEmail(NotificationBlock):
    """Send each notification as one plain-text e-mail to every recipient."""

    _block_type_name = "p3s SMTP e-mail"
    _block_type_slug = "p3s-smtp-email"
    _description = "Alarm e-mails through an SMTP server (p3s)."

    host: str = Field(description="SMTP server host name.")
    port: int = Field(25, description="SMTP server port.")
    sender: str = Field(description="The From address.")
    recipients: list[str] = Field(description="The To addresses.")
    username: str | None = Field(None, description="SMTP login; None: no login.")
    password: SecretStr | None = Field(None, description="SMTP password.")
    starttls: bool = Field(False, description="Upgrade the connection with STARTTLS.")
    timeout_seconds: float = Field(20.0, description="SMTP connection timeout (s).")

    async def notify(self, body: str, subject: str | None = None) -> None:
        """Send ``body`` with ``subject``; raise NotificationError naming the server on failure."""
        await asyncio.to_thread(self._send, body, subject)

    def _send(self, body: str, subject: str | None) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = subject or "p3s alarm"
        message.set_content(body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    password = self.password.get_secret_value() if self.password else ""
                    smtp.login(self.username, password)
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotificationError(
                log=f"SMTP {self.host}:{self.port} refused the alarm e-mail: {exc}"
            ) from exc
