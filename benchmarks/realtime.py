"""Realtime latency: end of speech to first text delta, and the second turn against cold.

    python -m audiotext.benchmarks.realtime [--size listening] [--reps 5]

Starts `audiotext serve` on a built-in checkpoint and, per repetition, holds a two-turn
spoken conversation on `/v1/realtime` (OpenAI SDK, 20 ms PCM16 chunks at 24 kHz sent in
real time, server VAD): two fresh held-out voice-chat questions of the listening
checkpoint, spoken with espeak-ng. For each turn it records, on the client's clock:

- `vad_to_delta_ms`: `speech_stopped` received -> first `response.output_text.delta`;
- `speech_end_to_delta_ms`: the last chunk with speech sent -> first delta (adds the VAD's
  silence duration, the wait that tells a pause from the end of a turn);

and the same prompt as a plain streamed chat completion (the turn's audio, cut where the
VAD cuts it, and the same history), sent before the realtime turn in odd repetitions and
after it in even ones, so that neither always finds the clip's features already in the
processor cache: `chat_ttft_ms` with a fresh `cache_salt` (cold KV cache) and, for the
second turn, `chat_warm_ttft_ms` without one. Prints medians and every record as JSON
(one process, sequential: concurrency 1).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import secrets
import statistics
import time
from typing import Any, cast

import numpy as np
import openai
import soundfile
import soxr

from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from audiotext.server.listening import cases
from audiotext.server.listening.speech import SAMPLE_RATE, render
from audiotext.server.realtime.vad import SpeechDetector, SpeechStarted, SpeechStopped

RATE = 24000
CHUNK_MS = 20


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="listening", help="built-in checkpoint")
    parser.add_argument("--reps", type=int, default=5, help="two-turn conversations")
    parser.add_argument("--silence-ms", type=int, default=500, help="the VAD's silence duration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-output-tokens", type=int, default=32,
        help="answer length at most (realtime and chat alike; random-weight checkpoints "
        "would otherwise answer until the context is full)",
    )  # fmt: skip
    parser.add_argument(
        "--block-size", type=int, default=32,
        help="KV-cache block size (vLLM's CPU default, 128, exceeds a short turn's prompt)",
    )  # fmt: skip


def pcm16(samples: np.ndarray) -> bytes:
    resampled = soxr.resample(samples, SAMPLE_RATE, RATE)
    return bytes((np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes())


def wav_b64(pcm: bytes) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.frombuffer(pcm, "<i2"), RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


async def spoken_turn(
    connection: Any, speech: bytes, silence_s: float
) -> tuple[dict[str, float], str, tuple[int, int]]:
    """Send one question in real time; its timings, its answer, and the VAD's cut (ms)."""
    marks: dict[str, float] = {}
    texts: list[str] = []
    cut: dict[str, int] = {}

    async def receive() -> None:
        async for event in connection:
            if event.type == "input_audio_buffer.speech_started":
                cut["start"] = event.audio_start_ms
            elif event.type == "input_audio_buffer.speech_stopped":
                marks["stopped"] = time.perf_counter()
                cut["end"] = event.audio_end_ms
            elif event.type == "response.output_text.delta":
                marks.setdefault("first_delta", time.perf_counter())
                texts.append(event.delta)
            elif event.type == "error":
                raise RuntimeError(event.error.message)
            elif event.type == "response.done":
                return

    receiver = asyncio.create_task(receive())
    audio = turn_audio(speech, int(silence_s * 1000))
    size = RATE * CHUNK_MS // 1000 * 2
    started = time.perf_counter()
    for n, i in enumerate(range(0, len(audio), size)):
        await connection.send(
            {"type": "input_audio_buffer.append",
             "audio": base64.b64encode(audio[i : i + size]).decode()}
        )  # fmt: skip
        if i + size >= len(speech) and "speech_end" not in marks:
            marks["speech_end"] = time.perf_counter()
        # Real time: chunk n leaves at n x 20 ms.
        await asyncio.sleep(max(0.0, started + (n + 1) * CHUNK_MS / 1000 - time.perf_counter()))
    await receiver
    timings = {
        "vad_to_delta_ms": (marks["first_delta"] - marks["stopped"]) * 1000,
        "speech_end_to_delta_ms": (marks["first_delta"] - marks["speech_end"]) * 1000,
    }
    return timings, "".join(texts), (cut["start"], cut["end"])


async def chat_ttft(
    client: openai.AsyncOpenAI, model: str, messages: list[Any], cold: bool, max_tokens: int
) -> float:
    extra = {"cache_salt": secrets.token_hex(8)} if cold else {}
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model, messages=messages, temperature=0, stream=True, max_tokens=max_tokens,
        extra_body=extra,
    )  # fmt: skip
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    assert first is not None, "the chat answer was empty"
    return (first - started) * 1000


def turn_audio(speech: bytes, silence_ms: int) -> bytes:
    """What one turn sends: the question, then the silence that ends it, and half a second."""
    return speech + bytes(int((silence_ms / 1000 + 0.5) * RATE) * 2)


