"""audiotext's server (padding-free encoder, its own audio path) answers exactly as stock vLLM."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from tests.conftest import b64, load_clip, running_server, speech_of, wav_bytes


@pytest.fixture(scope="module")
def stock(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = ServerConfig(model="tiny", port=free_port(), dtype="float32", stock=True)
    with running_server(config, tmp_path_factory.mktemp("stock")) as server:
        yield server


def answer(base_url: str, *wavs: bytes) -> tuple[str | None, int]:
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    audios = [
        {"type": "input_audio", "input_audio": {"data": b64(w), "format": "wav"}} for w in wavs
    ]
    text = {"type": "text", "text": "What does the person say?"}
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [*audios, text]}],  # type: ignore[list-item]
        max_tokens=24,
        temperature=0,
    )
    return reply.choices[0].message.content, reply.usage.prompt_tokens


@pytest.mark.parametrize("seconds", [0.5, 1.0, 6.0, 17.0, 29.5])
def test_greedy_output_is_identical_to_stock_vllm(
    server: ServerProcess, stock: ServerProcess, seconds: float
) -> None:
    wav = wav_bytes(speech_of(seconds) if seconds != 6.0 else load_clip("6s"))
    assert answer(server.base_url, wav) == answer(stock.base_url, wav)


def test_two_clips_of_different_lengths_in_one_request_match_stock(
    server: ServerProcess, stock: ServerProcess
) -> None:
    wavs = (wav_bytes(speech_of(0.7)), wav_bytes(load_clip("6s")))
    assert answer(server.base_url, *wavs) == answer(stock.base_url, *wavs)


def test_concurrent_clips_of_different_lengths_match_stock(
    server: ServerProcess, stock: ServerProcess
) -> None:
    """Batched in one engine step, trimmed features of different lengths arrive as a list."""
    wavs = [wav_bytes(speech_of(s)) for s in (0.5, 2.0, 3.3, 9.0, 14.5, 29.0)]
    with ThreadPoolExecutor(len(wavs)) as pool:
        ours = list(pool.map(lambda w: answer(server.base_url, w), wavs))
    assert ours == [answer(stock.base_url, w) for w in wavs]
