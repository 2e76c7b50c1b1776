"""``SmtpEmail``: a notification block that sends alarms by e-mail through an SMTP server.

Prefect's own e-mail blocks go through a web service (SendGrid) or the prefect-email
collection; this one speaks SMTP with the standard library, so a site relay or a local
``postfix`` will do. The Prefect server's actions service loads it when an automation's
``send-notification`` action fires: the ``prefect.collections`` entry point ``p3s-alarms``
imports this module there.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

from prefect.blocks.abstract import NotificationBlock, NotificationError
from pydantic import Field, SecretStr


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
