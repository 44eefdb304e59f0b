"""Talking to `/v1/realtime` in tests: PCM16 chunks, session settings, events checked
against the OpenAI SDK's own models."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
CHUNK_MS = 20


def pcm16(samples: np.ndarray, rate: int = 16000, to_rate: int = 16000) -> bytes:
    """Float samples at `rate` as PCM16 at `to_rate`."""
    if rate != to_rate:
        samples = soxr.resample(samples, rate, to_rate)
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def silence(seconds: float, rate: int) -> bytes:
    return bytes(int(seconds * rate) * 2)


def chunks(pcm: bytes, rate: int, ms: int = CHUNK_MS) -> Iterator[bytes]:
    size = rate * ms // 1000 * 2
    for i in range(0, len(pcm), size):
        yield pcm[i : i + size]


def append(chunk: bytes) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}


def session(rate: int = 24000, vad: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A GA `session.update` body: text out, PCM16 at `rate`, server VAD with `vad`'s
    settings (`manual=True`: no turn detection, the client commits)."""
    manual = extra.pop("manual", False)
    detection = None if manual else {"type": "server_vad", **(vad or {})}
    return {
        "type": "realtime",
        "output_modalities": ["text"],
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate},
                            "turn_detection": detection}},
        **extra,
    }  # fmt: skip


def checked(raw: str | bytes) -> dict[str, Any]:
    """One server event, validated by the OpenAI SDK's models (every field known).

    One deliberate extension: a session's input rate may be 16000 (the SDK's type knows
    only 24000); it is validated as 24000.
    """
    event: dict[str, Any] = json.loads(raw)
    parsed = SERVER_EVENT.validate_python(_as_24khz(event))
    assert set(event) <= set(type(parsed).model_fields), event
    return event


@dataclass
class Turn:
    """What one answered turn showed: the VAD's cut, the answer, its usage."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def first(self, kind: str) -> dict[str, Any]:
        return next(e for e in self.events if e["type"] == kind)

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]

    @property
    def text(self) -> str:
        return "".join(e["delta"] for e in self.events if e["type"] == "response.output_text.delta")

    @property
    def done(self) -> dict[str, Any]:
        return self.first("response.done")["response"]


def _as_24khz(event: dict[str, Any]) -> dict[str, Any]:
    audio_format = event.get("session", {}).get("audio", {}).get("input", {}).get("format", {})
    if audio_format.get("rate") != 16000:
        return event
    copy = json.loads(json.dumps(event))
    copy["session"]["audio"]["input"]["format"]["rate"] = 24000
    return copy
