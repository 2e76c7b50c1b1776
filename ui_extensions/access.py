"""Access to the content app: read-only, and behind the Prefect server's own credentials.

- Only GET and HEAD are served; any other method gets 405 (the app changes nothing).
- When the Prefect server is protected (``PREFECT_SERVER_API_AUTH_STRING``, HTTP Basic
  ``user:pass``), every page asks for the same credentials (401 with ``WWW-Authenticate``) and
  the dashboard talks to the API with them. The app learns that the server is protected from
  the server itself (an unauthenticated ``/admin/version`` answers 401) or from its own
  ``PREFECT_API_AUTH_STRING``; until the server has answered once, the app assumes it is
  protected. Credentials are checked by the server, so the app needs no copy of the secret. A
  check is remembered for a minute. The style sheet (``/static/``) holds no data and is public.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time

import httpx
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .prefect_api import PrefectApi

READ_METHODS = frozenset({"GET", "HEAD"})
REALM = "p3s"
_CHECK_SECONDS = 60.0
_RETRY_SECONDS = 5.0
#: The style sheet holds no data: it is served to anyone (and shows that the app is up).
PUBLIC_PREFIX = "/static/"


def basic_credentials(header: str | None) -> str | None:
    """The ``user:pass`` of an HTTP Basic ``Authorization`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        return base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


class Access:
    """Decides, per request, whether it may go on and with which API credentials."""

    def __init__(self, api_url: str, configured: bool = False) -> None:
        #: The app's own environment says the API wants credentials.
        self.configured = configured
        self.api_url = api_url
        self._protected: tuple[float, bool] | None = None
        self._accepted: dict[str, float] = {}

    async def protected(self) -> bool:
        """Whether the Prefect API asks for credentials (checked at most once a minute)."""
        if self.configured:
            return True
        now = time.monotonic()
        if self._protected and now - self._protected[0] < _CHECK_SECONDS:
            return self._protected[1]
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.get(self.api_url.rstrip("/") + "/admin/version")
            protected = answer.status_code == 401
        except httpx.HTTPError:
            # The API is down or slow: keep what it said last (protected when it never
            # answered: fail closed), and ask again a few seconds later.
            last = self._protected[1] if self._protected else True
            self._protected = (now - _CHECK_SECONDS + _RETRY_SECONDS, last)
            return last
        self._protected = (now, protected)
        return protected

    async def accepts(self, credentials: str) -> bool:
        """Whether the Prefect API accepts ``credentials`` (remembered for a minute)."""
        key = hashlib.sha256(credentials.encode()).hexdigest()
        now = time.monotonic()
        if now - self._accepted.get(key, -_CHECK_SECONDS) < _CHECK_SECONDS:
            return True
        api = PrefectApi(self.api_url, credentials, timeout_s=10)
        try:
            ok = await api.authorised()
        except httpx.HTTPError:
            ok = False
        finally:
            await api.aclose()
        if ok:
            self._accepted[key] = now
        return ok

    async def check(self, request: Request) -> Response | None:
        """None when the request may go on (``request.state.credentials`` set), else the answer."""
        request.state.credentials = None
        if request.method not in READ_METHODS:
            return PlainTextResponse(
                "The p3s content app is read-only.\n",
                status_code=405,
                headers={"Allow": "GET, HEAD"},
            )
        if request.url.path.startswith(PUBLIC_PREFIX) or not await self.protected():
            return None
        credentials = basic_credentials(request.headers.get("authorization"))
        if credentials is None or not await self.accepts(credentials):
            return PlainTextResponse(
                "The Prefect server is protected: log in with its credentials.\n",
                status_code=401,
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        request.state.credentials = credentials
        return None
