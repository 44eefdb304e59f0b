"""ASGI guards in front of every route: API key, body size, load, deadline, drain, audio.

- With an API key configured, every route but the open ones (health, metrics, version,
  the API docs and the playground page, which reach neither the engine nor any media) needs
  `Authorization: Bearer <key>`, compared in constant time; otherwise 401.
- Bodies over the cap get 413, whether announced by Content-Length or not.
- At most `max_in_flight` requests are served at once; the next gets 503 with
  `Retry-After` before anything is read or decoded.
- A request still running at its deadline is aborted (its engine work is cancelled)
  and answered 504 if nothing was sent yet.
- While the server drains (`lifecycle`), `/health` and new requests get 503.
- Each request gets its `intake.RequestAudio`: the media connector admits and counts its
  audio there, and the response carries what was heard (`X-Audio-Seconds`,
  `X-Audio-Windows`) on every route.
- Every refusal here counts on `/metrics` by its reason (`metrics.refused`).

WebSocket handshakes (`/v1/realtime`) pass `WebSocketGuard`, the outermost layer: the API
key may come as the header or, from browsers (which cannot set headers on a WebSocket), as
the subprotocol `openai-insecure-api-key.<key>`; at most `max_sessions` sessions run at
once; draining refuses new ones. A refusal accepts the handshake, sends an `error` event
that says why and closes with a code: 1008 (API key), 1013 (full), 1001 (draining).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from audiotext.server import metrics
from audiotext.server.errors import error_bytes, error_headers
from audiotext.server.intake import AudioQueue, RequestAudio, request_scope
from audiotext.server.lifecycle import Lifecycle
from audiotext.server.realtime import events

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open: probes, metrics, docs and the playground page (static; its requests carry the key).
OPEN_PATHS = frozenset(
    {"/health", "/ping", "/metrics", "/version", "/openapi.json", "/docs", "/redoc",
     "/docs/oauth2-redirect", "/playground"}
)  # fmt: skip


@dataclass(frozen=True)
class GuardSettings:
    api_key: str | None
    max_body_bytes: int
    max_in_flight: int
    deadline_s: float
    max_audio_seconds: float = 240.0
    max_queued_audio_s: float = 3600.0


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI middleware (streaming responses pass through untouched)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: GuardSettings,
        lifecycle: Lifecycle,
        audio_queue: AudioQueue | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.lifecycle = lifecycle
        self.audio_queue = audio_queue or AudioQueue(settings.max_queued_audio_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining.is_set() and scope["path"] != "/metrics":
            if scope["path"] not in OPEN_PATHS:  # probes are not refused requests
                metrics.refused("draining")
            await _reply(send, 503, "the server is shutting down; retry on another instance")
            return
        if scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.settings.api_key and not self._authorized(headers.get("authorization", b"")):
            metrics.refused("unauthorized")
            await _reply(send, 401, "missing or wrong API key (Authorization: Bearer <key>)")
            return
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            metrics.refused("too_large")
            await _reply(send, 413, self._too_large())
            return
        if self.lifecycle.in_flight >= self.settings.max_in_flight:
            metrics.refused("overload")
            await _reply(send, 503, "the server is at capacity; retry shortly")
            return
        self.lifecycle.in_flight += 1
        audio = RequestAudio(self.settings.max_audio_seconds, self.audio_queue, route=scope["path"])
        finished = False

        def finish() -> None:
            # Once, before the response's last bytes leave: a client that sends its next
            # request as soon as it has the answer finds this one's room free.
            nonlocal finished
            if not finished:
                finished = True
                audio.release()
                self.lifecycle.in_flight -= 1

        try:
            with request_scope(audio):
                await self._serve(scope, receive, send, audio, finish)
        finally:
            finish()

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        audio: RequestAudio,
        finish: Callable[[], None],
    ) -> None:
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                audio.status = message["status"]
                message = _with_headers(message, audio)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finish()
            await send(message)

        try:
            await asyncio.wait_for(
                self.app(scope, self._capped(receive), tracked_send), self.settings.deadline_s
            )
        except _BodyTooLarge:
            metrics.refused("too_large")
            if not started:
                await _reply(send, 413, self._too_large())
        except TimeoutError:
            metrics.refused("deadline")
            audio.status = None  # aborted: not an answer, even if it had begun
            if not started:
                await _reply(
                    send, 504, f"request exceeded its {self.settings.deadline_s:g} s deadline"
                )

    def _authorized(self, header: bytes) -> bool:
        return _bearer_matches(self.settings.api_key, header)

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


def _with_headers(message: Message, audio: RequestAudio) -> Message:
    """The response start with what was heard and, on 503, when to retry."""
    extra = dict(error_headers(message["status"]))
    if audio.windows:
        extra |= {k.lower(): v for k, v in audio.headers().items()}
    if not extra:
        return message
    present = {k.lower() for k, _ in message.get("headers", [])}
    added = [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present]
    return {**message, "headers": [*message.get("headers", []), *added]}


async def _reply(send: Send, status: int, message: str) -> None:
    body = error_bytes(message, status)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in error_headers(status).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


# Browsers cannot set headers on a WebSocket; OpenAI's Realtime API takes the key this way.
API_KEY_SUBPROTOCOL = "openai-insecure-api-key."
CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_LATER = 1001, 1008, 1013


class WebSocketGuard:
    """The guards of WebSocket sessions, outside vLLM's own middleware (see module doc).

    A key given as the subprotocol is moved into the `Authorization` header, so that vLLM's
    API-key check, inside this layer, sees it too; it is never echoed as the subprotocol.
    """

    def __init__(
        self, app: ASGIApp, settings: GuardSettings, lifecycle: Lifecycle, max_sessions: int
    ) -> None:
        self.app = app
        self.settings = settings
        self.lifecycle = lifecycle
        self.max_sessions = max_sessions
        self.sessions = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        offered = [str(p) for p in scope.get("subprotocols", [])]
        keys = [p.removeprefix(API_KEY_SUBPROTOCOL) for p in offered
                if p.startswith(API_KEY_SUBPROTOCOL)]  # fmt: skip
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"authorization"]
        header = next(
            (v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), b""
        )
        scope = {
            **scope,
            "subprotocols": [p for p in offered if not p.startswith(API_KEY_SUBPROTOCOL)],
        }
        if self.lifecycle.draining.is_set():
            metrics.refused("draining")
            await _refuse_websocket(scope, receive, send, CLOSE_GOING_AWAY, events.error(
                "the server is shutting down; connect to another instance",
                "server_shutting_down", kind="server_error"))  # fmt: skip
            return
        if self.settings.api_key:
            if not _bearer_matches(self.settings.api_key, header):
                key = keys[0] if keys else ""
                if not hmac.compare_digest(key.encode(), self.settings.api_key.encode()):
                    metrics.refused("unauthorized")
                    await _refuse_websocket(scope, receive, send, CLOSE_POLICY, events.error(
                        "missing or wrong API key (Authorization: Bearer <key>, or the "
                        f"subprotocol {API_KEY_SUBPROTOCOL}<key>)", "invalid_api_key"))  # fmt: skip
                    return
                header = b"Bearer " + key.encode()
            scope["headers"] = [*headers, (b"authorization", header)]
        if self.sessions >= self.max_sessions:
            metrics.refused("overload")
            await _refuse_websocket(scope, receive, send, CLOSE_TRY_LATER, events.error(
                f"the server has {self.sessions} realtime sessions open, its limit "
                "(--realtime-max-sessions); retry shortly", "server_overloaded",
                kind="server_error"))  # fmt: skip
            return
        self.sessions += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.sessions -= 1


def _bearer_matches(api_key: str | None, header: bytes) -> bool:
    assert api_key is not None
    return hmac.compare_digest(header, b"Bearer " + api_key.encode())


async def _refuse_websocket(
    scope: Scope, receive: Receive, send: Send, code: int, error: dict[str, Any]
) -> None:
    """Accept the handshake (so that browsers see why), say why, close with `code`."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    subprotocol = "realtime" if "realtime" in scope.get("subprotocols", []) else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    await send({"type": "websocket.send", "text": json.dumps(error)})
    await send({"type": "websocket.close", "code": code, "reason": error["error"]["code"]})
