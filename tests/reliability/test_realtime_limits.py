"""`/v1/realtime`'s refusals on the guarded server: each an `error` event and a close code.

API key (header, and the subprotocol browsers must use), sessions at once, idle timeout,
session length, message size, buffered audio, and a conversation over the per-request
audio limit (refused by the media connector, as on every route).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from audiotext.server.launcher import ServerProcess
from tests.conftest import load_clip
from tests.metrics import scrape
from tests.realtime import append, checked, pcm16, session

from .conftest import (
    API_KEY,
    MAX_BODY_MB,
    MAX_SECONDS,
    REALTIME_IDLE_S,
    REALTIME_SESSION_S,
    REALTIME_SESSIONS,
)
from .test_load import wait_for_idle

KEY_HEADER = {"Authorization": f"Bearer {API_KEY}"}


def url(server: ServerProcess) -> str:
    return server.base_url.replace("http://", "ws://") + "/realtime?model=tiny"


def open_session(server: ServerProcess, **options: Any) -> ClientConnection:
    options.setdefault("additional_headers", KEY_HEADER)
    return connect(url(server), max_size=None, open_timeout=30, **options)


def events_until(ws: ClientConnection, kind: str, within_s: float = 60) -> list[dict[str, Any]]:
    seen = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        seen.append(checked(ws.recv(timeout=within_s)))
        if seen[-1]["type"] == kind:
            return seen
    raise AssertionError(f"no {kind}: {[e['type'] for e in seen]}")


def refused(ws: ClientConnection, within_s: float = 30) -> tuple[str, int]:
    """The error code the server sent last and the close code it closed with."""
    codes = []
    try:
        while True:
            event = checked(ws.recv(timeout=within_s))
            if event["type"] == "error":
                codes.append(event["error"]["code"])
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        assert codes, "closed without an error event"
        assert closed.rcvd.reason == codes[-1]
        return codes[-1], closed.rcvd.code


@pytest.fixture()
def idle_room(guarded: ServerProcess, http: httpx.Client) -> Iterator[None]:
    """No request of an earlier test still in the engine (their audio counts against the
    server's queue), and every realtime session closed (the cap counts open ones)."""
    assert wait_for_idle(http, within_s=120) == (0.0, 0.0)
    yield
    time.sleep(0.2)


def test_api_key_header_or_browser_subprotocol(guarded: ServerProcess, idle_room: None) -> None:
    with open_session(guarded, additional_headers={}) as ws:
        assert refused(ws) == ("invalid_api_key", 1008)
    with open_session(guarded, additional_headers={"Authorization": "Bearer wrong"}) as ws:
        assert refused(ws) == ("invalid_api_key", 1008)
    protocols = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
    with open_session(guarded, additional_headers={}, subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"  # the key itself is never echoed
        assert events_until(ws, "session.created")
    with open_session(guarded) as ws:
        assert events_until(ws, "session.created")


def test_sessions_beyond_the_limit_get_1013(guarded: ServerProcess, idle_room: None) -> None:
    with ExitStack() as stack:
        for _ in range(REALTIME_SESSIONS):
            ws = stack.enter_context(open_session(guarded))
            events_until(ws, "session.created")
        with open_session(guarded) as extra:
            assert refused(extra) == ("server_overloaded", 1013)
    # Closed sessions free their room.
    time.sleep(0.5)
    with open_session(guarded) as ws:
        assert events_until(ws, "session.created")


def test_idle_sessions_and_long_sessions_are_closed(
    guarded: ServerProcess, idle_room: None
) -> None:
    # The server's clocks start between our connect and its `session.created`: the time
    # since connecting bounds them from above, the time since the event from below.
    connecting = time.monotonic()
    with open_session(guarded) as ws:
        events_until(ws, "session.created")
        created = time.monotonic()
        assert refused(ws, within_s=REALTIME_IDLE_S + 10) == ("idle_timeout", 1008)
        assert time.monotonic() - connecting >= REALTIME_IDLE_S
        assert time.monotonic() - created < REALTIME_IDLE_S + 2
    connecting = time.monotonic()
    with open_session(guarded) as ws:
        events_until(ws, "session.created")
        created = time.monotonic()
        ws.send(json.dumps({"type": "session.update", "session": session(manual=True)}))
        code = None
        while code is None:  # busy, never idle: only the session's length ends it
            time.sleep(1)
            with suppress(ConnectionClosed):
                ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            code = refused_if_closed(ws)
        assert code == ("session_expired", 1008)
        assert time.monotonic() - connecting >= REALTIME_SESSION_S
        assert time.monotonic() - created < REALTIME_SESSION_S + 3


def refused_if_closed(ws: ClientConnection) -> tuple[str, int] | None:
    """Drain what arrived; the refusal if the server closed the session."""
    codes = []
    try:
        while True:
            event = checked(ws.recv(timeout=0.05))
            if event["type"] == "error":
                codes.append(event["error"]["code"])
    except TimeoutError:
        return None
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and codes
        return codes[-1], closed.rcvd.code


def test_message_size_buffered_audio_and_conversation_audio_are_capped(
    guarded: ServerProcess, idle_room: None, http: httpx.Client
) -> None:
    second = pcm16(load_clip("1s"), to_rate=16000)
    with open_session(guarded) as ws:
        events_until(ws, "session.created")
        ws.send(json.dumps({"type": "session.update", "session": session(16000, manual=True)}))
        events_until(ws, "session.updated")
        # Buffered audio: at most --max-audio-seconds; the chunk over it is refused, not cut.
        for _ in range(MAX_SECONDS):
            ws.send(json.dumps(append(second)))
        ws.send(json.dumps(append(second)))
        full = events_until(ws, "error")[-1]["error"]
        assert full["code"] == "input_audio_buffer_full"
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events_until(ws, "input_audio_buffer.committed")
        # The conversation now holds 60 s; with one more second, an answer would hear 61 s,
        # over the limit of one request: the media connector refuses it, as on every route.
        before = scrape(http)
        ws.send(json.dumps(append(second)))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events_until(ws, "input_audio_buffer.committed")
        ws.send(json.dumps({"type": "response.create"}))
        answer = events_until(ws, "response.done")
        error = next(e for e in answer if e["type"] == "error")["error"]
        assert error["code"] == "invalid_request" and "--max-audio-seconds" in error["message"]
        assert answer[-1]["response"]["status"] == "failed"
        assert (scrape(http) - before).refused() == {"too_long": 1}
        # A message over --max-body-mb closes the session with 1009.
        big = base64.b64encode(bytes(int(MAX_BODY_MB * 2**20))).decode()
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": big}))
        assert refused(ws) == ("message_too_large", 1009)
