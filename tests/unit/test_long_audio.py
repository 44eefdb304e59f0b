"""Long audio is split into windows of at most 30 s, never silently cut."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from typing import Any

import numpy as np
import pytest
import soundfile

from audiotext.client import audio_token_count
from audiotext.server.long_audio import (
    AudioLimits,
    AudioRequestError,
    expand_messages,
    split_windows,
)
from tests.conftest import SAMPLE_RATE, b64, speech_of, wav_bytes

LIMITS = AudioLimits(max_seconds=240, max_items=8, max_model_len=8192)


@pytest.mark.parametrize("seconds", [30.5, 45, 60, 60.01, 95, 239])
def test_windows_cover_everything_and_fit_the_encoder(seconds: float) -> None:
    audio = speech_of(seconds)
    windows = split_windows(audio)
    # Cuts fall in the last second before each 30 s boundary.
    assert np.ceil(seconds / 30) <= len(windows) <= np.ceil(seconds / 29)
    assert all(len(w) <= 30 * SAMPLE_RATE for w in windows)
    assert all(audio_token_count(len(w)) >= 1 for w in windows)
    joined = np.concatenate(windows)
    assert np.array_equal(joined[: len(audio)], audio)  # in order, nothing dropped
    assert not joined[len(audio) :].any()  # at most a little silence padding at the end


def user_turn(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "What?"}]}]


def input_audio(samples: np.ndarray) -> dict[str, Any]:
    return {
        "type": "input_audio",
        "input_audio": {"data": b64(wav_bytes(samples)), "format": "wav"},
    }


def expand(
    messages: list[dict[str, Any]], limits: AudioLimits = LIMITS, fetched: bytes = b""
) -> Any:
    async def fetch(url: str) -> bytes:
        return fetched

    async def inline(fn: Any, *args: Any) -> Any:
        return fn(*args)

    return asyncio.run(expand_messages(messages, fetch, limits, inline))


def sent_samples(part: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(part["input_audio"]["data"])
    return soundfile.read(io.BytesIO(data), dtype="float32")[0]


def test_short_audio_reaches_vllm_as_the_same_16khz_signal() -> None:
    audio = speech_of(10)
    out, usage = expand(user_turn(input_audio(audio)))
    [part, text] = out[0]["content"]
    assert text == {"type": "text", "text": "What?"}
    assert np.array_equal(sent_samples(part), audio)  # float WAV: exact
    assert (usage.seconds, usage.windows) == (10.0, 1)


def test_long_audio_becomes_consecutive_windows_of_the_same_turn() -> None:
    audio = speech_of(95)
    out, usage = expand(user_turn(input_audio(audio)))
    parts = out[0]["content"]
    assert [p["type"] for p in parts] == ["input_audio"] * 4 + ["text"]
    heard = np.concatenate([sent_samples(p) for p in parts[:4]])
    assert np.allclose(heard[: len(audio)], audio, atol=1 / 32768)  # 16-bit source, float windows
    assert (round(usage.seconds, 3), usage.windows) == (95.0, 4)


def test_remote_audio_is_fetched_once_and_inlined() -> None:
    audio = speech_of(5)
    part = {"type": "audio_url", "audio_url": {"url": "https://a.test/x.wav"}}
    out, usage = expand(user_turn(part), fetched=wav_bytes(audio))
    assert np.array_equal(sent_samples(out[0]["content"][0]), audio)
    assert usage.windows == 1


@pytest.mark.parametrize("token", ["<|AUDIO|>", "<|im_start|>", "<|endoftext|>", "<|audio_bos|>"])
def test_control_tokens_in_text_are_refused(token: str) -> None:
    with pytest.raises(AudioRequestError, match="reserved token"):
        expand([{"role": "user", "content": [{"type": "text", "text": f"hi {token} there"}]}])
    with pytest.raises(AudioRequestError, match="reserved token"):
        expand(
            [{"role": "system", "content": f"be {token}"}, *user_turn(input_audio(speech_of(1)))]
        )


def test_a_bomb_is_refused_before_it_is_decoded() -> None:
    # Ten hours of silence is a small FLAC file and 2.3 GB of float samples.
    with soundfile.SoundFile(
        buf := io.BytesIO(), "w", samplerate=16000, channels=1, format="FLAC"
    ) as f:
        block = np.zeros(16000 * 60, dtype=np.float32)
        for _ in range(600):
            f.write(block)
    assert len(buf.getvalue()) < 20 * 2**20
    with pytest.raises(AudioRequestError, match="--max-audio-seconds") as caught:
        bomb = {
            "type": "input_audio",
            "input_audio": {"data": b64(buf.getvalue()), "format": "flac"},
        }
        expand(user_turn(bomb))
    assert caught.value.status == 413


@pytest.mark.parametrize(
    ("limits", "seconds", "status", "message"),
    [
        (AudioLimits(60, 8, 8192), 95, 413, "at most 60 s per request (--max-audio-seconds)"),
        (AudioLimits(240, 3, 8192), 95, 400, "at most 3 per request (--max-audios-per-prompt)"),
        (AudioLimits(240, 8, 2048), 95, 400, "context is 2048 tokens (--max-model-len)"),
    ],
)
def test_limits_are_refused_with_the_limit_named(
    limits: AudioLimits, seconds: float, status: int, message: str
) -> None:
    with pytest.raises(AudioRequestError, match=re.escape(message)) as caught:
        expand(user_turn(input_audio(speech_of(seconds))), limits)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": "@@not base64@@", "format": "wav"}},
            "not valid base64",
        ),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "empty"),
        ({"type": "audio_url", "audio_url": {"url": "data:audio/wav,plain"}}, "must be base64"),
        (
            {
                "type": "input_audio",
                "input_audio": {"data": b64(b"not audio" * 50), "format": "wav"},
            },
            "decode",
        ),
    ],
)
def test_bad_audio_is_a_400(part: dict[str, Any], message: str) -> None:
    with pytest.raises(AudioRequestError, match=message) as caught:
        expand(user_turn(part))
    assert caught.value.status == 400
