"""In bfloat16 (vLLM's `auto` for float32 checkpoints, the real model's dtype), audiotext's
audio path answers as stock vLLM does, token for token, on held-out speech of the listening
checkpoint.

bfloat16 rounds differently when the encoder runs over a clip's valid frames instead of a
30 s padded block, so two logits that are tied within bfloat16's precision may swap. Where
the answers part, the test requires that they part at a tie: at the first differing token,
stock's own log-probabilities of the two candidates are within `TIE_NATS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from audiotext.server.listening import cases
from audiotext.server.listening.speech import SAMPLE_RATE, render
from tests.conftest import b64, running_server, wav_bytes

MODEL = "listening"
# Two candidates closer than this in log-probability are a bfloat16 tie: bfloat16 keeps 8
# significant bits, so logits of magnitude ~10 are rounded by up to ~0.04.
TIE_NATS = 0.1
MAX_TOKENS = 24


def serve(stock: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    checkpoint.ensure_built(MODEL)
    config = ServerConfig(model=MODEL, port=free_port(), stock=stock, dtype="bfloat16")
    with running_server(config, tmp_path_factory.mktemp("stock" if stock else "ours")) as proc:
        yield proc


@pytest.fixture(scope="module")
def ours_bf16(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve(False, tmp_path_factory)


@pytest.fixture(scope="module")
def stock_bf16(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve(True, tmp_path_factory)


def greedy(server: ServerProcess, case: cases.Case) -> list[Any]:
    """The greedy answer's tokens, each with its top-5 alternatives."""
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    wav = wav_bytes(render(case.clip), SAMPLE_RATE, subtype="PCM_16")
    content: list[dict[str, Any]] = [
        {"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}}
    ]
    if case.instruction:
        content.append({"type": "text", "text": case.instruction})
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
        max_tokens=MAX_TOKENS,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    assert reply.choices[0].logprobs and reply.choices[0].logprobs.content
    return list(reply.choices[0].logprobs.content)


def test_bfloat16_answers_match_stock_vllm_or_part_at_a_tie(
    ours_bf16: ServerProcess, stock_bf16: ServerProcess
) -> None:
    kinds = ("transcribe", "colour", "count", "sound", "language", "chat")
    held = cases.cases("held_out", 12, seed=31, kinds=kinds)
    same, ties = 0, []
    for case in held:
        ours, stock = greedy(ours_bf16, case), greedy(stock_bf16, case)
        tokens = [t.token for t in ours], [t.token for t in stock]
        if tokens[0] == tokens[1]:
            same += 1
            continue
        at = next(i for i, (a, b) in enumerate(zip(*tokens, strict=False)) if a != b)
        alternatives = {t.token: t.logprob for t in stock[at].top_logprobs}
        assert tokens[0][at] in alternatives, (case, tokens)
        margin = stock[at].logprob - alternatives[tokens[0][at]]
        ties.append(margin)
        assert margin <= TIE_NATS, (case, tokens, at, margin)
    print(f"bfloat16: {same} of {len(held)} identical; margins where they part: {ties}")
    assert same >= len(held) // 2
