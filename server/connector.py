"""audiotext's media connector for vLLM: the one door audio comes in through.

vLLM builds a media connector from `MEDIA_CONNECTOR_REGISTRY`, by the name in
`VLLM_MEDIA_CONNECTOR` (the launcher sets it), for every route that resolves media
(`audio_url` and `input_audio` parts alike: vLLM turns `input_audio` into a `data:` URL)
and for offline `LLM.chat`. This one reads audio bytes under the media policy (SSRF-guarded
http(s), `file://` below `--media-folder` only, `data:` URLs) and hands them to
`intake.take`: admission, one decode, 16 kHz mono. vLLM's resampler then has nothing left
to do, and the processor gets exactly the samples the guards checked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector

from audiotext.server import intake
from audiotext.server.config import served_config
from audiotext.server.errors import request_error
from audiotext.server.media import MediaFetcher, MediaPolicy, read_local

NAME = "audiotext"
# Audio media types a data URL (or `input_audio.format`) may name; the audio itself is
# decoded by its content. Other media types (application/octet-stream, none) pass.
AUDIO_SUBTYPES = frozenset(
    {"wav", "x-wav", "wave", "vnd.wave", "mp3", "mpeg", "mpga", "flac", "x-flac", "ogg",
     "opus", "m4a", "x-m4a", "mp4", "webm", "aac", "basic", "l16", "pcm"}
)  # fmt: skip


@MEDIA_CONNECTOR_REGISTRY.register(NAME)
class AudioTextMediaConnector(MediaConnector):
    """vLLM's media connector with audiotext's fetch policy, and its intake for audio."""

    def __init__(
        self,
        media_io_kwargs: dict[str, dict[str, Any]] | None = None,
        *args: Any,
        allowed_local_media_path: str = "",
        allowed_media_domains: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            media_io_kwargs,
            *args,
            allowed_local_media_path=allowed_local_media_path,
            allowed_media_domains=allowed_media_domains,
            **kwargs,
        )
        self.policy = media_policy(allowed_local_media_path, tuple(allowed_media_domains or ()))

    async def fetch_audio_async(self, audio_url: str) -> tuple[np.ndarray, int]:
        data = await self._read_async(audio_url)
        samples = await asyncio.to_thread(intake.take, data, served_config().max_audio_seconds)
        return samples, intake.SAMPLE_RATE

    def fetch_audio(self, audio_url: str) -> tuple[np.ndarray, int]:
        data = self._read(audio_url)
        return intake.take(data, served_config().max_audio_seconds), intake.SAMPLE_RATE

    # Images and video (Qwen2-Audio takes none) are fetched under the same policy.
    def load_from_url(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        if url[:5].lower() == "data:":
            return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)
        return media_io.load_bytes(self._read(url))

    async def load_from_url_async(
        self, url: str, media_io: Any, *, fetch_timeout: int | None = None
    ) -> Any:
        if url[:5].lower() == "data:":
            return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
        data = await self._read_async(url)
        return await asyncio.to_thread(media_io.load_bytes, data)

    def _read(self, url: str) -> bytes:
        if url.startswith(("http://", "https://")):
            return asyncio.run(_fetch_once(self.policy, url))
        return self._read_local_or_inline(url)

    async def _read_async(self, url: str) -> bytes:
        if url.startswith(("http://", "https://")):
            return await shared_fetcher(self.policy).fetch(url)
        return await asyncio.to_thread(self._read_local_or_inline, url)

    def _read_local_or_inline(self, url: str) -> bytes:
        if url[:5].lower() == "data:":
            return data_url_bytes(url)
        if url[:5].lower() == "file:":
            return read_local(self.policy, url)
        scheme = url.partition(":")[0] if ":" in url else "none"
        raise request_error(
            f"audio URLs must be http(s), data: or file:, not {scheme}",
            param="audio_url",
            reason="ssrf",
        )


@cache
def media_policy(local_folder: str, domains: tuple[str, ...]) -> MediaPolicy:
    """The policy for vLLM's allowed folder and domains and audiotext's fetch limits."""
    config = served_config()
    return MediaPolicy(
        max_bytes=int(config.max_fetch_mb * 2**20),
        timeout_s=config.fetch_timeout_s,
        allowed_domains=frozenset(d.strip().lower() for d in domains if d.strip()),
        local_folder=Path(local_folder) if local_folder else None,
    )


@cache
def shared_fetcher(policy: MediaPolicy) -> MediaFetcher:
    """One fetcher (one connection pool) per policy for the API server's event loop."""
    return MediaFetcher(policy)


async def _fetch_once(policy: MediaPolicy, url: str) -> bytes:
    fetcher = MediaFetcher(policy)
    try:
        return await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


def data_url_bytes(url: str) -> bytes:
    """The bytes of a base64 `data:` URL whose media type, if audio, is a known format."""
    header, sep, payload = url[5:].partition(",")
    media_type, _, encoding = header.rpartition(";")
    if not sep or encoding != "base64":
        raise request_error("audio data URLs must be base64", param="audio_url", reason="bad_audio")
    media_type = media_type.partition(";")[0].strip().lower()
    if media_type.startswith("audio/") and media_type[6:] not in AUDIO_SUBTYPES:
        raise request_error(
            f"audio format {media_type[6:]!r} is not supported; send one of wav, mp3, flac, "
            "ogg, opus, m4a, mp4, webm, aac",
            param="input_audio.format",
            reason="bad_audio",
        )
    if not payload:
        raise request_error("the audio data is empty", param="input_audio.data", reason="bad_audio")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise request_error(
            f"the audio data is not valid base64: {e}", param="input_audio.data", reason="bad_audio"
        ) from e
