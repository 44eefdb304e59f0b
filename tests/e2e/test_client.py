"""audiotext.client against the real vLLM server on the tiny checkpoint."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from audiotext.client import (
    AsyncAudioTextClient,
    AudioTextClient,
    BadRequestError,
    InvalidAudioError,
    load_audio,
)
from audiotext.server.launcher import ServerProcess
from tests.conftest import DATA, SAMPLE_RATE, load_clip

GREEDY = {"max_new_tokens": 16, "do_sample": False}
SHORT = str(DATA / "speech_short.flac")
DEMO = str(DATA / "speech_demo.flac")


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> AudioTextClient:
    return AudioTextClient(base_url=server.base_url, max_retries=0)


def test_generate_returns_the_task_shape(sdk: AudioTextClient) -> None:
    answer = sdk.generate({"audio": DEMO, "text": "What does the person say?"}, **GREEDY)
    assert set(answer) == {"generated_text"}
    assert answer["generated_text"]


def test_generate_result_reports_usage_and_duration(sdk: AudioTextClient) -> None:
    result = sdk.generate_result({"audio": DEMO}, **GREEDY)
    assert result.model == "tiny"
    assert result.finish_reason in ("stop", "length")
    assert result.completion_tokens is not None and 0 < result.completion_tokens <= 16
    assert result.audio_seconds == pytest.approx(len(load_audio(DEMO)) / SAMPLE_RATE)


def test_every_source_kind_gets_the_same_answer(sdk: AudioTextClient) -> None:
    samples = load_audio(SHORT)
    answers = set()
    with open(SHORT, "rb") as file:
        for source in (
            SHORT,
            Path(SHORT),
            Path(SHORT).read_bytes(),
            file,
            samples,
            (samples, SAMPLE_RATE),
        ):
            answers.add(sdk.generate({"audio": source, "text": "Who?"}, **GREEDY)["generated_text"])
    assert len(answers) == 1


def test_stream_joins_to_the_generated_text(sdk: AudioTextClient) -> None:
    request = {"audio": SHORT, "text": "What does the person say?"}
    pieces = list(sdk.stream(request, **GREEDY))
    assert all(pieces)  # no empty piece, the first included
    assert "".join(pieces) == sdk.generate(request, **GREEDY)["generated_text"]


def test_async_twin_gives_the_same_answers(server: ServerProcess, sdk: AudioTextClient) -> None:
    request = {"audio": DEMO, "text": "Summarize this in one sentence."}

    async def run() -> tuple[dict[str, Any], str]:
        async with AsyncAudioTextClient(base_url=server.base_url) as client:
            answer = await client.generate(request, **GREEDY)
            pieces = [d async for d in client.stream(request, **GREEDY)]
            assert all(pieces)
            return answer, "".join(pieces)

    answer, streamed = asyncio.run(run())
    assert answer == sdk.generate(request, **GREEDY)
    assert streamed == answer["generated_text"]


def test_batch_keeps_order_and_isolates_failures(
    server: ServerProcess, sdk: AudioTextClient
) -> None:
    requests = [{"audio": SHORT, "text": t} for t in ("One?", "Two?", "Three?")]
    requests.insert(1, {"audio": "missing.wav"})
    expected = [
        sdk.generate(r, **GREEDY) if r["audio"] != "missing.wav" else None for r in requests
    ]

    results = sdk.generate_batch(requests, concurrency=3, progress=False, **GREEDY)
    assert isinstance(results[1], InvalidAudioError)
    assert [r for i, r in enumerate(results) if i != 1] == [
        e for i, e in enumerate(expected) if i != 1
    ]

    async def run() -> list[Any]:
        async with AsyncAudioTextClient(base_url=server.base_url) as client:
            return await client.generate_batch(requests, concurrency=3, progress=False, **GREEDY)

    assert [str(r) for r in asyncio.run(run())] == [str(r) for r in results]


def test_server_errors_are_typed_and_name_the_parameter_as_typed(sdk: AudioTextClient) -> None:
    with pytest.raises(BadRequestError) as caught:
        sdk.generate({"audio": SHORT}, max_new_tokens=-1)
    assert caught.value.status_code == 400
    assert "max_new_tokens must be at least 1" in caught.value.message
    assert "max_tokens" not in caught.value.message
    with pytest.raises(BadRequestError, match="max_tokens must be at least 1"):
        sdk.generate({"audio": SHORT}, max_tokens=-1)
    # A request's own parameters win over the call's.
    request = {"audio": SHORT, "parameters": {"max_new_tokens": 2}}
    assert sdk.generate_result(request, max_new_tokens=9, temperature=0).completion_tokens <= 2


def test_transcribe_and_translate_in_both_twins(
    server: ServerProcess, sdk: AudioTextClient
) -> None:
    from audiotext.client import Transcription

    plain = sdk.transcribe(DEMO)
    assert isinstance(plain, Transcription) and plain.text and plain.segments == []
    assert plain.duration == pytest.approx(len(load_audio(DEMO)) / SAMPLE_RATE, abs=1e-3)
    timed = sdk.transcribe(Path(DEMO).read_bytes(), response_format="verbose_json")
    assert isinstance(timed, Transcription) and timed.language is None
    [segment] = timed.segments
    assert (segment.start, segment.end, segment.text) == (0.0, timed.duration, plain.text)
    assert sdk.transcribe(DEMO, response_format="text") == plain.text
    translated = sdk.translate(DEMO)
    assert isinstance(translated, Transcription) and translated.text

    async def run() -> tuple[Any, Any]:
        async with AsyncAudioTextClient(base_url=server.base_url) as client:
            return await client.transcribe(DEMO), await client.translate(DEMO)

    assert asyncio.run(run()) == (plain, translated)


def test_multi_turn_chat_matches_transformers(sdk: AudioTextClient, reference: Any) -> None:
    first, second = load_clip("1s"), load_clip("6s")
    turns = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": first}, {"type": "text", "text": "Who speaks?"}],
        },
        {"role": "assistant", "content": "A woman."},
        {
            "role": "user",
            "content": [{"type": "audio", "audio": second}, {"type": "text", "text": "And now?"}],
        },
    ]
    result = sdk.chat(turns, **GREEDY)

    processor, model = reference

    def hf_part(part: dict[str, Any]) -> dict[str, Any]:
        return {"type": "audio", "audio_url": "x"} if part["type"] == "audio" else part

    hf_turns = [
        {**t, "content": [hf_part(p) for p in t["content"]]}
        if isinstance(t["content"], list)
        else t
        for t in turns
    ]
    prompt = processor.apply_chat_template(hf_turns, add_generation_prompt=True, tokenize=False)
    # The client sends 16-bit WAV: give transformers the same quantised samples.
    audios = [np.round(a * 32767) / 32767 for a in (first, second)]
    inputs = processor(text=prompt, audio=audios, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    expected = processor.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )[0]
    assert result.prompt_tokens == inputs["input_ids"].shape[1]
    assert result.generated_text == expected
    assert result.audio_seconds == pytest.approx((len(first) + len(second)) / SAMPLE_RATE)


def ask(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audiotext.server.cli", "ask", "--base-url", server.base_url,
         "--max-new-tokens", "8", "--temperature", "0", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_ask_plain_json_and_stream(server: ServerProcess, sdk: AudioTextClient) -> None:
    expected = sdk.generate({"audio": SHORT, "text": "Who?"}, max_new_tokens=8, temperature=0)[
        "generated_text"
    ]
    plain = ask(server, SHORT, "Who?")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == expected + "\n"
    as_json = json.loads(ask(server, SHORT, "Who?", "--json").stdout)
    assert as_json["generated_text"] == expected
    assert as_json["audio_seconds"] == pytest.approx(len(load_audio(SHORT)) / SAMPLE_RATE)
    assert ask(server, SHORT, "Who?", "--stream").stdout == expected + "\n"


def test_cli_batch_writes_jsonl_in_order(server: ServerProcess, tmp_path: Path) -> None:
    for name in ("b.flac", "a.flac"):
        (tmp_path / name).write_bytes(Path(SHORT).read_bytes())
    (tmp_path / "notes.txt").write_text("not audio")
    out = tmp_path / "results.jsonl"
    result = ask(server, "--batch", str(tmp_path), "Who?", "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["audio"]).name for r in rows] == ["a.flac", "b.flac"]
    assert all(r["generated_text"] for r in rows)
    assert "2 answered, 0 failed" in result.stderr

    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text(
        json.dumps({"audio": "a.flac", "text": "Who?"})
        + "\n"
        + json.dumps({"audio": "gone.wav"})
        + "\n"
    )
    result = ask(server, "--batch", str(jsonl))
    assert result.returncode == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["generated_text"] and rows[1]["error"]["type"] == "InvalidAudioError"


def test_cli_missing_file_is_one_line_error(server: ServerProcess) -> None:
    result = ask(server, "missing.wav")
    assert result.returncode == 1
    assert result.stderr.strip() == "audiotext ask: error: audio file not found: missing.wav"


def test_fetch_urls_downloads_and_normalises_on_the_client(
    server: ServerProcess, sdk: AudioTextClient
) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    files = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(DATA)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{files.server_address[1]}/speech_short.flac"
        fetching = AudioTextClient(base_url=server.base_url, fetch_urls=True)
        result = fetching.generate_result({"audio": url, "text": "Who?"}, **GREEDY)
        with pytest.raises(InvalidAudioError, match="could not fetch"):
            fetching.generate({"audio": url.replace("speech_short", "missing")})
    finally:
        files.shutdown()
        files.server_close()
    assert result.audio_seconds == pytest.approx(len(load_audio(SHORT)) / SAMPLE_RATE)
    assert (
        result.generated_text
        == sdk.generate({"audio": SHORT, "text": "Who?"}, **GREEDY)["generated_text"]
    )
