"""The ASGI guards around a stand-in app (the real server is covered in tests/reliability)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client import REGISTRY

from audiotext.server import intake
from audiotext.server.guards import GuardMiddleware, GuardSettings
from audiotext.server.lifecycle import Lifecycle
from audiotext.server.metrics import REFUSALS

SETTINGS = GuardSettings(api_key="k", max_body_bytes=100, max_in_flight=2, deadline_s=0.5)
AUTH = {"Authorization": "Bearer k"}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body, sleeps as long as the path says, answers 200."""
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(
        float(scope["path"].rsplit("/", 1)[-1] or 0) if scope["path"].startswith("/sleep") else 0
    )
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(
    *requests: dict[str, Any],
    settings: GuardSettings = SETTINGS,
    lifecycle: Lifecycle | None = None,
) -> list[httpx.Response]:
    guard = GuardMiddleware(app, settings, lifecycle or Lifecycle())  # type: ignore[arg-type]

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=guard)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return list(await asyncio.gather(*(client.request(**r) for r in requests)))

    return asyncio.run(run())


def refusal_counts() -> dict[str, float]:
    return {
        r: REGISTRY.get_sample_value("audiotext_requests_refused_total", {"reason": r}) or 0.0
        for r in REFUSALS
    }


@contextlib.contextmanager
def counting() -> Iterator[dict[str, float]]:
    """Yields a dict that, after the block, holds the refusals counted in it by reason."""
    moved: dict[str, float] = {}
    before = refusal_counts()
    yield moved
    moved.update({r: n - before[r] for r, n in refusal_counts().items() if n != before[r]})


def test_api_key_is_required_except_on_open_routes() -> None:
    with counting() as refused:
        missing, wrong, right, health = call(
            {"method": "POST", "url": "/v1/chat/completions"},
            {"method": "POST", "url": "/tokenize", "headers": {"Authorization": "Bearer nope"}},
            {"method": "POST", "url": "/tokenize", "headers": AUTH},
            {"method": "GET", "url": "/health"},
        )
    assert refused == {"unauthorized": 2}
    assert (missing.status_code, wrong.status_code, right.status_code, health.status_code) == (
        401,
        401,
        200,
        200,
    )
    assert missing.json()["error"]["type"] == "AuthenticationError"


async def chunks(*parts: bytes) -> Any:
    for part in parts:
        yield part


def test_bodies_over_the_cap_get_413_with_or_without_length() -> None:
    with counting() as refused:
        announced, streamed = call(
            {"method": "POST", "url": "/x", "headers": AUTH, "content": b"x" * 101},
            {
                "method": "POST",
                "url": "/x",
                "headers": AUTH,
                "content": chunks(b"x" * 60, b"x" * 60),
            },
        )
    assert announced.status_code == streamed.status_code == 413
    assert refused == {"too_large": 2}


def test_requests_beyond_capacity_get_503_with_retry_after() -> None:
    with counting() as refused:
        replies = call(*[{"method": "POST", "url": "/sleep/0.2", "headers": AUTH}] * 4)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 503, 503]
    assert refused == {"overload": 2}
    assert all(r.headers["retry-after"] == "1" for r in replies if r.status_code == 503)


def test_deadline_aborts_with_504() -> None:
    with counting() as refused:
        [reply] = call({"method": "POST", "url": "/sleep/2", "headers": AUTH})
    assert reply.status_code == 504
    assert refused == {"deadline": 1}


def test_draining_turns_readiness_and_new_requests_to_503() -> None:
    lifecycle = Lifecycle()
    lifecycle.draining.set()
    with counting() as refused:
        health, work = call(
            {"method": "GET", "url": "/health"},
            {"method": "POST", "url": "/x", "headers": AUTH},
            lifecycle=lifecycle,
        )
    assert health.status_code == work.status_code == 503
    assert refused == {"draining": 1}  # the probe is no refused request


def test_drain_waits_for_requests_in_flight() -> None:
    lifecycle = Lifecycle()
    lifecycle.in_flight = 1
    threading.Timer(0.3, lambda: setattr(lifecycle, "in_flight", 0)).start()
    started = time.monotonic()
    lifecycle.drain(timeout_s=5)
    assert 0.25 < time.monotonic() - started < 2
    assert lifecycle.draining.is_set()
    started = time.monotonic()
    lifecycle.in_flight = 1
    lifecycle.drain(timeout_s=0.2)  # gives up at the timeout
    assert time.monotonic() - started < 1


def test_a_request_frees_its_room_before_its_last_byte_is_sent() -> None:
    """A client that sends its next request on receipt of the answer must find room, even
    though the answered request's task has not returned yet."""
    lifecycle = Lifecycle()
    settings = GuardSettings(api_key=None, max_body_bytes=100, max_in_flight=1, deadline_s=5,
                             max_queued_audio_s=20)  # fmt: skip
    seen: list[tuple[int, float]] = []

    async def holds_audio(scope: dict[str, Any], receive: Any, send: Any) -> None:
        current = intake.CURRENT.get()
        assert current is not None
        current.admit(15)  # what the media connector does for a 15 s clip
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await asyncio.sleep(0.1)  # the task's tail, after the client has its answer

    guard = GuardMiddleware(holds_audio, settings, lifecycle)  # type: ignore[arg-type]

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            seen.append((lifecycle.in_flight, guard.audio_queue.seconds))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": "/x", "method": "POST", "headers": []}
    asyncio.run(guard(scope, receive, send))  # type: ignore[arg-type]
    assert seen == [(0, 0.0)]
    assert lifecycle.in_flight == 0 and guard.audio_queue.seconds == 0.0
