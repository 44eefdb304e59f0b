"""audiotext's HTTP routes, served by vLLM's own API server through the endpoint plugin.

Audio reaches the model the same way on every route: through vLLM's media connector
(audiotext's, `connector`) and audiotext's Qwen2-Audio processor (long audio in windows).
These routes only shape requests and responses.

- `POST /v1/chat/completions`: vLLM's route, with the audio heard added to the JSON body
  as `"audio": {"seconds", "windows"}` (every route carries it in `X-Audio-*` headers).
- `POST /v1/audio-text-to-text`: the Hugging Face task shape, run through the same chat
  serving path (same engine, batching and caches).
- `POST /v1/audio/transcriptions`, `/v1/audio/translations`: OpenAI's multipart routes.
  `json` and `text` transcribe the file in one answer; `verbose_json`, `srt` and `vtt`
  transcribe each long-audio window on its own (concurrently, one engine) and time the
  segments by the windows.
- `GET /playground`: a page that asks the task endpoint (`playground.html`, self-contained).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import soundfile
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, Field, ValidationError
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

from audiotext.client import InvalidRequestError
from audiotext.client.task import TaskRequest, completion_params
from audiotext.server import intake, transcripts
from audiotext.server.config import served_config
from audiotext.server.errors import AudioRequestError, error_body, error_headers, request_error
from audiotext.server.windows import WINDOW_S, timed_windows

router = APIRouter()

# Per window of at most 30 s: Whisper's own cap on tokens per window.
TRANSCRIPT_MAX_TOKENS = 448
TRANSCRIBE_PROMPT = "Transcribe the speech in this audio exactly, word for word."
TRANSLATE_PROMPT = "Translate the speech in this audio into English."
PLAYGROUND = Path(__file__).with_name("playground.html")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    HTTPStatus.BAD_REQUEST.value: {"model": ErrorResponse},
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value: {"model": ErrorResponse},
}


class AudioHeard(BaseModel):
    seconds: float = Field(description="seconds of audio the model heard")
    windows: int = Field(description="30 s windows it heard them in")


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
    """vLLM's chat completions, with the audio heard in the body."""
    result = await _chat(raw_request).create_chat_completion(request, raw_request)
    if isinstance(result, ErrorResponse):
        return JSONResponse(result.model_dump(), status_code=result.error.code)
    if isinstance(result, ChatCompletionResponse):
        return JSONResponse({**result.model_dump(), "audio": _heard().as_dict()})
    return StreamingResponse(_keep_alive(result, raw_request), media_type="text/event-stream")


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
    except AudioRequestError as e:
        return error_response(e.message, e.status, e.param)
    except (InvalidRequestError, ValidationError) as e:
        return error_response(str(e), 400, "parameters")
    result = await _chat(raw_request).create_chat_completion(chat_request, raw_request)
    if isinstance(result, ErrorResponse):
        return JSONResponse(result.model_dump(), status_code=result.error.code)
    if isinstance(result, ChatCompletionResponse):
        choice = result.choices[0]
        return JSONResponse(
            {
                "generated_text": choice.message.content or "",
                "finish_reason": choice.finish_reason,
                "usage": result.usage.model_dump() if result.usage else {},
                "audio": _heard().as_dict(),
            }
        )
    return StreamingResponse(task_events(result, _heard()), media_type="text/event-stream")


@router.post("/v1/audio/transcriptions", responses=ERROR_RESPONSES)
@with_cancellation
async def create_transcription(
    raw_request: Request,
    file: UploadFile = File(..., description="audio file"),  # noqa: B008 (FastAPI's idiom)
    model: str | None = Form(None),
    prompt: str | None = Form(None, description="context: earlier text, names, spelling"),
    language: str | None = Form(None, description="language of the speech, e.g. en"),
    response_format: str = Form(
        "json", description="json, text, verbose_json, srt or vtt (the last three timed)"
    ),
    temperature: float = Form(0.0),
) -> Response:
    """OpenAI's transcription route for Qwen2-Audio; long files are heard in windows."""
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
    language: str | None = Form(None, description="language spoken (not OpenAI's)"),
    response_format: str = Form(
        "json", description="json, text, verbose_json, srt or vtt (the last three timed)"
    ),
    temperature: float = Form(0.0),
) -> Response:
    """OpenAI's translation route (into English) for Qwen2-Audio."""
    return await _speech_to_text(
        raw_request, file, model, prompt, language, response_format, temperature, "translate"
    )


