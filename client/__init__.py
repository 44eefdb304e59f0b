"""audiotext's client SDK: the audio-text-to-text task on top of OpenAI audio chat.

    from audiotext.client import AudioTextClient
    client = AudioTextClient(base_url="http://localhost:8000/v1")
    client.generate({"audio": "meeting.mp3", "text": "Summarize this in one sentence."})
    client.transcribe("meeting.mp3", response_format="verbose_json").segments

Light: it needs the OpenAI SDK and audio decoders, not vLLM or torch. The names below
load on first use, so the `audiotext` command line (whose parser reads the client's
option definitions) starts without importing the OpenAI SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audiotext.client._client import AsyncAudioTextClient, AudioTextClient, BatchResult
    from audiotext.client._constants import DEFAULT_BASE_URL, SAMPLE_RATE
    from audiotext.client._core import Generation, Segment, Transcription
    from audiotext.client._exceptions import (
        APIConnectionError,
        APIError,
        APIStatusError,
        AudioTextError,
        AuthenticationError,
        BadRequestError,
        InvalidAudioError,
        InvalidRequestError,
        OverloadedError,
        ServerError,
    )
    from audiotext.client._realtime import AsyncRealtimeSession, RealtimeSession
    from audiotext.client.audio import AudioSource, audio_token_count, load_audio

__all__ = [
    "DEFAULT_BASE_URL",
    "SAMPLE_RATE",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "AsyncAudioTextClient",
    "AsyncRealtimeSession",
    "AudioSource",
    "AudioTextClient",
    "AudioTextError",
    "AuthenticationError",
    "BadRequestError",
    "BatchResult",
    "Generation",
    "InvalidAudioError",
    "InvalidRequestError",
    "OverloadedError",
    "RealtimeSession",
    "Segment",
    "ServerError",
    "Transcription",
    "audio_token_count",
    "load_audio",
]

_MODULES = {
    "AsyncAudioTextClient": "_client", "AudioTextClient": "_client", "BatchResult": "_client",
    "DEFAULT_BASE_URL": "_constants", "SAMPLE_RATE": "_constants",
    "Generation": "_core", "Segment": "_core", "Transcription": "_core",
    "AsyncRealtimeSession": "_realtime", "RealtimeSession": "_realtime",
    "AudioSource": "audio", "audio_token_count": "audio", "load_audio": "audio",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = importlib.import_module(f"{__name__}.{_MODULES.get(name, '_exceptions')}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
