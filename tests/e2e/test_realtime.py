"""`/v1/realtime` against real servers, driven by the OpenAI SDK's realtime client.

The listening checkpoint hears a spoken voice-chat question and then a spoken follow-up
("and plus one") streamed in 20 ms PCM16 chunks with server VAD; the question must be
answered right, each answer must be, token for token at
temperature 0, the answer of a plain chat completion with the same audio and the same
history, the second turn's prompt must carry the first (usage), and each answer must find
its prompt prefilled during the end-of-turn silence (vLLM's prefix-cache hits). The tiny checkpoint
(which never stops talking) serves barge-in, clear, bad events and clients that vanish.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile
import websockets

from audiotext.client import AudioTextClient
from audiotext.client._realtime import pcm16_chunks
from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from audiotext.server.listening import cases
from audiotext.server.listening.speech import SAMPLE_RATE, render
from tests.conftest import DATA, load_clip, running_server
from tests.metrics import parse, scrape
from tests.realtime import Turn, append, checked, chunks, pcm16, session, silence

RATE = 24000  # the Realtime API's default input rate: the server resamples to 16 kHz
API_KEY = "realtime-key"


@pytest.fixture(scope="module")
def listening_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    checkpoint.ensure_built("listening")
    # 32-token KV blocks: vLLM's CPU default (128) is longer than a short spoken turn's
    # prompt, and prefix caching reuses whole blocks only (the GPU default is 16).
    config = ServerConfig(
        model="listening", port=free_port(), dtype="float32", api_key=API_KEY,
        extra_args=("--block-size", "32"),
    )  # fmt: skip
    with running_server(config, tmp_path_factory.mktemp("listening-realtime")) as proc:
        yield proc


def sdk(server: ServerProcess, api_key: str = "EMPTY") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0)


def stream(connection: Any, pcm: bytes, rate: int = RATE) -> None:
    for chunk in chunks(pcm, rate):
        connection.send(append(chunk))


def until(connection: Any, kind: str, turn: Turn | None = None, within_s: float = 120) -> Turn:
    """Events (checked against the SDK's models) up to and including the first `kind`."""
    turn = turn or Turn()
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        event = checked(connection.recv_bytes())
        turn.events.append(event)
        if event["type"] == kind:
            return turn
    raise AssertionError(f"no {kind} within {within_s} s: {turn.kinds()}")


def wav(pcm: bytes, rate: int) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.frombuffer(pcm, "<i2"), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


def audio_turn(pcm: bytes, rate: int = RATE) -> dict[str, Any]:
    part = {"type": "input_audio", "input_audio": {"data": wav(pcm, rate), "format": "wav"}}
    return {"role": "user", "content": [part]}


def metric(http: httpx.Client, name: str) -> float:
    return scrape(http).total(name)


def cache_block_size(http: httpx.Client) -> int:
    """The engine's KV-cache block size (prefix caching reuses whole blocks)."""
    for (name, labels), _ in scrape(http).samples.items():
        if name == "vllm:cache_config_info":
            return int(dict(labels)["block_size"])
    raise AssertionError("vLLM's /metrics has no vllm:cache_config_info")


def test_sdk_client_holds_a_spoken_conversation_answered_as_chat_would(
    listening_server: ServerProcess,
) -> None:
    question = cases.cases("held_out", 1, seed=17, kinds=("chat",))[0]
    rng = random.Random("realtime")
    follow_up = cases.draw_clip(rng, "held_out", cases.FOLLOW_UP)
    while not (follow_up.follows and cases.followed(question.answer, follow_up.follows)):
        follow_up = cases.draw_clip(rng, "held_out", cases.FOLLOW_UP)
    follow_up = dataclasses.replace(follow_up, voice=question.clip.voice)  # one speaker
    spoken = [pcm16(render(clip), SAMPLE_RATE, RATE) for clip in (question.clip, follow_up)]
    # Each question, then 1 s of silence so that the VAD (500 ms) hears it end.
    streams = [s + silence(1.0, RATE) for s in spoken]
    client = sdk(listening_server, API_KEY)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    base = listening_server.base_url.removesuffix("/v1")
    turns: list[Turn] = []
    hits: list[float] = []  # vLLM's prefix-cache hits (tokens) while each turn was answered
    with (
        client.realtime.connect(model="listening") as connection,
        httpx.Client(base_url=base, headers=headers, timeout=60) as http,
    ):
        created = until(connection, "session.created").first("session.created")
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        connection.send({"type": "session.update", "session": session(RATE, temperature=0)})
        until(connection, "session.updated")
        for index, pcm in enumerate(streams):
            before = metric(http, "vllm:prefix_cache_hits_total")
            stream(connection, pcm)
            turns.append(until(connection, "response.done"))
            hits.append(metric(http, "vllm:prefix_cache_hits_total") - before)
            assert turns[-1].done["status"] == "completed", (index, turns[-1].done)
        block_size = cache_block_size(http)
        retrieved = []
        for turn in turns:
            item_id = turn.first("input_audio_buffer.committed")["item_id"]
            connection.send({"type": "conversation.item.retrieve", "item_id": item_id})
            retrieved.append(until(connection, "conversation.item.retrieved").events[-1]["item"])

    # The session's clock runs over all audio sent; the VAD's cut is a slice of it.
    sent = b"".join(streams)
    history: list[dict[str, Any]] = []
    for turn, item in zip(turns, retrieved, strict=True):
        kinds = turn.kinds()
        assert kinds[:4] == [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed", "conversation.item.created",
        ]  # fmt: skip
        assert kinds.index("response.created") < kinds.index("response.output_text.delta")
        start = turn.first("input_audio_buffer.speech_started")["audio_start_ms"]
        end = turn.first("input_audio_buffer.speech_stopped")["audio_end_ms"]
        cut = sent[start * RATE // 1000 * 2 : end * RATE // 1000 * 2]
        assert base64.b64decode(item["content"][0]["audio"]) == cut
        history.append(audio_turn(cut))
        reply = client.chat.completions.create(
            model="listening",
            messages=history,
            temperature=0,  # type: ignore[arg-type]
        )
        assert turn.text == reply.choices[0].message.content
        assert turn.first("response.output_text.done")["text"] == turn.text
        usage = turn.done["usage"]
        assert reply.usage is not None
        assert (usage["input_tokens"], usage["output_tokens"]) == (
            reply.usage.prompt_tokens, reply.usage.completion_tokens
        )  # fmt: skip
        history.append({"role": "assistant", "content": turn.text})

    # The question ("what is one plus four") is answered right: the audio streamed in 20 ms
    # chunks at 24 kHz and cut by the VAD is heard as the question, and the follow-up ("and
    # plus one") from the conversation ("six").
    assert cases.normalize(turns[0].text) == cases.normalize(question.answer), turns[0].text
    expected = cases.followed(question.answer, follow_up.follows)
    assert expected and cases.normalize(turns[1].text) == cases.normalize(expected), (
        turns[1].text, expected,
    )  # fmt: skip
    first, second = (t.done["usage"] for t in turns)
    # The second prompt is the first, its answer, and the new question.
    assert second["input_tokens"] > first["input_tokens"] + first["output_tokens"]
    full = [t["input_tokens"] // block_size * block_size for t in (first, second)]
    # Each turn's prompt was prefilled while the VAD waited out the silence, so its answer
    # found the prompt's full blocks cached, even the first turn's (nothing else sent them).
    assert hits[0] >= full[0] > 0
    # The second turn's prefill reused the first turn's KV, and its answer the prefill's.
    assert hits[1] >= full[0] + full[1]


def test_tiny_barge_in_cancels_and_the_next_turn_is_answered(server: ServerProcess) -> None:
    speech = pcm16(load_clip("1s"), to_rate=RATE)
    with sdk(server).realtime.connect(model="tiny") as connection:
        until(connection, "session.created")
        connection.send({"type": "session.update", "session": session(RATE, temperature=0)})
        until(connection, "session.updated")
        stream(connection, speech + silence(0.8, RATE))
        until(connection, "response.output_text.delta")  # the tiny model talks on and on
        stream(connection, speech)  # the user speaks again: barge-in
        barge = until(connection, "response.done")
        assert barge.first("input_audio_buffer.speech_started")
        assert barge.done["status"] == "cancelled"
        assert barge.done["status_details"]["reason"] == "turn_detected"
        assert barge.done["output"][0]["status"] == "incomplete"
        stream(connection, silence(0.8, RATE))
        answered = until(connection, "response.output_text.delta")
        assert answered.first("input_audio_buffer.committed")
        connection.send({"type": "response.cancel"})
        done = until(connection, "response.done")
        assert done.done["status_details"]["reason"] == "client_cancelled"
    assert_engine_idle(server)


def assert_engine_idle(server: ServerProcess, within_s: float = 15) -> None:
    base = server.base_url.removesuffix("/v1")
    with httpx.Client(base_url=base, timeout=30) as http:
        deadline = time.monotonic() + within_s
        while True:
            busy = metric(http, "vllm:num_requests_running") + metric(
                http, "vllm:num_requests_waiting"
            )
            if busy == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert busy == 0


def test_clear_empties_the_buffer_and_bad_events_leave_the_session_working(
    server: ServerProcess,
) -> None:
    speech = pcm16(load_clip("1s"), to_rate=16000)
    with sdk(server).realtime.connect(model="tiny") as connection:
        until(connection, "session.created")
        connection.send({"type": "session.update", "session": session(16000, manual=True)})
        until(connection, "session.updated")
        stream(connection, speech, 16000)
        connection.send({"type": "input_audio_buffer.clear"})
        until(connection, "input_audio_buffer.cleared")
        connection.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
        empty = until(connection, "error").events[-1]["error"]
        assert (empty["code"], empty["event_id"]) == ("input_audio_buffer_commit_empty", "c1")

        bad: list[tuple[str | dict[str, Any], str]] = [
            ("{not json", "invalid_json"),
            ({"type": "no.such.event"}, "unknown_event"),
            ({"type": "input_audio_buffer.append", "audio": "***"}, "invalid_audio"),
            ({"type": "session.update", "session": session(8000)}, "invalid_event"),
            ({"type": "response.cancel"}, "response_cancel_not_active"),
            ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "hi <|AUDIO|>"}]}}, "invalid_request"),
        ]  # fmt: skip
        for event, code in bad:
            connection.send_raw(event if isinstance(event, str) else json.dumps(event))
            assert until(connection, "error").events[-1]["error"]["code"] == code, event

        # Still serving: a text turn, then audio committed by hand, answered.
        text = {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "What is said?"}]}  # fmt: skip
        connection.send({"type": "conversation.item.create", "item": text})
        until(connection, "conversation.item.created")
        stream(connection, speech, 16000)
        connection.send({"type": "input_audio_buffer.commit"})
        until(connection, "input_audio_buffer.committed")
        connection.send({"type": "response.create", "response": {"max_output_tokens": 4}})
        done = until(connection, "response.done").done
        assert done["status"] == "incomplete" and done["usage"]["output_tokens"] == 4


