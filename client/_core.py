"""Sans-IO core shared by the sync and async clients.

Task requests (`{"audio": ..., "text": ...}`) and chat messages become OpenAI chat
messages; Hugging Face generation parameters become OpenAI/vLLM ones; completions become
`Generation` results. Nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audiotext.client._exceptions import InvalidRequestError
from audiotext.client.audio import AudioSource, PreparedAudio
from audiotext.client.task import completion_params as completion_params
from audiotext.client.task import parse_task

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


def to_generation(completion: Any, audio_seconds: float | None) -> Generation:
    """An OpenAI chat completion -> `Generation`."""
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


def _add(total: float | None, seconds: float | None) -> float | None:
    return None if total is None or seconds is None else total + seconds


def _audio_of(part: Mapping[str, Any]) -> AudioSource:
    for key in _AUDIO_KEYS:
        if part.get(key) is not None:
            return part[key]  # type: ignore[no-any-return]
    raise InvalidRequestError("an audio part needs 'audio', 'path' or 'url'")
