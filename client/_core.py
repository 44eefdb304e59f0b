"""Sans-IO core shared by the sync and async clients.

Task requests (`{"audio": ..., "text": ...}`) and chat messages become OpenAI chat
messages; Hugging Face generation parameters become OpenAI/vLLM ones; completions become
`Generation` results. Nothing here touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audiotext.client._constants import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_PORT,
    HOST_ENV,
    PORT_ENV,
)
from audiotext.client._exceptions import APIStatusError, AudioTextError, InvalidRequestError
from audiotext.client.audio import AudioSource, PreparedAudio
from audiotext.client.task import api_name, canonical_params, parse_task
from audiotext.client.task import completion_params as completion_params

_ROLES = ("system", "user", "assistant")
# Keys of a Hugging Face style audio part that hold the audio itself.
_AUDIO_KEYS = ("audio", "path", "url")

Preparer = Callable[[AudioSource], PreparedAudio]


@dataclass(frozen=True)
class Generation:
    """One answer, with what it cost."""

    generated_text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    audio_seconds: float | None
    """Seconds of audio sent (None when a remote URL was passed through unseen)."""
    model: str

    def to_dict(self) -> dict[str, Any]:
        """The task's output shape: `{"generated_text": ...}`."""
        return {"generated_text": self.generated_text}


@dataclass(frozen=True)
class Segment:
    """A stretch of a transcript with its place in the audio, in seconds."""

    id: int
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcription:
    """A transcript (or translation); `segments` are filled for `verbose_json`."""

    text: str
    language: str | None = None
    duration: float | None = None
    """Seconds of audio the model heard."""
    segments: list[Segment] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Transcription:
        """The server's `json` or `verbose_json` body -> `Transcription`."""
        audio = body.get("audio") or {}
        duration = body.get("duration", audio.get("seconds"))
        return cls(
            text=str(body.get("text", "")),
            language=body.get("language"),
            duration=None if duration is None else float(duration),
            segments=[
                Segment(id=int(s["id"]), start=float(s["start"]), end=float(s["end"]),
                        text=str(s["text"]))
                for s in body.get("segments") or []
            ],
        )  # fmt: skip


def default_base_url(environ: Mapping[str, str]) -> str:
    """`$AUDIOTEXT_BASE_URL`, else where `audiotext serve` listens with the same environment
    (`$AUDIOTEXT_HOST`, `$AUDIOTEXT_PORT`), else http://localhost:8000/v1."""
    if environ.get(BASE_URL_ENV):
        return environ[BASE_URL_ENV]
    host, port = environ.get(HOST_ENV), environ.get(PORT_ENV)
    if not host and not port:
        return DEFAULT_BASE_URL
    host = host or "localhost"
    if host in ("0.0.0.0", "::"):  # every interface: this machine is reached on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port or DEFAULT_PORT}/v1"


def merge_params(
    request_params: Mapping[str, Any], call_params: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A request's own parameters over the call's (the more specific wins), and the names
    the caller typed for parameters the server knows by another (`max_tokens` ->
    `max_new_tokens`), to name them in the server's errors."""
    typed: dict[str, str] = {}
    for params in (call_params, request_params):
        for key, value in params.items():
            if value is not None and api_name(key) != key:
                typed[api_name(key)] = key
    return {**canonical_params(call_params), **canonical_params(request_params)}, typed


def with_typed_names(error: AudioTextError, typed: Mapping[str, str]) -> AudioTextError:
    """The server's error, with parameter names as the caller typed them."""
    if not typed or not isinstance(error, APIStatusError):
        return error
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, typed)) + r")\b")
    message = pattern.sub(lambda m: typed[m.group(1)], error.message)
    if message == error.message:
        return error
    return type(error)(message, status_code=error.status_code, body=error.body)


def split_task(request: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """Validate a task request (`task.TaskRequest`); return its inputs and parameters."""
    task = parse_task(request)
    inputs = task.task_inputs()
    return {"audio": inputs.audio, "text": inputs.text}, dict(task.parameters)


def task_messages(request: Mapping[str, Any], system: str | None = None) -> list[dict[str, Any]]:
    """`{"audio": source | [sources], "text": optional}` -> one user turn (audio first)."""
    inputs = parse_task(request).task_inputs()
    content: list[dict[str, Any]] = [{"type": "audio", "audio": s} for s in inputs.sources]
    if inputs.text:
        content.append({"type": "text", "text": inputs.text})
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": content}]


def prepare_messages(
    messages: Sequence[Mapping[str, Any]], prepare: Preparer
) -> tuple[list[dict[str, Any]], float | None]:
    """Replace every Hugging Face style audio part with a ready OpenAI part.

    OpenAI parts (`input_audio`, `audio_url`, `text`) and string contents pass unchanged.
    Returns the messages and the seconds of audio they carry (None if any is unknown).
    """
    if not messages:
        raise InvalidRequestError("messages are empty")
    out: list[dict[str, Any]] = []
    seconds: float | None = 0.0
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            raise InvalidRequestError(f"each message needs a role among {', '.join(_ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            out.append(dict(message))
            continue
        if not isinstance(content, list):
            raise InvalidRequestError("message content must be a string or a list of parts")
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "audio":
                prepared = prepare(_audio_of(part))
                parts.append(prepared.part)
                seconds = (
                    None
                    if seconds is None or prepared.seconds is None
                    else seconds + prepared.seconds
                )
            else:
                parts.append(part)
        out.append({**message, "content": parts})
    return out, seconds


def to_generation(
    completion: Any, audio_seconds: float | None, heard: str | None = None
) -> Generation:
    """An OpenAI chat completion -> `Generation`.

    Args:
        completion: the chat completion.
        audio_seconds: seconds of audio the client sent, when it knows (it decoded them).
        heard: the server's `X-Audio-Seconds` header, used when the client does not know.
    """
    if audio_seconds is None and heard:
        try:
            audio_seconds = float(heard)
        except ValueError:
            audio_seconds = None
    choice = completion.choices[0]
    usage = completion.usage
    return Generation(
        generated_text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        audio_seconds=audio_seconds,
        model=completion.model,
    )


def stream_text(chunk: Any) -> str:
    """The text a streamed chunk adds."""
    return "".join(choice.delta.content or "" for choice in chunk.choices)


def _audio_of(part: Mapping[str, Any]) -> AudioSource:
    for key in _AUDIO_KEYS:
        if part.get(key) is not None:
            return part[key]  # type: ignore[no-any-return]
    raise InvalidRequestError("an audio part needs 'audio', 'path' or 'url'")
