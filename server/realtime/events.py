"""The server events of the OpenAI Realtime API (GA shapes, text output), built as JSON.

Each builder returns one event as a dict with a fresh `event_id`; the OpenAI SDK's own
pydantic models (`openai.types.realtime.RealtimeServerEvent`) accept every one of them
(`tests/unit/test_realtime.py`). Error codes are this server's, listed in `ErrorCode`.
"""

from __future__ import annotations

from typing import Any, Literal

from audiotext.server.realtime.session import new_id

# The `error.code` values this server sends; the README's realtime section lists them.
ErrorCode = Literal[
    "invalid_json",  # a message that is not a JSON object
    "unknown_event",  # an event type this server does not serve
    "invalid_event",  # a known event with a missing or wrong field
    "invalid_audio",  # append: not base64 PCM16
    "input_audio_buffer_full",  # append: the buffer would exceed --max-audio-seconds
    "input_audio_buffer_commit_empty",  # commit: under 100 ms of audio
    "conversation_already_has_active_response",  # response.create while one runs
    "response_cancel_not_active",  # response.cancel with none running
    "item_not_found",
    "invalid_request",  # the engine refused the turn (control tokens, too much audio, ...)
    "server_overloaded",  # sessions, requests or queued audio at their limit
    "invalid_api_key",
    "message_too_large",
    "idle_timeout",
    "session_expired",
    "server_shutting_down",
    "server_error",
]

ErrorType = Literal["invalid_request_error", "server_error"]


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error(
    message: str,
    code: ErrorCode,
    *,
    param: str | None = None,
    client_event_id: str | None = None,
    kind: ErrorType = "invalid_request_error",
) -> dict[str, Any]:
    return event(
        "error",
        error={
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    )


def response(
    response_id: str,
    status: str,
    output: list[dict[str, Any]],
    max_output_tokens: int | None,
    *,
    usage: dict[str, Any] | None = None,
    status_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `realtime.response` object, as `response.created` and `response.done` carry it."""
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output,
        "output_modalities": ["text"],
        "max_output_tokens": max_output_tokens or "inf",
        "conversation_id": None,
        "metadata": None,
        "usage": usage,
    }


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> dict[str, Any]:
    """vLLM's usage in the Realtime API's terms (input tokens mix audio and text; cached
    tokens only where vLLM reports them, with --enable-prompt-tokens-details)."""
    usage: dict[str, Any] = {
        "total_tokens": prompt_tokens + completion_tokens,
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "output_token_details": {"text_tokens": completion_tokens, "audio_tokens": 0},
    }
    if cached_tokens is not None:
        usage["input_token_details"] = {"cached_tokens": cached_tokens}
    return usage


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}
