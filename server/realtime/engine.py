"""One realtime answer through vLLM's chat serving path, the same door as every route.

The session's conversation becomes one streamed `ChatCompletionRequest` (user audio as
`input_audio` WAV parts), handed to vLLM's `OpenAIServingChat` in this process: its
renderer refuses control tokens in text turns, audiotext's media connector admits and
decodes the audio (`intake`, under a `RequestAudio` of the server's queue and
`--max-audio-seconds`), the processor and engine do the rest, with prefix caching across
turns. Closing the stream (a cancelled task) aborts the engine request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from audiotext.server import intake
from audiotext.server.errors import AudioRequestError

ROUTE = "/v1/realtime"


class EngineRefusal(Exception):
    """The engine path refused the turn (bad audio, too much audio, control tokens, ...)."""

    def __init__(self, message: str, status: int, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


@dataclass
class Finished:
    """The end of an answer: why it stopped and what it cost."""

    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None


@dataclass(frozen=True)
class AnswerRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    temperature: float | None

    def chat_request(self) -> ChatCompletionRequest:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return ChatCompletionRequest.model_validate(body)


async def answer(
    chat: OpenAIServingChat, request: AnswerRequest, audio: intake.RequestAudio
) -> AsyncIterator[str | Finished]:
    """Text pieces as the engine makes them, then one `Finished`; `EngineRefusal` if the
    request is refused. `audio` is the request's audio scope (limits and queue)."""
    try:
        chat_request = request.chat_request()
    except ValidationError as e:
        raise EngineRefusal(f"the conversation is not a valid chat request: {e}", 400) from e
    with intake.request_scope(audio):
        try:
            result = await chat.create_chat_completion(chat_request, None)
        except AudioRequestError as e:
            raise EngineRefusal(e.message, e.status, e.param) from e
        if isinstance(result, ErrorResponse):
            raise EngineRefusal(result.error.message, result.error.code, result.error.param)
        if isinstance(result, ChatCompletionResponse):  # asked to stream: never
            raise EngineRefusal("the engine answered a stream request whole", 500)
        finished = Finished(None, 0, 0, None)
        try:
            async for event in result:
                for piece in _pieces(event, finished):
                    yield piece
        finally:
            await result.aclose()
        audio.status = 200
        yield finished


def _pieces(event: str, finished: Finished) -> list[str]:
    payload = event.removeprefix("data: ").strip()
    if not payload or payload == "[DONE]":
        return []
    chunk = json.loads(payload)
    if "error" in chunk:
        error = chunk["error"]
        raise EngineRefusal(str(error.get("message")), int(error.get("code") or 500))
    pieces = []
    for choice in chunk.get("choices", []):
        delta = (choice.get("delta") or {}).get("content")
        if delta:
            pieces.append(delta)
        finished.finish_reason = choice.get("finish_reason") or finished.finish_reason
    usage = chunk.get("usage")
    if usage:
        finished.prompt_tokens = usage.get("prompt_tokens", 0)
        finished.completion_tokens = usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details") or {}
        finished.cached_tokens = details.get("cached_tokens")
    return pieces
