"""The client commands as people run them, against the session's real server.

`audiotext ask` (batch interrupted and resumed, stdin, sampling flags, errors),
`transcribe`, `translate`, `models`, `health`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from audiotext.client import AudioTextClient
from audiotext.server.launcher import ServerProcess
from tests.conftest import DATA

SHORT = DATA / "speech_short.flac"
CLI = [sys.executable, "-m", "audiotext.server.cli"]


def audiotext(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, *args],
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    return result


def at(server: ServerProcess, *args: str) -> list[str]:
    return [*args, "--base-url", server.base_url]


def engine_metrics(server: ServerProcess) -> dict[str, float]:
    """Finished and running request counts from vLLM's /metrics."""
    text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10).text

    def total(name: str, labels: str = "") -> float:
        pattern = rf"^vllm:{name}\{{([^}}]*)\}} (\S+)$"
        return sum(
            float(value) for found, value in re.findall(pattern, text, re.M) if labels in found
        )

    return {
        "finished": total("request_success_total", 'finished_reason="length"')
        + total("request_success_total", 'finished_reason="stop"'),
        "running": total("num_requests_running") + total("num_requests_waiting"),
    }


def lines_of(path: Path) -> list[dict[str, Any]]:
    """The JSON lines written so far (a line being written is not counted yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n")]  # fmt: skip


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_interrupted_batch_keeps_every_answer_and_resume_finishes_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    shutil.copy(SHORT, tmp_path / "clip.flac")
    short = {"max_new_tokens": 4}
    # Three slow requests fill all three slots once the first six are answered, so the
    # interrupt finds them in flight and nothing else running.
    slow = {"max_new_tokens": 384, "ignore_eos": True}
    rows = [
        {
            "audio": "clip.flac",
            "text": f"Question {i}?",
            "parameters": slow if 6 <= i < 9 else short,
        }
        for i in range(14)
    ]
    batch, out = tmp_path / "batch.jsonl", tmp_path / "out.jsonl"
    write_jsonl(batch, rows)
    command = [*CLI, *at(server, "ask", "--batch", str(batch), "--output", str(out))]
    command += ["--concurrency", "3", "--temperature", "0"]
    before = engine_metrics(server)

    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(lines_of(out)) < 6:
        assert proc.poll() is None and time.monotonic() < deadline, "batch ended early"
        time.sleep(0.05)
    while engine_metrics(server)["running"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 130, stderr
    written = lines_of(out)
    assert f"interrupted: {len(written)} of 14 written to {out}" in stderr
    assert [r["index"] for r in written] == list(range(6))
    assert all(r["generated_text"] for r in written)
    after = engine_metrics(server)
    # Every request the engine finished is in the file: none was lost.
    assert after["finished"] - before["finished"] == len(written)
    # The slow requests in flight were cancelled, not left running for seconds.
    deadline = time.monotonic() + 5
    while engine_metrics(server)["running"] > 0:
        assert time.monotonic() < deadline, "requests kept running after the interrupt"
        time.sleep(0.1)

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 6 of 14 already in" in resumed.stderr
    final = lines_of(out)
    assert sorted(r["index"] for r in final) == list(range(14))  # each once: no duplicate
    assert final[:6] == written
    # Each line answers its own request: the SDK gives the same greedy answers.
    with AudioTextClient(base_url=server.base_url) as sdk:
        for i in (0, 9, 13):
            row = next(r for r in final if r["index"] == i)
            expected = sdk.generate(
                {"audio": str(tmp_path / "clip.flac"), "text": f"Question {i}?"},
                max_new_tokens=4,
                temperature=0,
            )
            assert row["generated_text"] == expected["generated_text"]
    assert len(next(r for r in final if r["index"] == 7)["generated_text"]) > len(
        final[0]["generated_text"]
    )


def test_batch_refuses_to_overwrite_results_and_resume_needs_an_output(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"index": 0, "audio": "x", "generated_text": "kept"}\n')
    refused = audiotext(*at(server, "ask", "--batch", str(DATA), "--output", str(out)))
    assert refused.returncode == 2
    assert "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert "kept" in out.read_text()
    assert audiotext(*at(server, "ask", "--batch", str(DATA), "--resume")).returncode == 2
