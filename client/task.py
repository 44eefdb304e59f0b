"""The audio-text-to-text task's request, defined once for the client and the server.

`{"audio": source | [sources], "text": optional}`, or the Hugging Face inference form
`{"inputs": {"audio", "text"}, "parameters": {...}}`; `parameters`, `model` and `stream`
may stand beside either. The client (`AudioTextClient.generate`) and the server's task
endpoint (`/v1/audio-text-to-text`) validate requests with the same model, so a request
one accepts the other accepts too. Sources are whatever the caller may send: on the
server, URLs and base64 strings; in the client, also paths, bytes and arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from audiotext.client._constants import DEFAULT_MAX_NEW_TOKENS
from audiotext.client._exceptions import InvalidRequestError

__all__ = [
    "TaskInputs",
    "TaskRequest",
    "api_name",
    "canonical_params",
    "completion_params",
    "parse_task",
]

_AUDIO_SCHEMA: Any = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    "description": "http(s) URL, data: URL or base64 audio; a list for several",
}
# Parameters the OpenAI chat API takes by name; everything else goes in `extra_body`,
# which vLLM reads (top_k, repetition_penalty, min_p, ...).
_OPENAI_PARAMS = frozenset(
    {"max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
     "frequency_penalty", "logprobs", "top_logprobs", "user"}
)  # fmt: skip
_ALIASES = {"max_new_tokens": "max_tokens", "max_completion_tokens": "max_tokens"}
# The task's own spelling of the parameters that have several.
_TASK_NAMES = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens"}
# Names a request may carry by mistake at the top level instead of in `parameters`.
_PARAMETER_NAMES = _OPENAI_PARAMS | _ALIASES.keys() | {
    "top_k", "do_sample", "repetition_penalty", "min_p", "min_new_tokens"
}  # fmt: skip


class TaskInputs(BaseModel):
    """The task's inputs: audio and an optional instruction."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    audio: Any = Field(json_schema_extra=_AUDIO_SCHEMA)
    text: str | None = Field(default=None, description="instruction or question (optional)")

    @property
    def sources(self) -> list[Any]:
        """The audio sources, as a list."""
        return list(self.audio) if isinstance(self.audio, list) else [self.audio]


class TaskRequest(BaseModel):
    """The Hugging Face audio-text-to-text request, flat or in the inference form."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    audio: Any = Field(default=None, json_schema_extra=_AUDIO_SCHEMA)
    text: str | None = Field(default=None, description="instruction or question (optional)")
    inputs: TaskInputs | None = Field(default=None, description="inference form: {audio, text}")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="max_new_tokens, temperature, top_p, top_k, do_sample, seed, stop, "
        "repetition_penalty, and any other vLLM sampling parameter",
    )
    model: str | None = Field(default=None, description="served model name (default: the one)")
    stream: bool = Field(default=False, description="stream server-sent events")

    @model_validator(mode="after")
    def _one_form_with_audio(self) -> TaskRequest:
        if self.inputs is not None and (self.audio is not None or self.text is not None):
            raise ValueError("give either 'inputs' or 'audio'/'text', not both")
        inputs = self.task_inputs()
        if inputs.audio is None or (isinstance(inputs.audio, list) and not inputs.audio):
            raise ValueError("the request has no 'audio'")
        return self

    def task_inputs(self) -> TaskInputs:
        """The inputs, whichever form the request used."""
        return self.inputs or TaskInputs(audio=self.audio, text=self.text)


def parse_task(request: object) -> TaskRequest:
    """Validate a task request (a dict), or raise `InvalidRequestError` saying what is off."""
    if isinstance(request, TaskRequest):
        return request
    if not isinstance(request, Mapping):
        raise InvalidRequestError(
            f"a request is a dict like {{'audio': ..., 'text': ...}}, not {type(request).__name__}"
        )
    try:
        return TaskRequest.model_validate(dict(request))
    except ValidationError as e:
        raise InvalidRequestError(validation_message(e)) from None


def validation_message(error: ValidationError) -> str:
    """One line per problem, naming the field the user wrote."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            hint = ""
            if where in _PARAMETER_NAMES:
                hint = f' (generation parameters go in "parameters": {{"{where}": ...}})'
            lines.append(f"unknown request key: {where}{hint}")
        else:
            message = str(problem["msg"]).removeprefix("Value error, ")
            lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def api_name(key: str) -> str:
    """The name the OpenAI API and vLLM know a parameter by (`max_new_tokens` -> `max_tokens`)."""
    return _ALIASES.get(key, key)


def canonical_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters under the task's names (`max_tokens` -> `max_new_tokens`), unset ones
    dropped, so that two sets of them merge with `{**defaults, **overrides}`."""
    return {_TASK_NAMES.get(k, k): v for k, v in params.items() if v is not None}


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
