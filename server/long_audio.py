"""Long audio without silent truncation.

Qwen2-Audio hears at most 30 s per audio item; stock vLLM drops the rest without a word.
Here every audio part of a chat request is fetched (if remote), decoded and checked in
the API process (empty, too short, undecodable or too long audio is the client's 400 or
413, never a 500), then handed to vLLM as exact 16 kHz mono float WAV. Audio over 30 s is
cut at quiet points into windows of at most 30 s (vLLM's energy-based splitter) and sent
as consecutive audio items of the same turn. Text carrying Qwen2-Audio's control tokens
is refused, so nobody can forge an audio placeholder or a turn.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile

from audiotext.client._audio import (
    audio_token_count,
    decode,
    min_samples,
    to_model_rate,
)
from audiotext.client._constants import SAMPLE_RATE
from audiotext.client._exceptions import AudioTooLongError, InvalidAudioError
from audiotext.server.checkpoint import SPECIAL_TOKENS

WINDOW_S = 30.0
# Each cut is placed at the quietest 100 ms within the last second before a 30 s boundary.
SPLIT_SEARCH_S = 1.0
ENERGY_WINDOW_SAMPLES = 1600
# Decoders disagree on a file's length by a few samples; do not split for that.
TOLERANCE_S = 0.01

# What `input_audio.format` may say; the audio itself is decoded by its content.
INPUT_AUDIO_FORMATS = frozenset({"wav", "mp3", "flac", "ogg", "opus", "m4a", "mp4", "webm", "aac"})

Fetch = Callable[[str], Awaitable[bytes]]
Samples = npt.NDArray[np.float32]


class AudioRequestError(ValueError):
    """Audio the server refuses, with the HTTP status to answer (400 or 413)."""

    def __init__(self, message: str, status: int = 400, param: str = "messages") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


@dataclass(frozen=True)
class AudioLimits:
    """What one request may carry."""

    max_seconds: float
    max_items: int
    max_model_len: int


@dataclass
class AudioUsage:
    """What the model heard: total seconds, audio items (windows) and audio tokens."""

    seconds: float = 0.0
    windows: int = 0
    tokens: int = 0

    def add(self, num_samples: int, windows: int = 1) -> None:
        self.seconds += num_samples / SAMPLE_RATE
        self.windows += windows

    def as_dict(self) -> dict[str, float | int]:
        return {"seconds": round(self.seconds, 3), "windows": self.windows}


def split_windows(samples: Samples) -> list[Samples]:
    """Cut 16 kHz mono audio into windows of at most 30 s at low-energy points."""
    from vllm.multimodal.audio import split_audio

    windows: list[Samples] = split_audio(
        samples, SAMPLE_RATE, WINDOW_S, SPLIT_SEARCH_S, ENERGY_WINDOW_SAMPLES
    )
    tail = windows[-1]
    if len(windows) > 1 and len(tail) < min_samples():
        # A few samples past a boundary: too short for the encoder; pad with silence.
        windows[-1] = np.pad(tail, (0, min_samples() - len(tail)))
    return windows


def wav_part(samples: Samples) -> dict[str, Any]:
    """An `input_audio` part carrying float WAV (exact; it never leaves this server)."""
    buf = io.BytesIO()
    soundfile.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def is_audio_part(part: object) -> bool:
    return isinstance(part, Mapping) and part.get("type") in ("input_audio", "audio_url")


def audio_bytes_or_none(part: Mapping[str, Any]) -> tuple[bytes | None, str | None]:
    """The inline bytes of an audio part, or (None, url) when it must be fetched."""
    if part.get("type") == "input_audio":
        fields = part.get("input_audio") or {}
        if fields.get("format") not in INPUT_AUDIO_FORMATS:
            raise AudioRequestError(
                f"input_audio.format must be one of {', '.join(sorted(INPUT_AUDIO_FORMATS))}",
                param="input_audio.format",
            )
        return _b64(fields.get("data"), "input_audio.data"), None
    url = (part.get("audio_url") or {}).get("url")
    if not isinstance(url, str):
        raise AudioRequestError("audio_url.url must be a string", param="audio_url")
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise AudioRequestError("audio data URLs must be base64", param="audio_url")
        return _b64(payload, "audio_url.url"), None
    if url.startswith(("http://", "https://", "file:")):
        return None, url
    scheme = url.partition(":")[0] if ":" in url else "none"
    raise AudioRequestError(
        f"audio URLs must be http(s), data: or file:, not {scheme}", param="audio_url"
    )


def check_text(text: str) -> None:
    """Refuse Qwen2-Audio's control tokens in text: they would forge audio or turns."""
    for token in SPECIAL_TOKENS:
        if token in text:
            raise AudioRequestError(
                f"text contains the reserved token {token}; remove control tokens from text"
            )


