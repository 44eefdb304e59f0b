"""`AudioTextClient` and `AsyncAudioTextClient`: twins over `openai.OpenAI` / `AsyncOpenAI`.

Everything without I/O lives in `_BaseClient` and `_core`; the twins differ only in
`def` / `async def`. Retries, timeouts and server-sent events come from the OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeAlias, cast

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam
from tqdm import tqdm

from audiotext.client._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_API_KEY,
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_FETCH_BYTES,
    MODEL_ENV,
)
from audiotext.client._core import (
    Generation,
    completion_params,
    prepare_messages,
    split_task,
    stream_text,
    task_messages,
    to_generation,
)
from audiotext.client._exceptions import AudioTextError, InvalidAudioError, from_openai
from audiotext.client.audio import AudioSource, PreparedAudio, is_remote_url, prepare_audio

BatchResult: TypeAlias = dict[str, Any] | AudioTextError
_Call: TypeAlias = tuple[list[ChatCompletionMessageParam], float | None, dict[str, Any]]


class _NoClientErrorRetries:
    """Retry what may pass on a second try (connection errors, 5xx, 429), never a 4xx mistake."""

    def _should_retry(self, response: Any) -> bool:
        if 400 <= response.status_code < 500 and response.status_code != 429:
            return False
        return super()._should_retry(response)  # type: ignore[misc, no-any-return]


class _OpenAI(_NoClientErrorRetries, openai.OpenAI):
    pass


class _AsyncOpenAI(_NoClientErrorRetries, openai.AsyncOpenAI):
    pass


class _BaseClient:
    """Configuration and request building shared by the twins (no network calls here,
    except fetching remote audio when `fetch_urls` is on).

    Args:
        base_url: the server's OpenAI base URL; default `$AUDIOTEXT_BASE_URL` or
            http://localhost:8000/v1.
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
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
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

    def _task_call(self, request: Mapping[str, Any], params: Mapping[str, Any]) -> _Call:
        inputs, request_params = split_task(request)
        messages = task_messages(inputs, self.system_prompt)
        return self._chat_call(messages, {**request_params, **params})

    def _chat_call(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> _Call:
        prepared, seconds = prepare_messages(messages, self._prepare_audio)
        # The core builds plain dicts in the shape of OpenAI's message TypedDicts.
        return cast(list[ChatCompletionMessageParam], prepared), seconds, completion_params(params)


class AudioTextClient(_BaseClient):
    """Synchronous client; see `_BaseClient` for the arguments."""

    openai: _OpenAI

    def _new_openai(self) -> _OpenAI:
        return _OpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def generate(self, request: Mapping[str, Any], **params: Any) -> dict[str, Any]:
        """`{"audio": ..., "text": ...}` -> `{"generated_text": ...}`."""
        return self.generate_result(request, **params).to_dict()

    def generate_result(self, request: Mapping[str, Any], **params: Any) -> Generation:
        """Like `generate`, with usage, finish reason and audio duration."""
        return self._complete(self._task_call(request, params))

    def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Generation:
        """A multi-turn conversation; audio parts are `{"type": "audio", "audio": source}`."""
        return self._complete(self._chat_call(messages, params))

    def stream(self, request: Mapping[str, Any], **params: Any) -> Iterator[str]:
        """Yield the answer's text as it is generated."""
        messages, _, kwargs = self._task_call(request, params)
        try:
            chunks = self.openai.chat.completions.create(
                model=self._model(),
                messages=messages,
                stream=True,
                **kwargs,
            )
            for chunk in cast(openai.Stream[Any], chunks):
                yield stream_text(chunk)
        except openai.OpenAIError as e:
            raise from_openai(e) from e

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
                raise from_openai(e) from e
        return self.model

    def _complete(self, call: _Call) -> Generation:
        messages, seconds, kwargs = call
        try:
            completion = self.openai.chat.completions.create(
                model=self._model(),
                messages=messages,
                **kwargs,
            )
        except openai.OpenAIError as e:
            raise from_openai(e) from e
        return to_generation(completion, seconds)


class AsyncAudioTextClient(_BaseClient):
    """Asynchronous twin of `AudioTextClient`; audio is prepared in a worker thread."""

    openai: _AsyncOpenAI

    def _new_openai(self) -> _AsyncOpenAI:
        return _AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    async def generate(self, request: Mapping[str, Any], **params: Any) -> dict[str, Any]:
        """`{"audio": ..., "text": ...}` -> `{"generated_text": ...}`."""
        return (await self.generate_result(request, **params)).to_dict()

    async def generate_result(self, request: Mapping[str, Any], **params: Any) -> Generation:
        """Like `generate`, with usage, finish reason and audio duration."""
        return await self._complete(await asyncio.to_thread(self._task_call, request, params))

    async def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Generation:
        """A multi-turn conversation; audio parts are `{"type": "audio", "audio": source}`."""
        return await self._complete(await asyncio.to_thread(self._chat_call, messages, params))

    async def stream(self, request: Mapping[str, Any], **params: Any) -> AsyncIterator[str]:
        """Yield the answer's text as it is generated."""
        messages, _, kwargs = await asyncio.to_thread(self._task_call, request, params)
        try:
            chunks = await self.openai.chat.completions.create(
                model=await self._model(),
                messages=messages,
                stream=True,
                **kwargs,
            )
            async for chunk in cast(openai.AsyncStream[Any], chunks):
                yield stream_text(chunk)
        except openai.OpenAIError as e:
            raise from_openai(e) from e

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
                raise from_openai(e) from e
        return self.model

    async def _complete(self, call: _Call) -> Generation:
        messages, seconds, kwargs = call
        try:
            completion = await self.openai.chat.completions.create(
                model=await self._model(),
                messages=messages,
                **kwargs,
            )
        except openai.OpenAIError as e:
            raise from_openai(e) from e
        return to_generation(completion, seconds)


def _progress(total: int, enabled: bool) -> tqdm[Any]:
    return tqdm(total=total, disable=not enabled, unit="req", file=sys.stderr, dynamic_ncols=True)


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
