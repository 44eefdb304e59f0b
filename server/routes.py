"""audiotext's HTTP routes, served by vLLM's own API server through the endpoint plugin.

- `POST /v1/chat/completions`: vLLM's route, with long audio given whole (see
  `long_audio`) and the audio heard reported as `"audio": {"seconds", "windows"}`.
- `POST /v1/audio-text-to-text`: the Hugging Face task shape, run through the same chat
  serving path (same engine, batching and caches).
- `POST /v1/audio/transcriptions`, `/v1/audio/translations`: OpenAI's multipart routes,
  window by window, windows running concurrently through the engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.utils.api_utils import (
    load_aware_call,
    validate_json_request,
    with_cancellation,
)
from vllm.entrypoints.serve.utils.sse_keep_alive import with_sse_keep_alive

from audiotext.client._core import completion_params
from audiotext.client._exceptions import (
    InvalidRequestError,
)
from audiotext.server.long_audio import (
    AudioLimits,
    AudioRequestError,
    AudioUsage,
    check_text,
    decode_windows,
    expand_messages,
    wav_part,
)
from audiotext.server.media import MediaFetcher

router = APIRouter()

# Per window of at most 30 s: Whisper's own cap on tokens per window.
TRANSCRIPT_MAX_TOKENS = 448
TRANSCRIBE_PROMPT = "Transcribe the speech in this audio exactly, word for word."
TRANSLATE_PROMPT = "Translate the speech in this audio into English."
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    HTTPStatus.BAD_REQUEST.value: {"model": ErrorResponse},
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value: {"model": ErrorResponse},
}


@dataclass
class RouteState:
    """Per-app state the routes share: limits, the media fetcher, the audio queue."""

    limits: AudioLimits
    fetcher: MediaFetcher
    max_queued_audio_s: float
    queued_audio_s: float = 0.0

    def admit(self, seconds: float) -> None:
        """Count a request's audio as queued, or refuse it (503) when the queue is full."""
        if self.queued_audio_s > 0 and self.queued_audio_s + seconds > self.max_queued_audio_s:
            raise AudioRequestError(
                f"the server has {self.queued_audio_s:.0f} s of audio in flight, its limit is "
                f"{self.max_queued_audio_s:g} s (--max-queued-audio-s); retry shortly",
                status=503,
            )
        self.queued_audio_s += seconds

    def release(self, seconds: float) -> None:
        self.queued_audio_s = max(0.0, self.queued_audio_s - seconds)


class TaskInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audio: str | list[str] = Field(description="http(s) URL, data: URL or base64 audio")
    text: str | None = Field(default=None, description="instruction or question")


class TaskRequest(BaseModel):
    """The Hugging Face audio-text-to-text request, flat or in the inference form."""

    model_config = ConfigDict(extra="forbid")

    audio: str | list[str] | None = Field(
        default=None, description="http(s) URL, data: URL or base64 audio; a list for several"
    )
    text: str | None = Field(default=None, description="instruction or question (optional)")
    inputs: TaskInputs | None = Field(default=None, description="inference form: {audio, text}")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="max_new_tokens, temperature, top_p, top_k, do_sample, seed, stop, "
        "repetition_penalty, and any other vLLM sampling parameter",
    )
    model: str | None = Field(default=None, description="served model name (default: the one)")
    stream: bool = Field(default=False, description="stream server-sent events")


class AudioHeard(BaseModel):
    seconds: float = Field(description="seconds of audio the model heard")
    windows: int = Field(description="audio items it heard them in (30 s at most each)")


class TaskResponse(BaseModel):
    generated_text: str
    finish_reason: str | None
    usage: dict[str, Any]
    audio: AudioHeard


@router.post(
    "/v1/chat/completions",
    dependencies=[Depends(validate_json_request)],
    responses={HTTPStatus.OK.value: {"content": {"text/event-stream": {}}}, **ERROR_RESPONSES},
)
@with_cancellation
@load_aware_call
async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Response:
    """vLLM's chat completions, hearing long audio whole."""
    try:
        usage = await _expand_audio(request, raw_request)
        result = await _generate(raw_request, request, usage)
    except AudioRequestError as e:
        return error_response(e.message, e.status, e.param)
    if isinstance(result, ErrorResponse):
        return JSONResponse(result.model_dump(), status_code=result.error.code)
    if isinstance(result, ChatCompletionResponse):
        body = {**result.model_dump(), "audio": usage.as_dict()}
        return JSONResponse(body, headers=_audio_headers(usage))
    return StreamingResponse(
        _keep_alive(result, raw_request),
        media_type="text/event-stream",
        headers=_audio_headers(usage),
    )


