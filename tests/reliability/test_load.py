"""Overload, abandoned streams and a steady soak against the guarded server."""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil

from audiotext.server.launcher import ServerProcess
from tests.conftest import DecodeLog, b64, load_clip, speech_of, wav_bytes
from tests.metrics import scrape

from .conftest import API_KEY, MAX_IN_FLIGHT, REPORT

SOAK_MINUTES = float(os.environ.get("AUDIOTEXT_SOAK_MINUTES", "2"))
AUDIO = b64(wav_bytes(load_clip("1s")))
# Tokens of the requests that hold the audio queue while a flood arrives.
HOLD_TOKENS = 4000


def request(tokens: int, stream: bool = False) -> dict[str, Any]:
    content = [{"type": "input_audio", "input_audio": {"data": AUDIO, "format": "wav"}}]
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": [*content, {"type": "text", "text": "Talk."}]}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
    }


def engine_counts(http: httpx.Client) -> tuple[float, float]:
    metrics = http.get("/metrics").text
    running = sum(
        float(v) for v in re.findall(r"^vllm:num_requests_running\{.*\} (\S+)$", metrics, re.M)
    )
    waiting = sum(
        float(v) for v in re.findall(r"^vllm:num_requests_waiting\{.*\} (\S+)$", metrics, re.M)
    )
    return running, waiting


def wait_for_idle(http: httpx.Client, within_s: float = 30) -> tuple[float, float]:
    deadline = time.monotonic() + within_s
    counts = engine_counts(http)
    while counts != (0.0, 0.0) and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = engine_counts(http)
    return counts


def test_overload_sheds_with_503_and_loses_no_accepted_request(http: httpx.Client) -> None:
    def one(_: int) -> httpx.Response:
        return http.post("/v1/chat/completions", json=request(64))

    before = scrape(http)
    with ThreadPoolExecutor(max_workers=5 * MAX_IN_FLIGHT) as pool:
        replies = list(pool.map(one, range(5 * MAX_IN_FLIGHT)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 503}, statuses
    shed = [r for r in replies if r.status_code == 503]
    served = [r for r in replies if r.status_code == 200]
    assert shed and served
    assert (scrape(http) - before).refused() == {"overload": len(shed)}
    assert all(r.headers["retry-after"] == "1" for r in shed)
    assert all(r.json()["usage"]["completion_tokens"] == 64 for r in served)
    REPORT.append(
        f"overload: {len(replies)} at once, {len(served)} served whole, {len(shed)} got 503"
    )


def decoded(http: httpx.Client) -> float:
    """Clips the API server has decoded so far (its `audiotext_audio_decodes_total`)."""
    metrics = http.get("/metrics").text
    return float(re.findall(r"^audiotext_audio_decodes_total (\S+)$", metrics, re.M)[0])


def with_audio(body: dict[str, Any], audio: str) -> dict[str, Any]:
    parts = [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]
    text = body["messages"][0]["content"][-1]
    return {**body, "messages": [{"role": "user", "content": [*parts, text]}]}


def test_a_flood_of_large_clips_on_a_full_queue_is_shed_without_decoding(
    http: httpx.Client, decodes: DecodeLog
) -> None:
    # Two 20 s clips fill 40 of the 50 queued seconds while they generate; then a flood of
    # 30 s clips (16-bit WAV, 1.3 MB of base64 each) arrives, with room in the request count.
    # The holders decode for tens of seconds, so they outlast the flood on a busy machine.
    holding = with_audio(request(HOLD_TOKENS), b64(wav_bytes(speech_of(20), subtype="PCM_16")))
    flood = with_audio(request(4), b64(wav_bytes(speech_of(30), subtype="PCM_16")))
    with ThreadPoolExecutor(max_workers=2 + MAX_IN_FLIGHT // 2) as pool:
        holders = [pool.submit(http.post, "/v1/chat/completions", json=holding) for _ in range(2)]
        deadline = time.monotonic() + 60
        while engine_counts(http)[0] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine_counts(http)[0] == 2, "the holding requests did not start"
        mark, before, counted = decodes.mark(), decoded(http), scrape(http)
        shed = list(pool.map(lambda _: http.post("/v1/chat/completions", json=flood), range(24)))
        flood_decodes, flood_metric = decodes.since(mark), decoded(http) - before
        assert engine_counts(http)[0] == 2, "the holders ended before the flood: make them longer"
        held = [f.result() for f in holders]
    assert [r.status_code for r in shed] == [503] * len(shed)
    assert (scrape(http) - counted).refused() == {"overload": len(shed)}
    assert all("--max-queued-audio-s" in r.json()["error"]["message"] for r in shed)
    assert all(r.headers["retry-after"] == "1" for r in shed)
    # Refused from each file's header: no process of the server decoded any of them.
    assert flood_decodes == [] and flood_metric == 0
    assert [r.status_code for r in held] == [200, 200]
    assert all(r.json()["usage"]["completion_tokens"] == HOLD_TOKENS for r in held)
    assert wait_for_idle(http) == (0.0, 0.0)
    REPORT.append(f"overload: {len(shed)} clips of 30 s on a full audio queue, all 503, "
                  f"{len(flood_decodes)} decoded")  # fmt: skip


def test_abandoned_streams_release_the_engine(http: httpx.Client) -> None:
    def abandon(_: int) -> int:
        with http.stream("POST", "/v1/chat/completions", json=request(400, stream=True)) as events:
            lines = events.iter_lines()
            for _ in range(3):
                next(lines)
            return events.status_code

    with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT // 2) as pool:
        statuses = list(pool.map(abandon, range(100)))
    assert statuses == [200] * 100
    assert wait_for_idle(http) == (0.0, 0.0)


def tree_rss_mb(server: ServerProcess) -> float:
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def test_soak_keeps_memory_flat_and_errors_at_zero(
    http: httpx.Client, guarded: ServerProcess
) -> None:
    warm_up_s, duration_s = 20.0, SOAK_MINUTES * 60

    def client(_: int) -> list[int]:
        statuses = []
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            statuses.append(http.post("/v1/chat/completions", json=request(16)).status_code)
        return statuses

    with ThreadPoolExecutor(max_workers=4) as pool:
        running = [pool.submit(client, i) for i in range(4)]
        time.sleep(warm_up_s)
        start_mb = tree_rss_mb(guarded)
        statuses = [s for f in running for s in f.result()]
    growth = tree_rss_mb(guarded) - start_mb
    REPORT.append(
        f"soak: {len(statuses)} requests in {duration_s:.0f} s, RSS growth {growth:.1f} MB"
    )
    assert statuses and set(statuses) == {200}
    assert growth < 100
    assert (
        httpx.get(
            guarded.base_url.removesuffix("/v1") + "/health",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).status_code
        == 200
    )
