"""The client's public surface, its twins, its errors and its retry policy.

The retry tests use a local stub server: a fault injector, since the real server does
not produce these statuses on demand.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import audiotext.client as client_pkg
from audiotext.client import (
    APIConnectionError,
    AsyncAudioTextClient,
    AsyncRealtimeSession,
    AudioTextClient,
    BadRequestError,
    InvalidAudioError,
    OverloadedError,
    RealtimeSession,
    ServerError,
)
from audiotext.server.launcher import free_port

SPEECH = Path(__file__).parents[1] / "data" / "speech_short.flac"


def test_public_surface_is_pinned() -> None:
    assert client_pkg.__all__ == [
        "DEFAULT_BASE_URL", "SAMPLE_RATE", "APIConnectionError", "APIError", "APIStatusError",
        "AsyncAudioTextClient", "AsyncRealtimeSession", "AudioSource", "AudioTextClient",
        "AudioTextError", "AuthenticationError", "BadRequestError", "BatchResult", "Generation",
        "InvalidAudioError", "InvalidRequestError", "OverloadedError", "RealtimeSession",
        "Segment", "ServerError", "Transcription", "audio_token_count", "load_audio",
    ]  # fmt: skip


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_sync_and_async_twins_have_the_same_signatures() -> None:
    sync, asyn = public_methods(AudioTextClient), public_methods(AsyncAudioTextClient)
    assert sync.keys() == asyn.keys()
    for name, signature in sync.items():
        other = asyn[name]
        assert list(signature.parameters.values()) == list(other.parameters.values()), name
    for name in ("generate", "generate_result", "chat", "generate_batch", "transcribe",
                 "translate", "close"):  # fmt: skip
        assert inspect.iscoroutinefunction(getattr(AsyncAudioTextClient, name))
    assert inspect.isasyncgenfunction(AsyncAudioTextClient.stream)
    sync, asyn = public_methods(RealtimeSession), public_methods(AsyncRealtimeSession)
    assert sync.keys() == asyn.keys()
    for name, signature in sync.items():
        assert [p.name for p in signature.parameters.values()] == [
            p.name for p in asyn[name].parameters.values()
        ], name
    assert inspect.isgeneratorfunction(AudioTextClient.stream)


def test_environment_supplies_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOTEXT_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("AUDIOTEXT_MODEL", "m")
    client = AudioTextClient()
    assert (client.base_url, client.model) == ("http://127.0.0.1:9/v1", "m")
    assert AudioTextClient(base_url="http://x/v1").base_url == "http://x/v1"


class Stub:
    """A loopback HTTP server answering every request with one status; counts requests."""

    def __init__(self, status: int, message: str = "nope") -> None:
        self.status, self.message, self.requests = status, message, 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests += 1
                body = json.dumps(
                    {"error": {"message": stub.message, "code": stub.status}}
                ).encode()
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub(request: pytest.FixtureRequest) -> Iterator[Stub]:
    server = Stub(*request.param)
    yield server
    server.close()


@pytest.mark.parametrize(
    ("stub", "error", "attempts"),
    [
        ((400, "max_tokens must be at least 1"), BadRequestError, 1),
        ((422, "bad field"), BadRequestError, 1),
        ((503, "busy"), OverloadedError, 3),
        ((429, "slow down"), OverloadedError, 3),
        ((500, "boom"), ServerError, 3),
    ],
    indirect=["stub"],
)
def test_4xx_are_not_retried_and_errors_are_typed(stub: Stub, error: type, attempts: int) -> None:
    client = AudioTextClient(base_url=stub.url, model="m", max_retries=2)
    with pytest.raises(error) as caught:
        client.generate({"audio": SPEECH})
    assert caught.value.status_code == stub.status
    assert caught.value.message == stub.message
    assert stub.requests == attempts


@pytest.mark.parametrize("stub", [(400, "bad")], indirect=True)
def test_async_twin_maps_errors_the_same_way(stub: Stub) -> None:
    async def run() -> None:
        async with AsyncAudioTextClient(base_url=stub.url, model="m") as client:
            with pytest.raises(BadRequestError):
                await client.generate({"audio": SPEECH})

    asyncio.run(run())
    assert stub.requests == 1


@pytest.mark.parametrize("stub", [(500, "unused")], indirect=True)
def test_invalid_audio_is_raised_before_any_request(stub: Stub) -> None:
    client = AudioTextClient(base_url=stub.url, model="m")
    for bad in ("missing.wav", b"", b"not audio at all"):
        with pytest.raises(InvalidAudioError):
            client.generate({"audio": bad})
        with pytest.raises(InvalidAudioError):
            next(iter(client.stream({"audio": bad})))
    assert stub.requests == 0


def test_nothing_listening_fails_at_once_naming_the_address() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = AudioTextClient(base_url=url, model="m", max_retries=2)
    started = time.monotonic()
    with pytest.raises(APIConnectionError) as caught:
        client.generate({"audio": SPEECH})
    # Refused is final: no retries with back-off (the SDK's would take seconds).
    assert time.monotonic() - started < 1.0
    assert (caught.value.url, caught.value.reason) == (url, "connection refused")
    assert url in str(caught.value) and "AUDIOTEXT_BASE_URL" in str(caught.value)

    async def run() -> None:
        async with AsyncAudioTextClient(base_url=url, max_retries=2) as asynchronous:
            with pytest.raises(APIConnectionError, match="connection refused"):
                await asynchronous.generate({"audio": SPEECH})

    started = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - started < 1.0


def test_base_url_follows_the_servers_host_and_port_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AUDIOTEXT_BASE_URL", raising=False)
    monkeypatch.setenv("AUDIOTEXT_PORT", "8123")
    assert AudioTextClient().base_url == "http://localhost:8123/v1"
    monkeypatch.setenv("AUDIOTEXT_HOST", "0.0.0.0")
    assert AudioTextClient().base_url == "http://127.0.0.1:8123/v1"
    monkeypatch.setenv("AUDIOTEXT_HOST", "::1")
    assert AudioTextClient().base_url == "http://[::1]:8123/v1"
    monkeypatch.setenv("AUDIOTEXT_BASE_URL", "http://elsewhere:1/v1")
    assert AudioTextClient().base_url == "http://elsewhere:1/v1"


@pytest.mark.parametrize("stub", [(400, "bad")], indirect=True)
def test_batch_returns_failures_in_their_slots(stub: Stub) -> None:
    client = AudioTextClient(base_url=stub.url, model="m")
    results = client.generate_batch([{"audio": SPEECH}, {"audio": "missing.wav"}], progress=False)
    assert isinstance(results[0], BadRequestError)
    assert isinstance(results[1], InvalidAudioError)


def test_client_is_light() -> None:
    import subprocess
    import sys
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    names = " ".join(project["dependencies"]).lower()
    assert not any(heavy in names for heavy in ("vllm", "torch", "transformers"))
    code = (
        "import sys, audiotext.client\n"
        "print(sorted({'vllm', 'torch', 'transformers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