@router.get("/playground", include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page: upload or record audio, ask, watch the answer stream in."""
    return HTMLResponse(_playground_html())


@cache
def _playground_html() -> str:
    return PLAYGROUND.read_text(encoding="utf-8")


def task_to_chat(task: TaskRequest, default_model: str) -> ChatCompletionRequest:
    """The task request as a chat request: one user turn, audio first, then the text."""
    inputs = task.task_inputs()
    content: list[dict[str, Any]] = [_audio_part(s) for s in inputs.sources]
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


async def task_events(chunks: AsyncIterator[str], heard: intake.RequestAudio) -> AsyncIterator[str]:
    """vLLM's chat chunks -> task events: `{"delta"}` each, then the whole answer, `[DONE]`."""
    text: list[str] = []
    final: dict[str, Any] = {"finish_reason": None, "usage": {}, "audio": heard.as_dict()}
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
    return JSONResponse(
        error_body(message, status, param), status_code=status, headers=error_headers(status)
    )


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
    if response_format not in transcripts.FORMATS:
        return error_response(
            f"response_format {response_format!r} is not supported; use "
            f"{', '.join(transcripts.FORMATS)}",
            400,
            "response_format",
        )
    data = await file.read()
    if not data:
        return error_response("the audio file is empty", 400, "file")
    instruction = TRANSCRIBE_PROMPT if task == "transcribe" else TRANSLATE_PROMPT
    if language:
        instruction += f" The speech is in {language}."
    if prompt:
        instruction += f" Context: {prompt}"
    if response_format in transcripts.SEGMENTED:
        return await _timed_transcript(
            raw_request, data, model, instruction, temperature, response_format, task, language
        )
    # The file goes in as it came: the media connector decodes it once, the processor
    # cuts it into windows. Room for a transcript per window the header announces.
    seconds = intake.declared_seconds(data) or WINDOW_S
    max_tokens = TRANSCRIPT_MAX_TOKENS * max(1, math.ceil(seconds / WINDOW_S))
    request = _transcript_request(model or _served_model(raw_request), data, instruction,
                                  temperature, max_tokens)  # fmt: skip
    result = await _chat(raw_request).create_chat_completion(request, raw_request)
    if isinstance(result, ErrorResponse):
        param = "file" if result.error.code in (400, 413) else None
        return error_response(result.error.message, result.error.code, param)
    assert isinstance(result, ChatCompletionResponse)
    text = (result.choices[0].message.content or "").strip()
    if response_format == "text":
        return PlainTextResponse(text)
    heard = _heard()
    return JSONResponse(
        {
            "text": text,
            "usage": {"type": "duration", "seconds": round(heard.seconds, 3)},
            "audio": heard.as_dict(),
        }
    )


def _transcript_request(
    model: str, audio: bytes, instruction: str, temperature: float, max_tokens: int, **extra: Any
) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio_url", "audio_url": {"url": _data_url(audio)}},
                        {"type": "text", "text": instruction},
                    ],
                }
            ],
            "temperature": temperature,
            "max_tokens": max_tokens,
            **extra,
        }
    )


async def _timed_transcript(
    raw_request: Request,
    data: bytes,
    model: str | None,
    instruction: str,
    temperature: float,
    response_format: str,
    task: str,
    language: str | None,
) -> Response:
    """One answer per long-audio window, timed by the window: verbose_json, srt or vtt.

    The file is admitted and decoded once here (as the media connector would); each
    window then goes to the engine as float WAV, which keeps its samples exactly.
    """
    try:
        samples = await asyncio.to_thread(intake.take, data, served_config().max_audio_seconds)
    except AudioRequestError as e:
        return error_response(e.message, e.status, "file")
    model = model or _served_model(raw_request)
    windows = timed_windows(samples)

    async def one(window: Any) -> ChatCompletionResponse | ErrorResponse:
        # Already admitted and counted as the request's audio: the window's own intake
        # must not count it again.
        with intake.request_scope(intake.RequestAudio(max_seconds=WINDOW_S + 1)):
            request = _transcript_request(
                model, _float_wav(window), instruction, temperature, TRANSCRIPT_MAX_TOKENS,
                logprobs=True, return_token_ids=True,
            )  # fmt: skip
            result = await _chat(raw_request).create_chat_completion(request, raw_request)
        assert isinstance(result, ChatCompletionResponse | ErrorResponse)
        return result

    results = await asyncio.gather(*(one(w) for _, _, w in windows))
    segments = []
    for index, ((start, end, _), result) in enumerate(zip(windows, results, strict=True)):
        if isinstance(result, ErrorResponse):
            param = "file" if result.error.code in (400, 413) else None
            return error_response(result.error.message, result.error.code, param)
        choice = result.choices[0]
        logprobs = [t.logprob for t in (choice.logprobs.content or [])] if choice.logprobs else []
        segments.append(
            transcripts.segment(
                index,
                start,
                end,
                (choice.message.content or "").strip(),
                choice.token_ids or [],
                logprobs,
                temperature,
            )
        )
    if response_format == "srt":
        return PlainTextResponse(transcripts.srt(segments), media_type="application/x-subrip")
    if response_format == "vtt":
        return PlainTextResponse(transcripts.vtt(segments), media_type="text/vtt")
    heard = _heard()
    body = transcripts.verbose_json(task, language, heard.seconds, segments)
    body["usage"] = {"type": "duration", "seconds": round(heard.seconds, 3)}
    body["audio"] = heard.as_dict()
    return JSONResponse(body)


def _float_wav(samples: Any) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, intake.SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode("ascii")


def _audio_part(source: object) -> dict[str, Any]:
    if not isinstance(source, str):
        raise request_error(
            "audio must be an http(s) URL, a data: URL or base64 audio (a string)",
            param="audio",
            reason="bad_audio",
        )
    if source.startswith(("http://", "https://", "data:")):
        return {"type": "audio_url", "audio_url": {"url": source}}
    return {"type": "input_audio", "input_audio": {"data": source, "format": "wav"}}


def _heard() -> intake.RequestAudio:
    """What the current request's audio was (set by the guards; empty outside them)."""
    return intake.CURRENT.get() or intake.RequestAudio(max_seconds=0)


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
