"""The clients people already use, against the real server.

Hugging Face's `InferenceClient` (chat completion with audio parts) and LiteLLM's
OpenAI-compatible provider (`openai/<model>` with `api_base`) must get exactly the OpenAI
SDK's greedy answers, stream the same text, and see a bad request as their own 400 error.
curl is the README's: its curl examples run in `tests/e2e/test_readme.py`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import openai
import pytest

from audiotext.server.launcher import ServerProcess
from tests.conftest import b64, load_clip, wav_bytes

from .conftest import MODEL

# LiteLLM fetches its price list from the internet at import unless told it is offline.
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

QUESTION = "What does the person say?"
MAX_TOKENS = 16
CLIPS = ("1s", "6s")
PART_KINDS = ("input_audio", "audio_url")


def messages(clip: str, kind: str = "input_audio") -> list[dict[str, Any]]:
    wav = b64(wav_bytes(load_clip(clip)))
    part: dict[str, Any]
    if kind == "input_audio":
        part = {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}
    else:
        part = {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{wav}"}}
    return [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}]


BAD_AUDIO = [
    {
        "role": "user",
        "content": [
            {"type": "input_audio", "input_audio": {"data": b64(b"not audio"), "format": "wav"}},
            {"type": "text", "text": QUESTION},
        ],
    }
]


@pytest.fixture(scope="module")
def openai_answers(client: openai.OpenAI) -> dict[str, tuple[str, int]]:
    """The OpenAI SDK's greedy answer and prompt length for each clip."""
    answers = {}
    for clip in CLIPS:
        reply = client.chat.completions.create(
            model=MODEL, messages=messages(clip), max_tokens=MAX_TOKENS, temperature=0.0
        )
        assert reply.usage is not None
        answers[clip] = (reply.choices[0].message.content or "", reply.usage.prompt_tokens)
    # Different audio, different answers: a client that dropped the audio could not match.
    assert len({text for text, _ in answers.values()}) == len(CLIPS)
    return answers


@pytest.fixture(scope="module")
def hf(server: ServerProcess) -> Any:
    from huggingface_hub import InferenceClient

    return InferenceClient(base_url=server.base_url, api_key="EMPTY")


@pytest.fixture(scope="module")
def litellm_kwargs(server: ServerProcess) -> dict[str, Any]:
    return {"model": f"openai/{MODEL}", "api_base": server.base_url, "api_key": "EMPTY"}


@pytest.mark.parametrize("kind", PART_KINDS)
def test_hf_inference_client_answers_like_the_openai_sdk(
    hf: Any, openai_answers: dict[str, tuple[str, int]], kind: str
) -> None:
    for clip, (text, prompt_tokens) in openai_answers.items():
        reply = hf.chat_completion(
            messages(clip, kind), model=MODEL, max_tokens=MAX_TOKENS, temperature=0.0
        )
        assert reply.choices[0].message.content == text
        assert reply.usage.prompt_tokens == prompt_tokens


def test_hf_inference_client_streams_the_same_text(
    hf: Any, openai_answers: dict[str, tuple[str, int]]
) -> None:
    pieces, finishes = [], []
    for chunk in hf.chat_completion(
        messages("6s"), model=MODEL, max_tokens=MAX_TOKENS, temperature=0.0, stream=True
    ):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)
    assert "".join(pieces) == openai_answers["6s"][0]
    assert len(finishes) == 1


def test_hf_inference_client_sees_bad_audio_as_a_400(hf: Any) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as refused:
        hf.chat_completion(BAD_AUDIO, model=MODEL, max_tokens=MAX_TOKENS)
    assert refused.value.response.status_code == 400


def test_litellm_answers_like_the_openai_sdk(
    litellm_kwargs: dict[str, Any], openai_answers: dict[str, tuple[str, int]]
) -> None:
    import litellm

    for clip, (text, prompt_tokens) in openai_answers.items():
        reply = litellm.completion(
            messages=messages(clip), max_tokens=MAX_TOKENS, temperature=0.0, **litellm_kwargs
        )
        assert reply.choices[0].message.content == text
        assert reply.usage.prompt_tokens == prompt_tokens


def test_litellm_streams_and_awaits_the_same_text(
    litellm_kwargs: dict[str, Any], openai_answers: dict[str, tuple[str, int]]
) -> None:
    import litellm

    request = {"messages": messages("6s"), "max_tokens": MAX_TOKENS, "temperature": 0.0}
    stream = litellm.completion(stream=True, **request, **litellm_kwargs)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    awaited = asyncio.run(litellm.acompletion(**request, **litellm_kwargs))
    assert streamed == openai_answers["6s"][0]
    assert awaited.choices[0].message.content == openai_answers["6s"][0]


def test_litellm_sees_bad_audio_as_a_400(litellm_kwargs: dict[str, Any]) -> None:
    import litellm

    with pytest.raises(litellm.BadRequestError) as refused:
        litellm.completion(messages=BAD_AUDIO, max_tokens=MAX_TOKENS, **litellm_kwargs)
    assert refused.value.status_code == 400
    assert "audio" in str(refused.value).lower()
