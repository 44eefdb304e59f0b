"""The real vLLM server on the tiny checkpoint, through the OpenAI SDK."""

from __future__ import annotations

import http.client
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import openai
import pytest
import torch

from audiotext.server.launcher import ServerProcess
from tests.conftest import SAMPLE_RATE, b64, load_clip, wav_bytes

from .conftest import MODEL

QUESTION = "What does the person say?"
MAX_TOKENS = 24
# How long httpx (and so the OpenAI SDK) keeps an idle connection for reuse.
CLIENT_KEEP_ALIVE_S = 5


def audio_part(wav: bytes, how: str) -> dict[str, Any]:
    if how == "input_audio":
        return {"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}}
    return {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64(wav)}"}}


def ask(client: openai.OpenAI, wav: bytes, how: str = "input_audio", **kw: Any) -> Any:
    messages = [
        {"role": "user", "content": [audio_part(wav, how), {"type": "text", "text": QUESTION}]}
    ]
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0.0, **kw
    )


def reference_generate(reference: Any, samples: np.ndarray) -> tuple[str, int]:
    """transformers' answer and prompt length for the same prompt and audio."""
    processor, model = reference
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio_url": "clip.wav"},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, audio=[samples], sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    text = processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)[0]
    return text, prompt_len


def test_model_is_listed(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


@pytest.mark.parametrize("how", ["input_audio", "audio_url"])
def test_both_audio_parts_answer_the_same(client: openai.OpenAI, how: str) -> None:
    wav = wav_bytes(load_clip("6s"))
    reply = ask(client, wav, how)
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert (
        reply.choices[0].message.content
        == ask(client, wav, "input_audio").choices[0].message.content
    )


def test_streamed_text_equals_non_streamed_text(client: openai.OpenAI) -> None:
    wav = wav_bytes(load_clip("1s"))
    whole = ask(client, wav).choices[0].message.content
    stream = ask(client, wav, stream=True)
    pieces, finishes = [], []
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)
    assert "".join(pieces) == whole
    assert len(finishes) == 1


@pytest.mark.parametrize("clip", ["1s", "6s", "25s"])
def test_parity_with_transformers_generate(
    client: openai.OpenAI, reference: Any, clip: str
) -> None:
    samples = load_clip(clip)
    expected_text, expected_prompt_len = reference_generate(reference, samples)
    reply = ask(client, wav_bytes(samples))
    assert reply.usage.prompt_tokens == expected_prompt_len
    assert reply.choices[0].message.content == expected_text


def test_answers_depend_on_the_audio(client: openai.OpenAI) -> None:
    # Guards the parity test against a checkpoint that ignores its input.
    answers = {
        ask(client, wav_bytes(load_clip(c))).choices[0].message.content for c in ("1s", "6s", "25s")
    }
    assert len(answers) == 3


def test_8khz_stereo_wav_is_resampled_not_a_500(client: openai.OpenAI) -> None:
    mono = load_clip("6s")
    low = mono[::2]  # 8 kHz
    stereo = np.stack([low, low * 0.5], axis=1)
    reply = ask(client, wav_bytes(stereo, rate=8000, subtype="PCM_16"))
    assert reply.choices[0].message.content
    # Same duration as the 16 kHz clip, so the same number of audio tokens.
    assert reply.usage.prompt_tokens == ask(client, wav_bytes(mono)).usage.prompt_tokens


def test_an_idle_kept_alive_connection_outlives_the_clients_keep_alive(
    server: ServerProcess,
) -> None:
    # httpx and the OpenAI SDK reuse a pooled connection for up to 5 s; a server that closes
    # idle ones at 5 s (vLLM's default) races them, and a request is lost on the way.
    base = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(base.hostname or "", base.port, timeout=30)
    statuses = []
    for pause_s in (0, CLIENT_KEEP_ALIVE_S + 1):
        time.sleep(pause_s)
        connection.request("GET", "/v1/models")
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    assert connection.sock is not None, "the server closed the connection"
    connection.close()
    assert statuses == [200, 200]
