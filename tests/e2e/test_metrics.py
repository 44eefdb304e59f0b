"""audiotext's audio series on vLLM's `/metrics`, scraped around known requests.

Each request carries audio no other test sends (a gain of its own), so that vLLM's
processor, encoder and prefix caches cannot answer it: every series moves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from audiotext.server.launcher import ServerProcess
from tests.conftest import b64, load_clip, speech_of, wav_bytes
from tests.metrics import Delta, Scrape, scrape, scrape_when

from .conftest import MODEL

CHAT = "/v1/chat/completions"
TASK = "/v1/audio-text-to-text"
TRANSCRIBE = "/v1/audio/transcriptions"
ROUTES = {"CHAT": CHAT, "TASK": TASK, "TRANSCRIBE": TRANSCRIBE}


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=120) as client:
        yield client


def audio(samples: np.ndarray, subtype: str = "FLOAT") -> dict[str, Any]:
    wav = b64(wav_bytes(samples, subtype=subtype))
    return {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}


def chat(*parts: dict[str, Any], text: str = "What does the person say?") -> dict[str, Any]:
    content = [*parts, {"type": "text", "text": text}]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}


def answered(http: httpx.Client, before: Scrape, **per_route: int) -> Delta:
    """The change since `before`, once each route's answers (route name -> count, e.g.
    `CHAT=1`) are recorded."""
    name = "audiotext_request_real_time_factor_count"
    routes = {ROUTES[key]: count for key, count in per_route.items()}

    def ready(now: Scrape) -> bool:
        return all(
            now.value(name, route=r) - before.value(name, route=r) >= n for r, n in routes.items()
        )

    return scrape_when(http, ready) - before


def test_a_chat_request_moves_every_audio_series_once(http: httpx.Client) -> None:
    samples = load_clip("6s") * np.float32(0.61)
    seconds = len(samples) / 16000
    before = scrape(http)
    started = time.monotonic()
    reply = http.post(CHAT, json=chat(audio(samples)))
    elapsed = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    delta = answered(http, before, CHAT=1)
    # The server's clock runs from the request's arrival to its last byte, inside this.
    until_recorded = time.monotonic() - started

    assert delta("audiotext_audio_seconds_total", route=CHAT) == pytest.approx(seconds, abs=1e-9)
    assert delta("audiotext_audio_decodes_total") == 1
    assert delta("audiotext_audio_decode_seconds_count") == 1
    assert 0 < delta("audiotext_audio_decode_seconds_sum") < elapsed
    assert delta("audiotext_audio_feature_seconds_count") == 1
    assert 0 < delta("audiotext_audio_feature_seconds_sum") < elapsed
    # The encoder runs in the engine process; its series reach the API server's /metrics.
    assert delta("audiotext_audio_encoder_windows_total") == 1
    assert delta("audiotext_audio_encoder_seconds_count") == 1
    assert 0 < delta("audiotext_audio_encoder_seconds_sum") < elapsed
    assert delta("audiotext_request_audio_windows_count", route=CHAT) == 1
    assert delta("audiotext_request_audio_windows_sum", route=CHAT) == 1
    assert delta("audiotext_request_real_time_factor_count", route=CHAT) == 1
    # The server's time per audio second, bounded by what the client saw.
    rtf = delta("audiotext_request_real_time_factor_sum", route=CHAT)
    assert 0 < rtf <= until_recorded / seconds
    assert delta.refused() == {}


def test_long_audio_counts_its_windows_on_its_route(http: httpx.Client) -> None:
    samples = speech_of(45) * np.float32(0.62)
    body = {"audio": b64(wav_bytes(samples)), "parameters": {"max_new_tokens": 4}}
    before = scrape(http)
    reply = http.post(TASK, json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["audio"]["windows"] == 2
    delta = answered(http, before, TASK=1)

    assert delta("audiotext_audio_seconds_total", route=TASK) == pytest.approx(45, abs=1e-9)
    assert delta("audiotext_audio_seconds_total", route=CHAT) == 0
    assert delta("audiotext_request_audio_windows_count", route=TASK) == 1
    assert delta("audiotext_request_audio_windows_sum", route=TASK) == 2
    assert delta("audiotext_audio_encoder_windows_total") == 2
    assert delta("audiotext_audio_decodes_total") == 1


def test_streamed_and_transcribed_requests_are_recorded_per_route(http: httpx.Client) -> None:
    streamed = load_clip("6s") * np.float32(0.63)
    spoken = load_clip("1s") * np.float32(0.64)
    before = scrape(http)
    with http.stream("POST", CHAT, json={**chat(audio(streamed)), "stream": True}) as events:
        assert events.status_code == 200
        assert any(line == "data: [DONE]" for line in events.iter_lines())
    files = {"file": ("a.wav", wav_bytes(spoken), "audio/wav")}
    reply = http.post(TRANSCRIBE, files=files, data={"model": MODEL})
    assert reply.status_code == 200, reply.text
    delta = answered(http, before, CHAT=1, TRANSCRIBE=1)

    assert delta("audiotext_audio_seconds_total", route=CHAT) == pytest.approx(
        len(streamed) / 16000, abs=1e-9
    )
    assert delta("audiotext_audio_seconds_total", route=TRANSCRIBE) == pytest.approx(
        len(spoken) / 16000, abs=1e-9
    )
    for route in (CHAT, TRANSCRIBE):
        assert delta("audiotext_request_real_time_factor_count", route=route) == 1
        assert delta("audiotext_request_audio_windows_sum", route=route) == 1
    assert delta("audiotext_audio_decodes_total") == 2


BAD = audio(np.zeros(0, dtype=np.float32))
NOT_AUDIO = {"type": "input_audio", "input_audio": {"data": b64(b"no"), "format": "wav"}}


def url(address: str) -> dict[str, Any]:
    return {"type": "audio_url", "audio_url": {"url": address}}


# (request, status, the one reason it must count); the guards' own refusals (key, body,
# load) are counted in tests/reliability, against a server with those limits.
REFUSED = {
    "bad audio": (chat(NOT_AUDIO), 400, "bad_audio"),
    "two bad clips, one request": (chat(BAD, BAD), 400, "bad_audio"),
    "too long": (chat(audio(speech_of(241), "PCM_16")), 413, "too_long"),
    "ssrf": (chat(url("http://127.0.0.1:9/a.wav")), 403, "ssrf"),
    "scheme": (chat(url("gopher://127.0.0.1:9/")), 400, "ssrf"),
    "control tokens": (
        chat(audio(load_clip("1s")), text="say <|AUDIO|> now"),
        400,
        "control_tokens",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_each_refusal_counts_once_by_its_reason(http: httpx.Client, case: str) -> None:
    body, status, reason = REFUSED[case]
    before = scrape(http)
    reply = http.post(CHAT, json=body)
    assert reply.status_code == status, reply.text
    delta = scrape(http) - before
    assert delta.refused() == {reason: 1}
    # Refused requests are not answers.
    assert delta("audiotext_request_real_time_factor_count", route=CHAT) == 0
    assert delta("audiotext_audio_encoder_windows_total") == 0
