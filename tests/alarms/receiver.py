"""A loopback HTTP receiver that collects the alarms' webhook POSTs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """Every POST it got, as (path, decoded JSON body), in arrival order."""

    url: str
    posts: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, body in self.posts if p == path]

    def wait_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Poll ``done`` until it holds or ``timeout_s`` passed; return whether it held."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.2)
        return done()


@contextmanager
def receiver() -> Iterator[Receiver]:
    """A threaded HTTP server on a free loopback port, answering 200 to every POST."""
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        # Keep-alive like a real webhook service: Prefect's client pools its connections.
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = {"unparsed": raw.decode(errors="replace")}
            with box[0].lock:
                box[0].posts.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Mailbox:
    """Every e-mail a loopback SMTP server got: (recipients, subject, body)."""

    host: str
    port: int
    mails: list[tuple[list[str], str, str]] = field(default_factory=list)


@contextmanager
def smtp_receiver() -> Iterator[Mailbox]:
    """An aiosmtpd SMTP server on a free loopback port that keeps every message."""
    from email import message_from_bytes, policy

    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    box = Mailbox("127.0.0.1", free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            message = message_from_bytes(envelope.content, policy=policy.default)
            body = message.get_body(("plain",))
            text = body.get_content().replace("\r\n", "\n") if body is not None else ""
            box.mails.append((list(envelope.rcpt_tos), str(message["Subject"]), text))
            return "250 OK"

    controller = Controller(Handler(), hostname=box.host, port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