def predicted_cuts(streams: list[bytes], silence_ms: int) -> list[tuple[int, int]]:
    """Where the server's VAD will cut these turns (its own detector, fed as it is fed)."""
    detector = SpeechDetector(RATE, 0.5, 300, silence_ms)
    found = []
    audio = b"".join(streams)
    size = RATE * CHUNK_MS // 1000 * 2
    for i in range(0, len(audio), size):
        found += detector.feed(audio[i : i + size])
    starts = [e.audio_start_ms for e in found if isinstance(e, SpeechStarted)]
    ends = [e.audio_end_ms for e in found if isinstance(e, SpeechStopped)]
    return list(zip(starts, ends, strict=True))


async def conversation(
    client: openai.AsyncOpenAI,
    model: str,
    questions: list[cases.Case],
    silence_ms: int,
    chat_first: bool,
    max_tokens: int,
) -> list[dict[str, Any]]:
    """One two-turn conversation; each turn's plain chat is sent before the realtime turn
    when `chat_first` (the realtime turn then finds the clip's features in the processor
    cache), after it otherwise (then the chat does)."""
    streams = [turn_audio(pcm16(render(q.clip)), silence_ms) for q in questions]
    cuts = predicted_cuts(streams, silence_ms)
    sent = b"".join(streams)
    records: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    async with client.realtime.connect(model=model) as connection:
        detection = {"type": "server_vad", "silence_duration_ms": silence_ms}
        audio_in = {"format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": detection}
        update = {"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"], "temperature": 0,
            "max_output_tokens": max_tokens, "audio": {"input": audio_in}}}  # fmt: skip
        await connection.send(cast(Any, update))
        for turn, stream in enumerate(streams):
            # The turn's audio exactly as the VAD cuts it (the session's clock spans all audio).
            start, end = cuts[turn]
            cut = sent[start * RATE // 1000 * 2 : end * RATE // 1000 * 2]
            part = {"type": "input_audio", "input_audio": {"data": wav_b64(cut), "format": "wav"}}
            history.append({"role": "user", "content": [part]})
            if chat_first:
                cold = await chat_ttft(client, model, history, True, max_tokens)
            speech = stream[: len(stream) - int((silence_ms / 1000 + 0.5) * RATE) * 2]
            timings, text, heard = await spoken_turn(connection, speech, silence_ms / 1000)
            if heard != cuts[turn]:
                raise RuntimeError(f"the server cut turn {turn + 1} at {heard}, not {cuts[turn]}")
            if not chat_first:
                cold = await chat_ttft(client, model, history, True, max_tokens)
            record: dict[str, Any] = {"turn": turn + 1, "chat_first": chat_first, **timings,
                                      "chat_ttft_ms": cold}  # fmt: skip
            if turn:
                record["chat_warm_ttft_ms"] = await chat_ttft(
                    client, model, history, False, max_tokens
                )
            records.append(
                {k: round(v, 1) if isinstance(v, float) else v for k, v in record.items()}
            )
            history.append({"role": "assistant", "content": text})
    return records


def main(args: argparse.Namespace) -> dict[str, Any]:
    questions = cases.cases("held_out", 2 * (args.reps + 1), seed=args.seed, kinds=("chat",))
    config = ServerConfig(
        model=args.size, port=free_port(), dtype="float32",
        extra_args=("--block-size", str(args.block_size)),
    )  # fmt: skip
    records: list[dict[str, Any]] = []
    with ServerProcess(config) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)

        async def run() -> None:
            # The first conversation warms the server up (compilation, caches) and is dropped.
            await conversation(
                client, args.size, questions[:2], args.silence_ms, False, args.max_output_tokens
            )
            for rep in range(args.reps):
                pair = questions[2 * rep + 2 : 2 * rep + 4]
                chat_first = rep % 2 == 1  # alternate: neither side always finds warm caches
                for record in await conversation(client, args.size, pair, args.silence_ms,
                                                 chat_first, args.max_output_tokens):  # fmt: skip
                    records.append({"rep": rep, **record})

        asyncio.run(run())

    def median(turn: int, key: str) -> float:
        return round(float(statistics.median(r[key] for r in records if r["turn"] == turn)), 1)

    summary = {
        "turn1_vad_to_delta_ms": median(1, "vad_to_delta_ms"),
        "turn1_speech_end_to_delta_ms": median(1, "speech_end_to_delta_ms"),
        "turn1_chat_ttft_ms": median(1, "chat_ttft_ms"),
        "turn2_vad_to_delta_ms": median(2, "vad_to_delta_ms"),
        "turn2_chat_cold_ttft_ms": median(2, "chat_ttft_ms"),
        "turn2_chat_warm_ttft_ms": median(2, "chat_warm_ttft_ms"),
    }
    summary["turn1_ratio_to_chat"] = round(
        summary["turn1_vad_to_delta_ms"] / summary["turn1_chat_ttft_ms"], 2
    )
    summary["turn2_ratio_to_cold"] = round(
        summary["turn2_vad_to_delta_ms"] / summary["turn2_chat_cold_ttft_ms"], 2
    )
    result = {"config": vars(args), "summary": summary, "records": records}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    main(parser.parse_args())
