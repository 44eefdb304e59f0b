"""Load generator for any OpenAI-compatible audio chat server, one record per request.

Closed loop (`concurrency` clients, each sending its next request when the last one
ends) or open loop (Poisson arrivals at `rate` requests/s). Requests stream, so each
record has time to first token, inter-token latencies and end-to-end latency; failures
are recorded, not raised. `summarize` turns records into p50/p90/p99 and throughputs.
A `Target` says where requests go: the chat endpoint of any OpenAI-compatible server,
or audiotext's task endpoint, and how the server is told to produce exactly
`max_tokens` tokens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
import httpx_sse
import numpy as np
import openai
from tqdm import tqdm

from audiotext.client.audio import encode_wav

REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class WorkItem:
    """One request of a workload: 16 kHz mono audio, an instruction, an output length."""

    samples: np.ndarray
    text: str
    max_tokens: int

    @property
    def audio_seconds(self) -> float:
        return len(self.samples) / 16000


@dataclass(frozen=True)
class Target:
    """Where requests go and how they ask for exactly `max_tokens` output tokens.

    Args:
        base_url: the server's OpenAI base URL (`http://host:port/v1`).
        model: model name to put in requests.
        endpoint: `chat` (`/v1/chat/completions`) or `task` (`/v1/audio-text-to-text`).
        length_control: `ignore_eos` (vLLM) or `min_new_tokens` (`transformers serve`).
    """

    base_url: str
    model: str
    endpoint: Literal["chat", "task"] = "chat"
    length_control: Literal["ignore_eos", "min_new_tokens"] = "ignore_eos"

    def length_fields(self, max_tokens: int) -> dict[str, Any]:
        if self.length_control == "ignore_eos":
            return {"ignore_eos": True}
        return {"generation_config": json.dumps({"min_new_tokens": max_tokens})}


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
    target: Target,
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
    client: Any
    send: Callable[[Any, Target, WorkItem, str, Record], Awaitable[None]]
    if target.endpoint == "chat":
        client = openai.AsyncOpenAI(
            base_url=target.base_url, api_key="EMPTY", max_retries=0, timeout=REQUEST_TIMEOUT_S
        )
        send = _chat_request
    else:
        # Unbounded pool, so the load is never queued on the client side.
        client = httpx.AsyncClient(
            base_url=target.base_url,
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        send = _task_request
    async with client:
        start = time.perf_counter()

        async def one(i: int) -> Record:
            sent = time.perf_counter()
            record = Record(start_s=sent - start, audio_seconds=items[i].audio_seconds)
            try:
                await send(client, target, items[i], payloads[i], record)
                record.e2e_s = time.perf_counter() - sent
            except (openai.OpenAIError, httpx.HTTPError, ValueError) as e:
                record.error = f"{type(e).__name__}: {e}"
            finally:
                bar.update(1)
            return record

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
        wall = time.perf_counter() - start
    bar.close()
    return ordered, wall


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


class _Timer:
    """Marks token arrivals on a record: the first sets TTFT, the rest inter-token gaps."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.sent = self.last = time.perf_counter()

    def token(self) -> None:
        now = time.perf_counter()
        if self.record.ttft_s is None:
            self.record.ttft_s = now - self.sent
        else:
            self.record.itl_s.append(now - self.last)
        self.last = now


async def _chat_request(
    client: Any, target: Target, item: WorkItem, payload: str, record: Record
) -> None:
    timer = _Timer(record)
    audio = {"type": "input_audio", "input_audio": {"data": payload, "format": "wav"}}
    messages: Any = [{"role": "user", "content": [audio, {"type": "text", "text": item.text}]}]
    stream = await client.chat.completions.create(
        model=target.model,
        messages=messages,
        max_tokens=item.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=target.length_fields(item.max_tokens),
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            timer.token()
        if chunk.usage is not None:
            record.prompt_tokens = chunk.usage.prompt_tokens
            record.output_tokens = chunk.usage.completion_tokens


async def _task_request(
    http: Any, target: Target, item: WorkItem, payload: str, record: Record
) -> None:
    timer = _Timer(record)
    body = {
        "audio": payload,
        "text": item.text,
        "model": target.model,
        "stream": True,
        "parameters": {
            "max_new_tokens": item.max_tokens,
            "temperature": 0,
            **target.length_fields(item.max_tokens),
        },
    }
    async with httpx_sse.aconnect_sse(http, "POST", "/audio-text-to-text", json=body) as source:
        source.response.raise_for_status()
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                break
            data = event.json()
            if "error" in data:
                raise ValueError(f"error event: {data['error']}")
            if data.get("delta"):
                timer.token()
            if "usage" in data:
                record.prompt_tokens = data["usage"].get("prompt_tokens")
                record.output_tokens = data["usage"].get("completion_tokens", 0)
