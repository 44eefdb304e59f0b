"""Sans-IO core shared by the sync and async clients.

Task requests (`{"audio": ..., "text": ...}`) and chat messages become OpenAI chat
messages; Hugging Face generation parameters become OpenAI/vLLM ones; completions become
`Generation` results. Nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audiotext.client._audio import AudioSource, PreparedAudio
from audiotext.client._constants import DEFAULT_MAX_NEW_TOKENS
from audiotext.client._exceptions import InvalidRequestError

# Parameters the OpenAI chat API takes by name; everything else goes in `extra_body`,
# which vLLM reads (top_k, repetition_penalty, min_p, ...).
_OPENAI_PARAMS = frozenset(
    {"max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
     "frequency_penalty", "logprobs", "top_logprobs", "user"}
)  # fmt: skip
_ALIASES = {"max_new_tokens": "max_tokens", "max_completion_tokens": "max_tokens"}
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
    """Accept `{"audio", "text"}` or the inference form `{"inputs": {...}, "parameters"}`."""
    if not isinstance(request, Mapping):
        raise InvalidRequestError(
            f"a request is a dict like {{'audio': ..., 'text': ...}}, not {type(request).__name__}"
        )
    if "inputs" in request:
        inputs, params = request["inputs"], request.get("parameters") or {}
        if not isinstance(inputs, Mapping) or not isinstance(params, Mapping):
            raise InvalidRequestError("'inputs' and 'parameters' must be objects")
        return inputs, dict(params)
    return request, {}


def task_messages(request: Mapping[str, Any], system: str | None = None) -> list[dict[str, Any]]:
    """`{"audio": source | [sources], "text": optional}` -> one user turn (audio first)."""
    unknown = set(request) - {"audio", "text"}
    if unknown:
        raise InvalidRequestError(f"unknown request keys: {', '.join(sorted(unknown))}")
    audio = request.get("audio")
    if audio is None or (isinstance(audio, list) and not audio):
        raise InvalidRequestError("the request has no 'audio'")
    text = request.get("text")
    if text is not None and not isinstance(text, str):
        raise InvalidRequestError("'text' must be a string")
    sources = audio if isinstance(audio, list) else [audio]
    content: list[dict[str, Any]] = [{"type": "audio", "audio": s} for s in sources]
    if text:
        content.append({"type": "text", "text": text})
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


def completion_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hugging Face / OpenAI generation parameters -> `chat.completions.create` keywords."""
    named: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        key = _ALIASES.get(key, key)
        if key == "do_sample":
            continue
        if key == "n" and value != 1:
            raise InvalidRequestError("n must be 1: one request gives one answer")
        (named if key in _OPENAI_PARAMS else extra)[key] = value
    if params.get("do_sample") is False:
        named["temperature"] = 0.0  # greedy, as transformers' do_sample=False
    named.setdefault("max_tokens", DEFAULT_MAX_NEW_TOKENS)
    if extra:
        named["extra_body"] = extra
    return named


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
