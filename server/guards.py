"""ASGI guards in front of every route: API key, body size, load bound, deadline.

- With an API key configured, every route but the open ones (health, metrics, version
  and the API docs, which reach neither the engine nor any media) needs
  `Authorization: Bearer <key>`, compared in constant time; otherwise 401.
- Bodies over the cap get 413, whether announced by Content-Length or not.
- At most `max_in_flight` requests are served at once; the next gets 503 with
  `Retry-After`, so a full server says so at once instead of queueing without bound.
- A request still running at its deadline is aborted (its engine work is cancelled)
  and answered 504 if nothing was sent yet.
- Once SIGTERM has arrived, `/health` and new requests get 503 with `Retry-After`
  while in-flight requests finish (see `lifecycle`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from audiotext.server.lifecycle import DRAINING

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset(
    {"/health", "/ping", "/metrics", "/version", "/openapi.json", "/docs", "/redoc",
     "/docs/oauth2-redirect"}
)  # fmt: skip
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class GuardSettings:
    api_key: str | None
    max_body_bytes: int
    max_in_flight: int
    deadline_s: float


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI middleware (streaming responses pass through untouched)."""

    def __init__(self, app: ASGIApp, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and DRAINING.is_set() and scope["path"] != "/metrics":
            await _reply(
                send, 503, "the server is shutting down; retry on another instance",
                {"retry-after": str(RETRY_AFTER_S)},
            )  # fmt: skip
            return
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.settings.api_key and not self._authorized(headers.get("authorization", b"")):
            await _reply(send, 401, "missing or wrong API key (Authorization: Bearer <key>)")
            return
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            await _reply(send, 413, self._too_large())
            return
        if self.in_flight >= self.settings.max_in_flight:
            await _reply(
                send, 503, "the server is at capacity; retry shortly",
                {"retry-after": str(RETRY_AFTER_S)},
            )  # fmt: skip
            return
        self.in_flight += 1
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(
                self.app(scope, self._capped(receive), tracked_send), self.settings.deadline_s
            )
        except _BodyTooLarge:
            if not started:
                await _reply(send, 413, self._too_large())
        except TimeoutError:
            if not started:
                await _reply(
                    send, 504, f"request exceeded its {self.settings.deadline_s:g} s deadline"
                )
        finally:
            self.in_flight -= 1

    def _authorized(self, header: bytes) -> bool:
        assert self.settings.api_key is not None
        expected = b"Bearer " + self.settings.api_key.encode()
        return hmac.compare_digest(header, expected)

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.settings.max_body_bytes:
                    raise _BodyTooLarge
            return message

        return capped

    def _too_large(self) -> str:
        return f"request body is over {self.settings.max_body_bytes} bytes (--max-body-mb)"


async def _reply(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    kind = {401: "AuthenticationError", 413: "RequestTooLarge", 503: "Overloaded", 504: "Timeout"}
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": kind.get(status, "Error"),
                "param": None,
                "code": status,
            }
        }
    ).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
