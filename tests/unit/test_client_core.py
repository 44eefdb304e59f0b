"""The sans-IO core: request shapes, message building, parameter mapping, results."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from audiotext.client import Generation, InvalidRequestError
from audiotext.client._constants import DEFAULT_MAX_NEW_TOKENS
from audiotext.client._core import (
    completion_params,
    prepare_messages,
    split_task,
    task_messages,
    to_generation,
)
from audiotext.client.audio import AudioSource, PreparedAudio


def fake_prepare(source: AudioSource) -> PreparedAudio:
    """Stands in for audio preparation: the core only routes sources to it."""
    return PreparedAudio(
        {"type": "input_audio", "input_audio": {"data": str(source), "format": "wav"}}, 2.0
    )


def test_task_is_one_user_turn_audio_first() -> None:
    messages = task_messages({"audio": "a.wav", "text": "What does the person say?"})
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": "a.wav"},
                {"type": "text", "text": "What does the person say?"},
            ],
        }
    ]


def test_text_is_optional_and_several_audios_keep_their_order() -> None:
    [message] = task_messages({"audio": ["a.wav", "b.wav"]})
    assert message["content"] == [
        {"type": "audio", "audio": "a.wav"},
        {"type": "audio", "audio": "b.wav"},
    ]


def test_system_prompt_comes_first() -> None:
    messages = task_messages({"audio": "a.wav"}, system="Be brief.")
    assert messages[0] == {"role": "system", "content": "Be brief."}


def test_inference_form_is_accepted() -> None:
    inputs, params = split_task(
        {"inputs": {"audio": "a.wav", "text": "hi"}, "parameters": {"max_new_tokens": 5}}
    )
    assert inputs == {"audio": "a.wav", "text": "hi"}
    assert params == {"max_new_tokens": 5}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"text": "hi"}, "no 'audio'"),
        ({"audio": []}, "no 'audio'"),
        ({"audio": "a.wav", "txt": "typo"}, "unknown request key: txt"),
        ({"audio": "a.wav", "text": 3}, "text: Input should be a valid string"),
        # The inference form follows the same rules as the flat one (and as the server).
        ({"inputs": {"audio": "a.wav"}, "voice": 1}, "unknown request key: voice"),
        ({"inputs": {"audio": "a.wav"}, "text": "hi"}, "either 'inputs' or 'audio'/'text'"),
    ],
)
def test_bad_requests_are_rejected(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        task_messages(split_task(request_)[0])


def test_split_task_rejects_non_dicts() -> None:
    with pytest.raises(InvalidRequestError, match="a request is a dict"):
        split_task("a.wav")  # type: ignore[arg-type]


def test_multi_turn_audio_is_prepared_and_the_rest_passes() -> None:
    openai_part = {"type": "input_audio", "input_audio": {"data": "xyz", "format": "wav"}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "Who?"}],
        },
        {"role": "assistant", "content": "A person."},
        {"role": "user", "content": [{"type": "audio", "path": "b.wav"}, openai_part]},
    ]
    out, seconds = prepare_messages(messages, fake_prepare)
    assert out[0] == messages[0]
    assert out[1]["content"][0]["input_audio"]["data"] == "a.wav"
    assert out[1]["content"][1] == {"type": "text", "text": "Who?"}
    assert out[2] == messages[2]
    assert out[3]["content"] == [fake_prepare("b.wav").part, openai_part]
    assert seconds == 4.0


def test_unknown_duration_makes_the_total_unknown() -> None:
    def no_duration(source: AudioSource) -> PreparedAudio:
        return PreparedAudio({"type": "audio_url", "audio_url": {"url": str(source)}}, None)

    _, seconds = prepare_messages(task_messages({"audio": ["a.wav", "b.wav"]}), no_duration)
    assert seconds is None


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "empty"),
        ([{"role": "robot", "content": "hi"}], "role"),
        ([{"role": "user", "content": 5}], "string or a list"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "needs 'audio'"),
    ],
)
def test_bad_messages_are_rejected(messages: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        prepare_messages(messages, fake_prepare)


def test_hf_parameter_names_map_to_openai_and_vllm() -> None:
    params = completion_params(
        {"max_new_tokens": 20, "do_sample": False, "top_p": 0.9, "top_k": 5,
         "repetition_penalty": 1.1, "stop": ["."], "seed": 3, "min_p": 0.05, "temperature": None}
    )  # fmt: skip
    assert params == {
        "max_tokens": 20,
        "temperature": 0.0,
        "top_p": 0.9,
        "stop": ["."],
        "seed": 3,
        "extra_body": {"top_k": 5, "repetition_penalty": 1.1, "min_p": 0.05},
    }


def test_openai_names_and_defaults() -> None:
    assert completion_params({}) == {"max_tokens": DEFAULT_MAX_NEW_TOKENS}
    assert completion_params({"max_tokens": 7, "temperature": 0.5}) == {
        "max_tokens": 7,
        "temperature": 0.5,
    }
    assert completion_params({"do_sample": True, "temperature": 0.7})["temperature"] == 0.7


def test_n_other_than_one_is_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="n must be 1"):
        completion_params({"n": 2})


def test_completion_becomes_a_generation() -> None:
    completion = SimpleNamespace(
        model="tiny",
        choices=[SimpleNamespace(message=SimpleNamespace(content="hello"), finish_reason="stop")],
        usage=SimpleNamespace(prompt_tokens=90, completion_tokens=3),
    )
    result = to_generation(completion, 2.5)
    assert result == Generation("hello", "stop", 90, 3, 2.5, "tiny")
    assert result.to_dict() == {"generated_text": "hello"}
