"""Load generator for any OpenAI-compatible audio chat server, one record per request.

Closed loop (`concurrency` clients, each sending its next request when the last one
ends) or open loop (Poisson arrivals at `rate` requests/s). Requests stream, so each
record has time to first token, inter-token latencies and end-to-end latency; failures
are recorded, not raised. `summarize` turns records into p50/p90/p99 and throughputs.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import openai
from tqdm import tqdm

from audiotext.client._audio import encode_wav


@dataclass(frozen=True)
class WorkItem:
    """One request of a workload: 16 kHz mono audio, an instruction, an output length."""

    samples: np.ndarray
    text: str
    max_tokens: int

    @property
    def audio_seconds(self) -> float:
        return len(self.samples) / 16000


@dataclass
class Record:
    """What happened to one request."""

    start_s: float
    audio_seconds: float
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int = 0
    error: str | None = None


async def run_load(
    client: openai.AsyncOpenAI,
    model: str,
    items: Sequence[WorkItem],
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[Record], float]:
    """Send every item once; returns the records and the wall time in seconds.

    Exactly one of `concurrency` (closed loop) or `rate` (open loop, Poisson) is given.
    """
    if (concurrency is None) == (rate is None):
        raise ValueError("give either concurrency (closed loop) or rate (open loop)")
    payloads = [base64.b64encode(encode_wav(item.samples)).decode() for item in items]
    bar = tqdm(total=len(items), disable=not progress, unit="req", leave=False)
    start = time.perf_counter()

    async def one(i: int) -> Record:
        try:
            return await _request(client, model, items[i], payloads[i], start)
        finally:
            bar.update(1)

    if concurrency is not None:
        queue = iter(range(len(items)))
        records: dict[int, Record] = {}

        async def worker() -> None:
            for i in queue:
                records[i] = await one(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        ordered = [records[i] for i in range(len(items))]
    else:
        assert rate is not None
        arrivals = random.Random(seed)
        tasks = []
        for i in range(len(items)):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(arrivals.expovariate(rate))
        ordered = list(await asyncio.gather(*tasks))
    bar.close()
    return ordered, time.perf_counter() - start


def summarize(records: Sequence[Record], wall_s: float) -> dict[str, Any]:
    """Percentiles of latency and throughput over a run's records."""
    ok = [r for r in records if r.error is None]

    def percentiles(values: Sequence[float]) -> dict[str, float | None]:
        if not values:
            return {"p50": None, "p90": None, "p99": None, "mean": None}
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "mean": float(np.mean(values)),
        }

    tpot = [
        (r.e2e_s - r.ttft_s) / (r.output_tokens - 1)
        for r in ok
        if r.e2e_s is not None and r.ttft_s is not None and r.output_tokens > 1
    ]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "error_rate": (len(records) - len(ok)) / len(records) if records else 0.0,
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s else 0.0,
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / wall_s if wall_s else 0.0,
        "audio_seconds_per_s": sum(r.audio_seconds for r in ok) / wall_s if wall_s else 0.0,
        "ttft_s": percentiles([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_s": percentiles(tpot),
        "itl_s": percentiles([gap for r in ok for gap in r.itl_s]),
        "e2e_s": percentiles([r.e2e_s for r in ok if r.e2e_s is not None]),
    }


def records_as_dicts(records: Sequence[Record]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


async def _request(
    client: openai.AsyncOpenAI, model: str, item: WorkItem, payload: str, t0: float
) -> Record:
    sent = time.perf_counter()
    record = Record(start_s=sent - t0, audio_seconds=item.audio_seconds)
    last = sent
    try:
        audio = {"type": "input_audio", "input_audio": {"data": payload, "format": "wav"}}
        messages: Any = [{"role": "user", "content": [audio, {"type": "text", "text": item.text}]}]
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=item.max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                if record.ttft_s is None:
                    record.ttft_s = now - sent
                else:
                    record.itl_s.append(now - last)
                last = now
            if chunk.usage is not None:
                record.prompt_tokens = chunk.usage.prompt_tokens
                record.output_tokens = chunk.usage.completion_tokens
        record.e2e_s = time.perf_counter() - sent
    except openai.OpenAIError as e:
        record.error = f"{type(e).__name__}: {e}"
    return record
