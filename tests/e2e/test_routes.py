"""audiotext's routes on the real server: the task endpoint, transcriptions, long audio."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile

from audiotext.server.launcher import ServerProcess
from tests.conftest import DecodeLog, b64, load_clip, speech_of, wav_bytes

QUESTION = "What does the person say?"
GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=120)


def chat(client: openai.OpenAI, *audios: bytes, stream: bool = False) -> Any:
    parts: list[Any] = [
        {"type": "input_audio", "input_audio": {"data": b64(a), "format": "wav"}} for a in audios
    ]
    return client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=[{"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]}],
        max_tokens=8,
        temperature=0,
        stream=stream,
    )


def test_task_endpoint_answers_and_matches_chat(http: httpx.Client, client: openai.OpenAI) -> None:
    wav = wav_bytes(load_clip("6s"))
    reply = http.post(
        "/v1/audio-text-to-text", json={"audio": b64(wav), "text": QUESTION, "parameters": GREEDY}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["generated_text"]
    assert body["audio"] == {
        "seconds": pytest.approx(len(load_clip("6s")) / 16000, abs=1e-3),
        "windows": 1,
    }
    chat_reply = chat(client, wav).parse()
    assert body["generated_text"] == chat_reply.choices[0].message.content
    assert body["usage"]["prompt_tokens"] == chat_reply.usage.prompt_tokens


def test_inference_form_and_data_url_give_the_same_answer(http: httpx.Client) -> None:
    wav = wav_bytes(load_clip("1s"))
    flat = http.post(
        "/v1/audio-text-to-text", json={"audio": b64(wav), "text": QUESTION, "parameters": GREEDY}
    )
    inference = http.post(
        "/v1/audio-text-to-text",
        json={
            "inputs": {"audio": f"data:audio/wav;base64,{b64(wav)}", "text": QUESTION},
            "parameters": GREEDY,
        },
    )
    assert inference.status_code == 200, inference.text
    assert inference.json()["generated_text"] == flat.json()["generated_text"]


def test_task_streaming_events_join_to_the_answer(http: httpx.Client) -> None:
    request = {"audio": b64(wav_bytes(load_clip("1s"))), "text": QUESTION, "parameters": GREEDY}
    whole = http.post("/v1/audio-text-to-text", json=request).json()
    with http.stream("POST", "/v1/audio-text-to-text", json={**request, "stream": True}) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        payloads = [
            line.removeprefix("data: ") for line in events.iter_lines() if line.startswith("data: ")
        ]
    assert payloads[-1] == "[DONE]"
    deltas = [json.loads(p)["delta"] for p in payloads[:-2]]
    final = json.loads(payloads[-2])
    assert "".join(deltas) == final["generated_text"] == whole["generated_text"]
    assert final["finish_reason"] == whole["finish_reason"]
    assert final["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert final["audio"] == whole["audio"]


def test_several_audios_in_one_request(http: httpx.Client) -> None:
    audios = [b64(wav_bytes(load_clip("1s"))), b64(wav_bytes(load_clip("6s")))]
    body = http.post("/v1/audio-text-to-text", json={"audio": audios, "parameters": GREEDY}).json()
    single = http.post(
        "/v1/audio-text-to-text", json={"audio": audios[1], "parameters": GREEDY}
    ).json()
    assert body["audio"]["windows"] == 2
    assert body["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"]


@pytest.mark.parametrize(("seconds", "windows"), [(10, 1), (45, 2), (95, 4)])
def test_long_audio_is_heard_whole_on_chat(
    client: openai.OpenAI, seconds: int, windows: int
) -> None:
    raw = chat(client, wav_bytes(speech_of(seconds)))
    reply = raw.parse()
    assert int(raw.headers["x-audio-windows"]) == windows
    assert reply.model_extra["audio"] == {"seconds": float(seconds), "windows": windows}
    # Stock vLLM gives any clip at most 750 audio tokens; here every window counts.
    full_windows = seconds // 30
    assert reply.usage.prompt_tokens > 700 * full_windows + 25 * (seconds % 30)


def test_streamed_chat_reports_the_windows_in_headers(client: openai.OpenAI) -> None:
    raw = chat(client, wav_bytes(speech_of(45)), stream=True)
    assert raw.headers["x-audio-windows"] == "2"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text == chat(client, wav_bytes(speech_of(45))).parse().choices[0].message.content


def test_too_long_audio_is_refused_with_the_limit(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, wav_bytes(speech_of(250)))
    assert caught.value.status_code == 413
    assert "at most 240 s" in caught.value.message
    reply = http.post("/v1/audio-text-to-text", json={"audio": b64(wav_bytes(speech_of(250)))})
    assert reply.status_code == 413
    assert "--max-audio-seconds" in reply.json()["error"]["message"]


def test_audio_needing_more_windows_than_allowed_is_a_400_that_says_why(
    http: httpx.Client,
) -> None:
    # Six different 40 s clips: 240 s, within --max-audio-seconds, but 12 windows of 30 s
    # where a request may hold 10 (--max-audios-per-prompt). Never heard in part.
    clips = [
        {"type": "input_audio", "input_audio": {"data": b64(wav_bytes(
            np.roll(speech_of(40), k * 16000), subtype="PCM_16")), "format": "wav"}}
        for k in range(6)
    ]  # fmt: skip
    content = [*clips, {"type": "text", "text": QUESTION}]
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert "12 windows" in message and "--max-audios-per-prompt" in message


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"audio": "@@@ not base64 @@@"}, "input_audio.data"),
        ({"text": "no audio"}, "body"),
        ({"audio": "AAAA", "unknown": 1}, None),
        ({"audio": b64(b"0" * 3000), "parameters": {"n": 3}}, "parameters"),
    ],
)
def test_bad_task_requests_are_4xx(
    http: httpx.Client, request_: dict[str, Any], param: str | None
) -> None:
    reply = http.post("/v1/audio-text-to-text", json=request_)
    assert 400 <= reply.status_code < 500, reply.text
    if param:
        assert reply.json()["error"]["param"] == param


def test_openai_sdk_transcribes_and_translates(client: openai.OpenAI) -> None:
    short = wav_bytes(load_clip("6s"))
    transcript = client.audio.transcriptions.create(
        model="tiny", file=("clip.wav", short, "audio/wav")
    )
    assert transcript.text
    assert transcript.model_extra["audio"]["windows"] == 1
    long = client.audio.transcriptions.create(
        model="tiny", file=("long.wav", wav_bytes(speech_of(45)), "audio/wav"), language="en"
    )
    assert long.model_extra["audio"] == {"seconds": 45.0, "windows": 2}
    as_text = client.audio.transcriptions.create(
        model="tiny", file=("clip.wav", short, "audio/wav"), response_format="text"
    )
    assert isinstance(as_text, str) and as_text.strip() == transcript.text
    translation = client.audio.translations.create(
        model="tiny", file=("clip.wav", short, "audio/wav")
    )
    assert translation.text


def test_timed_formats_give_one_segment_per_window(client: openai.OpenAI) -> None:
    speech = speech_of(45)
    file = ("long.wav", wav_bytes(speech), "audio/wav")
    verbose = client.audio.transcriptions.with_raw_response.create(
        model="tiny", file=file, response_format="verbose_json", language="en"
    )
    assert verbose.headers["x-audio-windows"] == "2"
    body = json.loads(verbose.http_response.text)
    segments = body["segments"]
    assert body["duration"] == 45.0 and body["language"] == "en"
    assert [s["id"] for s in segments] == [0, 1]
    # The windows tile the clip: the first cut is at a quiet point in its last second.
    assert segments[0]["start"] == 0.0 and 29.0 <= segments[0]["end"] <= 30.0
    assert segments[1]["start"] == segments[0]["end"] and segments[1]["end"] == 45.0
    assert body["text"] == " ".join(s["text"] for s in segments if s["text"])
    # Each segment is what the model says of its window alone.
    for segment in segments:
        window = speech[round(segment["start"] * 16000) : round(segment["end"] * 16000)]
        alone = client.audio.transcriptions.create(
            model="tiny", file=("w.wav", wav_bytes(window), "audio/wav"), language="en"
        )
        assert segment["text"] == alone.text
        assert segment["tokens"] and segment["avg_logprob"] < 0
    # Same request as verbose_json's (the language is part of the instruction), as SubRip.
    srt = client.audio.transcriptions.create(
        model="tiny", file=file, response_format="srt", language="en"
    )
    cues = re.findall(r"(\d+)\n(\S+) --> (\S+)\n(.*)\n\n", str(srt))
    assert [c[1:] for c in cues] == [
        (clock(s["start"], ","), clock(s["end"], ","), s["text"]) for s in segments if s["text"]
    ]
    vtt = client.audio.translations.create(model="tiny", file=file, response_format="vtt")
    assert str(vtt).startswith("WEBVTT\n\n")
    assert re.findall(r"^(\S+) --> (\S+)$", str(vtt), re.M) == [
        (clock(s["start"], "."), clock(s["end"], ".")) for s in segments
    ]


def clock(seconds: float, separator: str) -> str:
    whole = int(seconds)
    return f"00:{whole // 60:02d}:{whole % 60:02d}{separator}{round(seconds % 1 * 1000):03d}"


def test_transcription_rejects_unsupported_format_and_bad_audio(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="json, text, verbose_json, srt, vtt"):
        client.audio.transcriptions.create(
            model="tiny",
            file=("c.wav", wav_bytes(load_clip("1s")), "audio/wav"),
            response_format="tsv",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError, match="decode"):
        client.audio.transcriptions.create(
            model="tiny", file=("c.wav", b"not audio" * 100, "audio/wav")
        )


def decoded(http: httpx.Client) -> float:
    """Clips the API server has decoded so far (its `audiotext_audio_decodes_total`)."""
    metrics = http.get("/metrics").text
    return float(re.findall(r"^audiotext_audio_decodes_total (\S+)$", metrics, re.M)[0])


def flac_url(samples: Any) -> str:
    buf = io.BytesIO()
    soundfile.write(buf, samples, 16000, format="FLAC")
    return "data:audio/flac;base64," + b64(buf.getvalue())


def test_each_clip_is_decoded_once_in_the_api_process(
    http: httpx.Client, client: openai.OpenAI, server: ServerProcess, decodes: DecodeLog
) -> None:
    """Counted twice: by the server's metric, and by the decode probe, which sees every
    libsndfile decode in every process of the server (vLLM's own loader included)."""
    assert server.proc is not None
    mark, before = decodes.mark(), decoded(http)
    chat(client, wav_bytes(load_clip("1s")), wav_bytes(speech_of(45)))  # 2 clips, 3 windows
    long_flac = {"type": "audio_url", "audio_url": {"url": flac_url(speech_of(40))}}
    messages = [{"role": "user", "content": [long_flac, {"type": "text", "text": QUESTION}]}]
    sent = [
        ("/v1/audio-text-to-text", {"json": {"audio": b64(wav_bytes(load_clip("6s"))),
                                             "parameters": GREEDY}}),
        ("/invocations", {"json": {"model": "tiny", "messages": messages, "max_tokens": 4}}),
        ("/tokenize", {"json": {"model": "tiny", "messages": messages}}),
        ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav_bytes(load_clip("1s")))},
                                      "data": {"model": "tiny"}}),
    ]  # fmt: skip
    for route, request in sent:
        assert http.post(route, **request).status_code == 200, route
    clips = 2 + len(sent)
    assert decoded(http) - before == clips
    assert decodes.since(mark) == [server.api_server_pid] * clips


def test_routes_are_in_the_openapi_schema(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in ("/v1/audio-text-to-text", "/v1/audio/transcriptions", "/v1/audio/translations"):
        assert "post" in paths[path]
    schema = paths["/v1/audio-text-to-text"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert schema["$ref"].endswith("/TaskRequest")
