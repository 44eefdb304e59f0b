"""The benchmark load generator against the real server (a smoke run, not a benchmark)."""

from __future__ import annotations

import asyncio

import pytest

from audiotext.benchmarks.loadgen import Target, WorkItem, run_load, summarize
from audiotext.server.launcher import ServerProcess
from tests.conftest import load_clip, speech_of

ITEMS = [
    WorkItem(load_clip("1s"), "What does the person say?", 8),
    WorkItem(speech_of(3), "Summarize.", 12),
] * 3


@pytest.mark.parametrize("endpoint", ["chat", "task"])
@pytest.mark.parametrize("mode", [{"concurrency": 2}, {"rate": 20.0}])
def test_every_request_is_recorded_with_its_timings(
    server: ServerProcess, mode: dict[str, float], endpoint: str
) -> None:
    target = Target(server.base_url, "tiny", endpoint=endpoint)  # type: ignore[arg-type]
    records, wall = asyncio.run(run_load(target, ITEMS, progress=False, **mode))  # type: ignore[arg-type]
    assert len(records) == len(ITEMS)
    for record, item in zip(records, ITEMS, strict=True):
        assert record.error is None
        assert record.output_tokens == item.max_tokens  # ignore_eos: exactly as asked
        assert record.ttft_s is not None and record.e2e_s is not None
        assert 0 < record.ttft_s <= record.e2e_s <= wall
        assert len(record.itl_s) <= item.max_tokens - 1
        assert record.audio_seconds == item.audio_seconds
    summary = summarize(records, wall)
    assert summary["errors"] == 0
    assert summary["requests_per_s"] == pytest.approx(len(ITEMS) / wall)
    assert summary["ttft_s"]["p50"] <= summary["e2e_s"]["p99"]


@pytest.mark.parametrize("endpoint", ["chat", "task"])
def test_errors_are_recorded_not_raised(server: ServerProcess, endpoint: str) -> None:
    target = Target(server.base_url, "no-such-model", endpoint=endpoint)  # type: ignore[arg-type]
    records, wall = asyncio.run(run_load(target, ITEMS[:2], concurrency=1, progress=False))
    assert all(r.error and "404" in r.error for r in records)
    assert summarize(records, wall)["error_rate"] == 1.0