def test_sessions_that_vanish_mid_utterance_free_the_engine(server: ServerProcess) -> None:
    url = server.base_url.replace("http://", "ws://") + "/realtime?model=tiny"
    speech = pcm16(load_clip("1s"), to_rate=RATE)
    # Answers run on while the user talks (no barge-in): the engine is busy when they vanish.
    update = {"type": "session.update",
              "session": session(RATE, {"interrupt_response": False})}  # fmt: skip

    async def vanish(answering: asyncio.Event, go: asyncio.Event) -> None:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps(update))
            for chunk in chunks(speech + silence(0.8, RATE), RATE):
                await ws.send(json.dumps(append(chunk)))
            while json.loads(await ws.recv())["type"] != "response.output_text.delta":
                pass
            answering.set()
            for chunk in list(chunks(speech, RATE))[: len(speech) // 1920 // 2]:
                await ws.send(json.dumps(append(chunk)))  # half an utterance, then gone
            await go.wait()
            ws.transport.abort()  # no close handshake: the client just vanishes

    async def main() -> float:
        flags = [asyncio.Event() for _ in range(20)]
        go = asyncio.Event()
        tasks = [asyncio.create_task(vanish(flag, go)) for flag in flags]
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 300)
        # A long timeout: this process's event loop is busy with twenty sessions.
        base = server.base_url.removesuffix("/v1")
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            text = (await http.get("/metrics")).text
        go.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        samples = parse(text).samples
        return sum(v for (n, _), v in samples.items()
                   if n in ("vllm:num_requests_running", "vllm:num_requests_waiting"))  # fmt: skip

    busy_before = asyncio.run(main())
    assert busy_before >= 1  # the engine was answering them
    assert_engine_idle(server)


def test_audiotext_client_realtime_helper_answers_as_chat(server: ServerProcess) -> None:
    clip = DATA / "speech_short.flac"
    pcm = b"".join(pcm16_chunks(clip, trailing_silence_s=0))
    reference = sdk(server).chat.completions.create(
        model="tiny",
        messages=[audio_turn(pcm, 16000)],
        max_tokens=8,
        temperature=0,  # type: ignore[list-item]
    )
    with AudioTextClient(base_url=server.base_url) as client:
        with client.realtime(turn_detection=False, max_output_tokens=8, temperature=0) as rt:
            rt.send_audio(clip)
            rt.commit()
            rt.respond()
            assert rt.answer() == reference.choices[0].message.content
            # With server VAD, a clip sent in real time is one turn, answered on its own.
        with client.realtime(max_output_tokens=8, temperature=0) as rt:
            rt.send_audio(clip, pace=True)
            kinds = []
            for event in rt.events():
                kinds.append(event.type)
                if event.type == "response.done":
                    break
            assert kinds.count("input_audio_buffer.committed") == 1
            assert "response.output_text.delta" in kinds