@router.post(
    "/v1/audio-text-to-text",
    response_model=TaskResponse,
    responses={HTTPStatus.OK.value: {"content": {"text/event-stream": {}}}, **ERROR_RESPONSES},
)
@with_cancellation
@load_aware_call
async def audio_text_to_text(request: TaskRequest, raw_request: Request) -> Response:
    """`{"audio", "text"}` -> `{"generated_text"}`, or events when `"stream": true`."""
    try:
        chat_request = task_to_chat(request, _served_model(raw_request))
        usage = await _expand_audio(chat_request, raw_request)
        result = await _generate(raw_request, chat_request, usage)
    except AudioRequestError as e:
        return error_response(e.message, e.status, e.param)
    except (InvalidRequestError, ValidationError) as e:
        return error_response(str(e), 400, "parameters")
    if isinstance(result, ErrorResponse):
        return JSONResponse(result.model_dump(), status_code=result.error.code)
    if isinstance(result, ChatCompletionResponse):
        choice = result.choices[0]
        return JSONResponse(
            {
                "generated_text": choice.message.content or "",
                "finish_reason": choice.finish_reason,
                "usage": result.usage.model_dump() if result.usage else {},
                "audio": usage.as_dict(),
            },
            headers=_audio_headers(usage),
        )
    return StreamingResponse(
        task_events(result, usage), media_type="text/event-stream", headers=_audio_headers(usage)
    )


@router.post("/v1/audio/transcriptions", responses=ERROR_RESPONSES)
@with_cancellation
async def create_transcription(
    raw_request: Request,
    file: UploadFile = File(..., description="audio file"),  # noqa: B008 (FastAPI's idiom)
    model: str | None = Form(None),
    prompt: str | None = Form(None, description="context: earlier text, names, spelling"),
    language: str | None = Form(None, description="language of the speech, e.g. en"),
    response_format: str = Form("json", description="json or text"),
    temperature: float = Form(0.0),
) -> Response:
    """OpenAI's transcription route for Qwen2-Audio, long files window by window."""
    return await _speech_to_text(
        raw_request, file, model, prompt, language, response_format, temperature, "transcribe"
    )


@router.post("/v1/audio/translations", responses=ERROR_RESPONSES)
@with_cancellation
async def create_translation(
    raw_request: Request,
    file: UploadFile = File(..., description="audio file"),  # noqa: B008 (FastAPI's idiom)
    model: str | None = Form(None),
    prompt: str | None = Form(None, description="context: earlier text, names, spelling"),
    response_format: str = Form("json", description="json or text"),
    temperature: float = Form(0.0),
) -> Response:
    """OpenAI's translation route (into English) for Qwen2-Audio."""
    return await _speech_to_text(
        raw_request, file, model, prompt, None, response_format, temperature, "translate"
    )


def task_to_chat(task: TaskRequest, default_model: str) -> ChatCompletionRequest:
    """The task request as a chat request: one user turn, audio first, then the text."""
    inputs = task.inputs or TaskInputs(audio=task.audio or [], text=task.text)
    if task.inputs is not None and (task.audio is not None or task.text is not None):
        raise InvalidRequestError("give either 'inputs' or 'audio'/'text', not both")
    sources = inputs.audio if isinstance(inputs.audio, list) else [inputs.audio]
    if not sources:
        raise AudioRequestError("the request has no 'audio'", param="audio")
    content: list[dict[str, Any]] = [_audio_part(s) for s in sources]
    if inputs.text:
        content.append({"type": "text", "text": inputs.text})
    params = completion_params(task.parameters)
    params.update(params.pop("extra_body", {}))
    body = {
        "model": task.model or default_model,
        "messages": [{"role": "user", "content": content}],
        "stream": task.stream,
        **params,
    }
    if task.stream:
        body["stream_options"] = {"include_usage": True}
    return ChatCompletionRequest.model_validate(body)


async def task_events(chunks: AsyncIterator[str], usage: AudioUsage) -> AsyncIterator[str]:
    """vLLM's chat chunks -> task events: `{"delta"}` each, then the whole answer, `[DONE]`."""
    text: list[str] = []
    final: dict[str, Any] = {"finish_reason": None, "usage": {}, "audio": usage.as_dict()}
    async for event in chunks:
        payload = event.removeprefix("data: ").strip()
        if not payload:
            continue
        if payload == "[DONE]":
            break
        chunk = json.loads(payload)
        if "error" in chunk:
            yield f"data: {json.dumps(chunk)}\n\n"
            return
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {}).get("content")
            if delta:
                text.append(delta)
                yield f"data: {json.dumps({'delta': delta})}\n\n"
            final["finish_reason"] = choice.get("finish_reason") or final["finish_reason"]
        final["usage"] = chunk.get("usage") or final["usage"]
    yield f"data: {json.dumps({'generated_text': ''.join(text), **final})}\n\n"
    yield "data: [DONE]\n\n"


