"""Realtime sessions (`/v1/realtime`): spoken dialogue over the OpenAI SDK's realtime client.

    with client.realtime(instructions="Answer briefly.") as session:
        session.send_audio("question.wav")   # 20 ms PCM16 chunks; the server's VAD cuts turns
        print(session.answer())              # the text of the next response

`send_audio` takes any audio source the client takes (decoded and resampled to 16 kHz
here) and ends with enough silence for the server's VAD to hear the turn end;
`send_pcm` takes raw PCM16 chunks as they come (a microphone). `events()` iterates the
server's events as the SDK's models. `RealtimeSession` and `AsyncRealtimeSession` are twins.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, cast

import numpy as np

from audiotext.client._constants import SAMPLE_RATE
from audiotext.client._exceptions import InvalidRequestError
from audiotext.client.audio import AudioSource, load_audio

CHUNK_MS = 20
# Silence after a clip: the VAD's silence duration plus a little, so the turn ends.
TRAILING_SILENCE_MARGIN_S = 0.3


def session_update(
    *,
    instructions: str | None,
    turn_detection: bool,
    silence_duration_ms: int,
    max_output_tokens: int | None,
    temperature: float | None,
) -> dict[str, Any]:
    """The `session.update` event for these settings (text out, PCM16 at 16 kHz)."""
    detection = (
        {"type": "server_vad", "silence_duration_ms": silence_duration_ms}
        if turn_detection
        else None
    )
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["text"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                "turn_detection": detection,
            }
        },
        "max_output_tokens": max_output_tokens or "inf",
    }
    if instructions is not None:
        session["instructions"] = instructions
    if temperature is not None:
        session["temperature"] = temperature
    return {"type": "session.update", "session": session}


def pcm16_chunks(audio: AudioSource, trailing_silence_s: float) -> list[bytes]:
    """An audio source as 20 ms chunks of 16 kHz PCM16, with silence after it."""
    samples = load_audio(audio)
    samples = np.concatenate([samples, np.zeros(int(trailing_silence_s * SAMPLE_RATE), np.float32)])
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    size = SAMPLE_RATE * CHUNK_MS // 1000 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def trailing_silence_s(silence_duration_ms: int | None) -> float:
    """Silence after a clip: none without VAD; else enough for the VAD to end the turn."""
    if silence_duration_ms is None:
        return 0.0
    return silence_duration_ms / 1000 + TRAILING_SILENCE_MARGIN_S


def append_event(chunk: bytes) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode("ascii")}


def text_item(text: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": content}}  # fmt: skip


class _Answer:
    """Collects one response's text from its events."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.errors: list[str] = []

    def take(self, event: Any) -> str | None:
        """The whole text once `event` ends the response; None until then."""
        if event.type == "response.output_text.delta":
            self.pieces.append(event.delta)
        elif event.type == "error":
            self.errors.append(event.error.message)
        elif event.type == "response.done":
            if event.response.status == "failed":
                raise InvalidRequestError("; ".join(self.errors) or "the response failed")
            return "".join(self.pieces)
        return None


class RealtimeSession:
    """One open realtime session (from `AudioTextClient.realtime`)."""

    def __init__(self, connection: Any, silence_duration_ms: int | None) -> None:
        self.connection = connection
        self.trailing_silence_s = trailing_silence_s(silence_duration_ms)

    def send(self, event: dict[str, Any]) -> None:
        """Send any client event of the Realtime API."""
        self.connection.send(cast(Any, event))

    def send_audio(self, audio: AudioSource, *, pace: bool = False) -> None:
        """Stream a clip in 20 ms chunks (in real time with `pace`); with server VAD, then
        the silence that ends the turn."""
        for chunk in pcm16_chunks(audio, self.trailing_silence_s):
            self.send(append_event(chunk))
            if pace:
                time.sleep(CHUNK_MS / 1000)

    def send_pcm(self, chunks: Iterable[bytes]) -> None:
        """Stream raw 16 kHz PCM16 chunks as they come (a microphone)."""
        for chunk in chunks:
            self.send(append_event(chunk))

    def say(self, text: str) -> None:
        """Add a user text turn (answered by `respond()`)."""
        self.send(text_item(text))

    def commit(self) -> None:
        self.send({"type": "input_audio_buffer.commit"})

    def respond(self) -> None:
        self.send({"type": "response.create"})

    def cancel(self) -> None:
        self.send({"type": "response.cancel"})

    def events(self) -> Iterator[Any]:
        """The server's events, as the OpenAI SDK's models, until the session closes."""
        while True:
            yield self.connection.recv()

    def answer(self) -> str:
        """The text of the next response (`InvalidRequestError` if it failed)."""
        answer = _Answer()
        for event in self.events():
            text = answer.take(event)
            if text is not None:
                return text
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncRealtimeSession:
    """`RealtimeSession` with `await` (from `AsyncAudioTextClient.realtime`)."""

    def __init__(self, connection: Any, silence_duration_ms: int | None) -> None:
        self.connection = connection
        self.trailing_silence_s = trailing_silence_s(silence_duration_ms)

    async def send(self, event: dict[str, Any]) -> None:
        """Send any client event of the Realtime API."""
        await self.connection.send(cast(Any, event))

    async def send_audio(self, audio: AudioSource, *, pace: bool = False) -> None:
        """Stream a clip in 20 ms chunks (in real time with `pace`); with server VAD, then
        the silence that ends the turn."""
        for chunk in await asyncio.to_thread(pcm16_chunks, audio, self.trailing_silence_s):
            await self.send(append_event(chunk))
            if pace:
                await asyncio.sleep(CHUNK_MS / 1000)

    async def send_pcm(self, chunks: AsyncIterable[bytes]) -> None:
        """Stream raw 16 kHz PCM16 chunks as they come (a microphone)."""
        async for chunk in chunks:
            await self.send(append_event(chunk))

    async def say(self, text: str) -> None:
        """Add a user text turn (answered by `respond()`)."""
        await self.send(text_item(text))

    async def commit(self) -> None:
        await self.send({"type": "input_audio_buffer.commit"})

    async def respond(self) -> None:
        await self.send({"type": "response.create"})

    async def cancel(self) -> None:
        await self.send({"type": "response.cancel"})

    async def events(self) -> AsyncIterator[Any]:
        """The server's events, as the OpenAI SDK's models, until the session closes."""
        while True:
            yield await self.connection.recv()

    async def answer(self) -> str:
        """The text of the next response (`InvalidRequestError` if it failed)."""
        answer = _Answer()
        async for event in self.events():
            text = answer.take(event)
            if text is not None:
                return text
        raise AssertionError("unreachable")  # pragma: no cover