async def expand_messages(
    messages: Sequence[Any], fetch: Fetch, limits: AudioLimits, run: Callable[..., Awaitable[Any]]
) -> tuple[list[Any], AudioUsage]:
    """Give every audio part to the model whole: long audio becomes several windows.

    Args:
        messages: chat messages (dicts), as vLLM parsed them.
        fetch: downloads an http(s) audio URL.
        limits: the server's limits on audio per request.
        run: runs blocking work off the event loop (e.g. `asyncio.to_thread`).
    """
    usage = AudioUsage()
    out: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            check_text(content)
        if not isinstance(content, list):
            out.append(message)
            continue
        parts: list[Any] = []
        for part in content:
            if not is_audio_part(part):
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    check_text(part["text"])
                parts.append(part)
                continue
            data, url = audio_bytes_or_none(part)
            if data is None:
                assert url is not None
                data = await fetch(url)
            parts.extend(await run(_expand_one, data, usage, limits))
        out.append({**message, "content": parts})
    check_limits(usage, limits)
    return out, usage


def check_limits(usage: AudioUsage, limits: AudioLimits) -> None:
    """Refuse audio beyond the configured duration, item count or context length."""
    if usage.seconds > limits.max_seconds + TOLERANCE_S:
        raise AudioRequestError(
            f"audio is {usage.seconds:.1f} s long; this server accepts at most "
            f"{limits.max_seconds:g} s per request (--max-audio-seconds)",
            status=413,
        )
    if usage.windows > limits.max_items:
        raise AudioRequestError(
            f"audio needs {usage.windows} items of at most {WINDOW_S:g} s; this server accepts "
            f"at most {limits.max_items} per request (--max-audios-per-prompt)"
        )
    if usage.tokens >= limits.max_model_len:
        raise AudioRequestError(
            f"audio needs {usage.tokens} tokens; the model's context is "
            f"{limits.max_model_len} tokens (--max-model-len)"
        )


def decode_windows(data: bytes, usage: AudioUsage, limits: AudioLimits) -> list[Samples]:
    """Decode one audio item into windows of at most 30 s, counting it in `usage`.

    Audio that would take the request over `limits.max_seconds` is refused (413) before it
    is decoded in full; undecodable, empty or too-short audio is a 400.
    """
    budget = limits.max_seconds - usage.seconds + TOLERANCE_S
    try:
        samples = to_model_rate(*decode(data, max_seconds=budget))
    except AudioTooLongError as e:
        raise AudioRequestError(
            f"audio is longer than {limits.max_seconds:g} s; this server accepts at most "
            f"{limits.max_seconds:g} s per request (--max-audio-seconds)",
            status=413,
        ) from e
    except InvalidAudioError as e:
        raise AudioRequestError(str(e)) from e
    windows = split_windows(samples) if len(samples) > WINDOW_S * SAMPLE_RATE else [samples]
    usage.add(len(samples), windows=len(windows))
    usage.tokens += sum(audio_token_count(len(w)) for w in windows)
    return windows


def _expand_one(data: bytes, usage: AudioUsage, limits: AudioLimits) -> list[dict[str, Any]]:
    return [wav_part(w) for w in decode_windows(data, usage, limits)]


def _b64(payload: object, param: str) -> bytes:
    if not isinstance(payload, str) or not payload:
        raise AudioRequestError(f"{param} is empty", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise AudioRequestError(f"{param} is not valid base64: {e}", param=param) from e