def error_response(message: str, status: int, param: str | None = None) -> JSONResponse:
    """An OpenAI-style error object (with `Retry-After` when the server is full)."""
    kind = {413: "RequestTooLarge", 503: "Overloaded"}.get(status, "BadRequestError")
    error = {"message": message, "type": kind, "param": param, "code": status}
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def _generate(
    raw_request: Request, request: ChatCompletionRequest, usage: AudioUsage
) -> ChatCompletionResponse | ErrorResponse | AsyncGenerator[str, None]:
    """Run a chat request through vLLM with its audio counted in the queue until done."""
    state = _state(raw_request)
    state.admit(usage.seconds)
    try:
        result = await _chat(raw_request).create_chat_completion(request, raw_request)
    except BaseException:
        state.release(usage.seconds)
        raise
    if isinstance(result, ChatCompletionResponse | ErrorResponse):
        state.release(usage.seconds)
        return result
    return _released_after(result, state, usage.seconds)


async def _released_after(
    chunks: AsyncGenerator[str, None], state: RouteState, seconds: float
) -> AsyncGenerator[str, None]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        state.release(seconds)


async def _speech_to_text(
    raw_request: Request,
    file: UploadFile,
    model: str | None,
    prompt: str | None,
    language: str | None,
    response_format: str,
    temperature: float,
    task: Literal["transcribe", "translate"],
) -> Response:
    if response_format not in ("json", "text"):
        return error_response(
            f"response_format {response_format!r} is not supported; use json or text",
            400,
            "response_format",
        )
    try:
        if prompt:
            check_text(prompt)
    except AudioRequestError as e:
        return error_response(e.message, e.status, "prompt")
    data = await file.read()
    usage = AudioUsage()
    try:
        windows = await asyncio.to_thread(decode_windows, data, usage, _state(raw_request).limits)
    except AudioRequestError as e:
        return error_response(e.message, e.status, "file")
    instruction = TRANSCRIBE_PROMPT if task == "transcribe" else TRANSLATE_PROMPT
    if language:
        instruction += f" The speech is in {language}."
    if prompt:
        instruction += f" Context: {prompt}"
    requests = [
        ChatCompletionRequest.model_validate(
            {
                "model": model or _served_model(raw_request),
                "messages": [
                    {
                        "role": "user",
                        "content": [wav_part(w), {"type": "text", "text": instruction}],
                    }
                ],
                "temperature": temperature,
                "max_tokens": TRANSCRIPT_MAX_TOKENS,
            }
        )
        for w in windows
    ]
    handler, state = _chat(raw_request), _state(raw_request)
    try:
        state.admit(usage.seconds)
    except AudioRequestError as e:
        return error_response(e.message, e.status, "file")
    try:
        # Windows are independent requests: the engine batches them together.
        results = await asyncio.gather(*(handler.create_chat_completion(r, None) for r in requests))
    finally:
        state.release(usage.seconds)
    texts = []
    for result in results:
        if isinstance(result, ErrorResponse):
            return JSONResponse(result.model_dump(), status_code=result.error.code)
        assert isinstance(result, ChatCompletionResponse)
        texts.append((result.choices[0].message.content or "").strip())
    text = " ".join(t for t in texts if t)
    if response_format == "text":
        return PlainTextResponse(text, headers=_audio_headers(usage))
    return JSONResponse(
        {
            "text": text,
            "usage": {"type": "duration", "seconds": round(usage.seconds, 3)},
            "audio": usage.as_dict(),
        },
        headers=_audio_headers(usage),
    )


async def _expand_audio(request: ChatCompletionRequest, raw_request: Request) -> AudioUsage:
    state = _state(raw_request)
    messages, usage = await expand_messages(
        request.messages, state.fetcher.fetch, state.limits, asyncio.to_thread
    )
    request.messages = messages
    return usage


def _audio_part(source: str) -> dict[str, Any]:
    if source.startswith(("http://", "https://", "data:")):
        return {"type": "audio_url", "audio_url": {"url": source}}
    return {"type": "input_audio", "input_audio": {"data": source, "format": "wav"}}


def _audio_headers(usage: AudioUsage) -> dict[str, str]:
    return {"X-Audio-Seconds": f"{usage.seconds:.3f}", "X-Audio-Windows": str(usage.windows)}


async def _keep_alive(
    chunks: AsyncGenerator[str, None], raw_request: Request
) -> AsyncIterator[str]:
    args = getattr(raw_request.app.state, "args", None)
    async for chunk in with_sse_keep_alive(
        chunks, float(getattr(args, "sse_keep_alive_interval", 0))
    ):
        yield chunk


def _chat(raw_request: Request) -> OpenAIServingChat:
    handler: OpenAIServingChat | None = raw_request.app.state.openai_serving_chat
    if handler is None:
        raise NotImplementedError("the model does not support chat completions")
    return handler


def _served_model(raw_request: Request) -> str:
    return str(raw_request.app.state.openai_serving_models.base_model_paths[0].name)


def _state(raw_request: Request) -> RouteState:
    state: RouteState = raw_request.app.state.audiotext
    return state
