"""`AudioTextClient` and `AsyncAudioTextClient`: twins over `openai.OpenAI` / `AsyncOpenAI`.

Everything without I/O lives in `_BaseClient` and `_core`; the twins differ only in
`def` / `async def`. Retries, timeouts and server-sent events come from the OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, TypeAlias, cast

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam
from tqdm import tqdm

from audiotext.client._constants import (
    API_KEY_ENV,
    CONNECT_TIMEOUT_S,
    DEFAULT_API_KEY,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_FETCH_BYTES,
    MODEL_ENV,
    RESPONSE_FORMATS,
    ResponseFormat,
)
from audiotext.client._core import (
    Generation,
    Transcription,
    completion_params,
    default_base_url,
    merge_params,
    prepare_messages,
    split_task,
    stream_text,
    task_messages,
    to_generation,
    with_typed_names,
)
from audiotext.client._exceptions import (
    AudioTextError,
    InvalidAudioError,
    InvalidRequestError,
    from_openai,
    is_unreachable,
)
from audiotext.client._realtime import AsyncRealtimeSession, RealtimeSession, session_update
from audiotext.client.audio import (
    AudioSource,
    PreparedAudio,
    encode_wav,
    is_remote_url,
    load_audio,
    prepare_audio,
    read_bytes,
    sniff_mime,
)

BatchResult: TypeAlias = dict[str, Any] | AudioTextError
# Messages, seconds of audio the client sent (if known), create() keywords, and the
# parameter names the caller typed where the server knows them by others.
_Call: TypeAlias = tuple[
    list[ChatCompletionMessageParam], float | None, dict[str, Any], dict[str, str]
]
# A transcription request: the audio file, its form fields.
_Upload: TypeAlias = tuple[tuple[str, bytes, str], dict[str, Any]]


class _RetryPolicy:
    """Retry what may pass on a second try (connection errors, 5xx, 429), never a 4xx
    mistake, and not an address where nothing listens: that answer is immediate and final."""

    def _should_retry(self, response: Any) -> bool:
        if 400 <= response.status_code < 500 and response.status_code != 429:
            return False
        return super()._should_retry(response)  # type: ignore[misc, no-any-return]


class _OpenAI(_RetryPolicy, openai.OpenAI):
    def _send_request(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._send_request(request, *args, **kwargs)
        except Exception as e:
            # The SDK retries transport errors but passes its own errors through.
            if is_unreachable(e):
                raise openai.APIConnectionError(request=request) from e
            raise


class _AsyncOpenAI(_RetryPolicy, openai.AsyncOpenAI):
    async def _send_request(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._send_request(request, *args, **kwargs)
        except Exception as e:
            if is_unreachable(e):
                raise openai.APIConnectionError(request=request) from e
            raise


class _BaseClient:
    """Configuration and request building shared by the twins (no network calls here,
    except fetching remote audio when `fetch_urls` is on).

    Args:
        base_url: the server's OpenAI base URL; default `$AUDIOTEXT_BASE_URL`, else
            `$AUDIOTEXT_HOST` and `$AUDIOTEXT_PORT` (as `audiotext serve` reads them),
            else http://localhost:8000/v1.
        api_key: bearer token; default `$AUDIOTEXT_API_KEY` or "EMPTY".
        model: served model name; default `$AUDIOTEXT_MODEL`, else the server's first model.
        timeout: seconds per request.
        max_retries: retries for connection errors, 429 and 5xx (never other 4xx).
        normalize: decode, down-mix and resample local audio to 16 kHz mono WAV here.
        fetch_urls: download http(s) audio here and normalise it, instead of sending the URL.
        system_prompt: system message put before every task request.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        normalize: bool = True,
        fetch_urls: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        self.base_url = base_url or default_base_url(os.environ)
        self.api_key = api_key or os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY
        self.model = model or os.environ.get(MODEL_ENV) or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.normalize = normalize
        self.fetch_urls = fetch_urls
        self.system_prompt = system_prompt
        self.openai = self._new_openai()

    def _new_openai(self) -> Any:
        raise NotImplementedError

    def _prepare_audio(self, source: AudioSource) -> PreparedAudio:
        if self.fetch_urls and is_remote_url(source):
            source = _fetch(str(source), self.timeout)
        return prepare_audio(source, normalize=self.normalize)

    def _timeout(self) -> openai.Timeout:
        return openai.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT_S))

    def _error(
        self, error: openai.OpenAIError, typed: Mapping[str, str] | None = None
    ) -> AudioTextError:
        return with_typed_names(from_openai(error, self.base_url), typed or {})

    def _task_call(self, request: Mapping[str, Any], params: Mapping[str, Any]) -> _Call:
        inputs, request_params = split_task(request)
        messages = task_messages(inputs, self.system_prompt)
        merged, typed = merge_params(request_params, params)
        messages_, seconds, kwargs, _ = self._chat_call(messages, merged)
        return messages_, seconds, kwargs, typed

    def _chat_call(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> _Call:
        prepared, seconds = prepare_messages(messages, self._prepare_audio)
        _, typed = merge_params({}, params)
        # The core builds plain dicts in the shape of OpenAI's message TypedDicts.
        messages_ = cast(list[ChatCompletionMessageParam], prepared)
        return messages_, seconds, completion_params(params), typed

    def _upload(
        self,
        audio: AudioSource,
        language: str | None,
        prompt: str | None,
        response_format: ResponseFormat,
        temperature: float,
    ) -> _Upload:
        """The multipart upload of a transcription or translation (audio prepared here)."""
        if response_format not in RESPONSE_FORMATS:
            raise InvalidRequestError(
                f"response_format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}"
            )
        if is_remote_url(audio):
            audio = _fetch(str(audio), self.timeout)
        if self.normalize:
            file = ("audio.wav", encode_wav(load_audio(audio)), "audio/wav")
        else:
            data = read_bytes(audio)
            file = (_file_name(audio), data, sniff_mime(data, audio))
        fields: dict[str, Any] = {"response_format": response_format, "temperature": temperature}
        if language:
            fields["language"] = language
        if prompt:
            fields["prompt"] = prompt
        return file, fields


class AudioTextClient(_BaseClient):
    """Synchronous client; see `_BaseClient` for the arguments."""

    openai: _OpenAI

    def _new_openai(self) -> _OpenAI:
        return _OpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self._timeout(),
            max_retries=self.max_retries,
        )

    def generate(self, request: Mapping[str, Any], **params: Any) -> dict[str, Any]:
        """`{"audio": ..., "text": ...}` -> `{"generated_text": ...}`.

        `params` (max_new_tokens, temperature, ...) apply where the request's own
        `parameters` do not say otherwise.
        """
        return self.generate_result(request, **params).to_dict()

    def generate_result(self, request: Mapping[str, Any], **params: Any) -> Generation:
        """Like `generate`, with usage, finish reason and audio duration."""
        return self._complete(self._task_call(request, params))

    def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Generation:
        """A multi-turn conversation; audio parts are `{"type": "audio", "audio": source}`."""
        return self._complete(self._chat_call(messages, params))

    def stream(self, request: Mapping[str, Any], **params: Any) -> Iterator[str]:
        """Yield the answer's text as it is generated (never an empty piece)."""
        messages, _, kwargs, typed = self._task_call(request, params)
        try:
            chunks = self.openai.chat.completions.create(
                model=self._model(),
                messages=messages,
                stream=True,
                **kwargs,
            )
            for chunk in cast(openai.Stream[Any], chunks):
                if text := stream_text(chunk):
                    yield text
        except openai.OpenAIError as e:
            raise self._error(e, typed) from e

    def generate_batch(
        self,
        requests: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: bool = True,
        **params: Any,
    ) -> list[BatchResult]:
        """Many requests, `concurrency` at a time, in order; a failure is returned in its slot."""
        items = list(requests)

        def one(request: Mapping[str, Any]) -> BatchResult:
            try:
                return self.generate(request, **params)
            except AudioTextError as e:
                return e

        with (
            ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool,
            _progress(len(items), progress) as bar,
        ):
            futures = [pool.submit(one, r) for r in items]
            for future in futures:
                future.add_done_callback(lambda _: bar.update(1))
            return [f.result() for f in futures]

    def transcribe(
        self,
        audio: AudioSource,
        *,
        language: str | None = None,
        prompt: str | None = None,
        response_format: ResponseFormat = "json",
        temperature: float = 0.0,
    ) -> Transcription | str:
        """The speech in `audio`, word for word (`/v1/audio/transcriptions`).

        Args:
            audio: any audio source `generate` takes (http(s) URLs are downloaded here).
            language: the language of the speech, e.g. "en" (a hint for the model).
            prompt: context: earlier text, names, spelling.
            response_format: `json` or `verbose_json` (with timed `segments`) give a
                `Transcription`; `text`, `srt` and `vtt` give the server's text.
            temperature: 0 for greedy decoding.
        """
        upload = self._upload(audio, language, prompt, response_format, temperature)
        return self._speech("transcriptions", upload)

    def translate(
        self,
        audio: AudioSource,
        *,
        language: str | None = None,
        prompt: str | None = None,
        response_format: ResponseFormat = "json",
        temperature: float = 0.0,
    ) -> Transcription | str:
        """The speech in `audio`, translated into English (`/v1/audio/translations`).

        Arguments as for `transcribe`; `language` is the language spoken.
        """
        upload = self._upload(audio, language, prompt, response_format, temperature)
        return self._speech("translations", upload)

    @contextmanager
    def realtime(
        self,
        *,
        instructions: str | None = None,
        turn_detection: bool = True,
        silence_duration_ms: int = 500,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Iterator[RealtimeSession]:
        """A realtime session (`/v1/realtime`) over the OpenAI SDK's realtime client.

        Args:
            instructions: the system turn of the conversation.
            turn_detection: the server's VAD cuts turns and answers each (else `commit()`
                and `respond()`).
            silence_duration_ms: silence that ends a turn.
            max_output_tokens: per answer (None: what the context leaves).
            temperature: sampling temperature (None: the model's default).
        """
        update = session_update(
            instructions=instructions, turn_detection=turn_detection,
            silence_duration_ms=silence_duration_ms, max_output_tokens=max_output_tokens,
            temperature=temperature,
        )  # fmt: skip
        with self.openai.realtime.connect(model=self._model()) as connection:
            connection.send(cast(Any, update))
            for event in connection:
                _check_opening(event)
                if event.type == "session.updated":
                    break
            yield RealtimeSession(connection, silence_duration_ms if turn_detection else None)

    def close(self) -> None:
        self.openai.close()

    def __enter__(self) -> AudioTextClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _model(self) -> str:
        if self.model is None:
            try:
                self.model = self.openai.models.list().data[0].id
            except openai.OpenAIError as e:
                raise self._error(e) from e
        return self.model

    def _complete(self, call: _Call) -> Generation:
        messages, seconds, kwargs, typed = call
        try:
            raw = self.openai.chat.completions.with_raw_response.create(
                model=self._model(),
                messages=messages,
                **kwargs,
            )
            completion = raw.parse()
        except openai.OpenAIError as e:
            raise self._error(e, typed) from e
        return to_generation(completion, seconds, raw.headers.get("x-audio-seconds"))

    def _speech(self, route: str, upload: _Upload) -> Transcription | str:
        file, fields = upload
        resource = getattr(self.openai.audio, route)
        fields = _form_fields(route, fields)
        try:
            raw = resource.with_raw_response.create(model=self._model(), file=file, **fields)
        except openai.OpenAIError as e:
            raise self._error(e) from e
        return _speech_result(fields["response_format"], raw.http_response.text)


class AsyncAudioTextClient(_BaseClient):
    """Asynchronous twin of `AudioTextClient`; audio is prepared in a worker thread."""

    openai: _AsyncOpenAI

    def _new_openai(self) -> _AsyncOpenAI:
        return _AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self._timeout(),
            max_retries=self.max_retries,
        )

    async def generate(self, request: Mapping[str, Any], **params: Any) -> dict[str, Any]:
        """`{"audio": ..., "text": ...}` -> `{"generated_text": ...}`.

        `params` (max_new_tokens, temperature, ...) apply where the request's own
        `parameters` do not say otherwise.
        """
        return (await self.generate_result(request, **params)).to_dict()

    async def generate_result(self, request: Mapping[str, Any], **params: Any) -> Generation:
        """Like `generate`, with usage, finish reason and audio duration."""
        return await self._complete(await asyncio.to_thread(self._task_call, request, params))

    async def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Generation:
        """A multi-turn conversation; audio parts are `{"type": "audio", "audio": source}`."""
        return await self._complete(await asyncio.to_thread(self._chat_call, messages, params))

    async def stream(self, request: Mapping[str, Any], **params: Any) -> AsyncIterator[str]:
        """Yield the answer's text as it is generated (never an empty piece)."""
        messages, _, kwargs, typed = await asyncio.to_thread(self._task_call, request, params)
        try:
            chunks = await self.openai.chat.completions.create(
                model=await self._model(),
                messages=messages,
                stream=True,
                **kwargs,
            )
            async for chunk in cast(openai.AsyncStream[Any], chunks):
                if text := stream_text(chunk):
                    yield text
        except openai.OpenAIError as e:
            raise self._error(e, typed) from e

    async def generate_batch(
        self,
        requests: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: bool = True,
        **params: Any,
    ) -> list[BatchResult]:
        """Many requests, `concurrency` at a time, in order; a failure is returned in its slot."""
        items = list(requests)
        gate = asyncio.Semaphore(max(1, concurrency))
        with _progress(len(items), progress) as bar:

            async def one(request: Mapping[str, Any]) -> BatchResult:
                async with gate:
                    try:
                        return await self.generate(request, **params)
                    except AudioTextError as e:
                        return e
                    finally:
                        bar.update(1)

            return list(await asyncio.gather(*(one(r) for r in items)))

    async def transcribe(
        self,
        audio: AudioSource,
        *,
        language: str | None = None,
        prompt: str | None = None,
        response_format: ResponseFormat = "json",
        temperature: float = 0.0,
    ) -> Transcription | str:
        """The speech in `audio`, word for word (`/v1/audio/transcriptions`).

        Arguments as for `AudioTextClient.transcribe`.
        """
        upload = await asyncio.to_thread(
            self._upload, audio, language, prompt, response_format, temperature
        )
        return await self._speech("transcriptions", upload)

    async def translate(
        self,
        audio: AudioSource,
        *,
        language: str | None = None,
        prompt: str | None = None,
        response_format: ResponseFormat = "json",
        temperature: float = 0.0,
    ) -> Transcription | str:
        """The speech in `audio`, translated into English (`/v1/audio/translations`).

        Arguments as for `AudioTextClient.transcribe`.
        """
        upload = await asyncio.to_thread(
            self._upload, audio, language, prompt, response_format, temperature
        )
        return await self._speech("translations", upload)

    @asynccontextmanager
    async def realtime(
        self,
        *,
        instructions: str | None = None,
        turn_detection: bool = True,
        silence_duration_ms: int = 500,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[AsyncRealtimeSession]:
        """A realtime session (`/v1/realtime`); arguments as for `AudioTextClient.realtime`."""
        update = session_update(
            instructions=instructions, turn_detection=turn_detection,
            silence_duration_ms=silence_duration_ms, max_output_tokens=max_output_tokens,
            temperature=temperature,
        )  # fmt: skip
        async with self.openai.realtime.connect(model=await self._model()) as connection:
            await connection.send(cast(Any, update))
            async for event in connection:
                _check_opening(event)
                if event.type == "session.updated":
                    break
            yield AsyncRealtimeSession(connection, silence_duration_ms if turn_detection else None)

    async def close(self) -> None:
        await self.openai.close()

    async def __aenter__(self) -> AsyncAudioTextClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _model(self) -> str:
        if self.model is None:
            try:
                self.model = (await self.openai.models.list()).data[0].id
            except openai.OpenAIError as e:
                raise self._error(e) from e
        return self.model

    async def _complete(self, call: _Call) -> Generation:
        messages, seconds, kwargs, typed = call
        try:
            raw = await self.openai.chat.completions.with_raw_response.create(
                model=await self._model(),
                messages=messages,
                **kwargs,
            )
            completion = raw.parse()  # with_raw_response: the body is already read
        except openai.OpenAIError as e:
            raise self._error(e, typed) from e
        return to_generation(completion, seconds, raw.headers.get("x-audio-seconds"))

    async def _speech(self, route: str, upload: _Upload) -> Transcription | str:
        file, fields = upload
        resource = getattr(self.openai.audio, route)
        fields = _form_fields(route, fields)
        try:
            raw = await resource.with_raw_response.create(
                model=await self._model(), file=file, **fields
            )
        except openai.OpenAIError as e:
            raise self._error(e) from e
        return _speech_result(fields["response_format"], raw.http_response.text)


def _check_opening(event: Any) -> None:
    """Refuse a session the server refused while opening it (a bad setting, the limits)."""
    if event.type == "error":
        raise InvalidRequestError(f"the realtime session was refused: {event.error.message}")


def _form_fields(route: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI SDK's translation call has no `language`; audiotext's route takes it."""
    if route == "translations" and "language" in fields:
        fields = dict(fields)
        fields["extra_body"] = {"language": fields.pop("language")}
    return fields


def _speech_result(response_format: str, body: str) -> Transcription | str:
    if response_format in ("json", "verbose_json"):
        return Transcription.from_json(json.loads(body))
    return body


def _file_name(source: AudioSource) -> str:
    name = getattr(source, "name", source)
    if isinstance(name, str | os.PathLike) and not str(name).startswith("data:"):
        return os.path.basename(os.fspath(name)) or "audio"
    return "audio"


def _progress(total: int, enabled: bool, initial: int = 0) -> tqdm[Any]:
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        unit="req",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _fetch(url: str, timeout: float) -> bytes:
    """Download remote audio for client-side normalisation, capped at MAX_FETCH_BYTES."""
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            response.raise_for_status()
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_FETCH_BYTES:
                    raise InvalidAudioError(
                        f"audio at {url} is larger than {MAX_FETCH_BYTES} bytes"
                    )
                chunks.append(chunk)
    except httpx.HTTPError as e:
        raise InvalidAudioError(f"could not fetch audio from {url}: {e}") from e
    return b"".join(chunks)
