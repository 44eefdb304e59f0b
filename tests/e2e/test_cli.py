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
import pytest
import soundfile

from audiotext.client import AudioTextClient
from audiotext.server.launcher import ServerProcess, free_port
from tests.conftest import DATA

SHORT = DATA / "speech_short.flac"
CLI = [sys.executable, "-m", "audiotext.server.cli"]


def audiotext(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command, as a shell runs it; stdin is given as bytes (audio)."""
    result = subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


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


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_batch_keeps_every_answer_and_resume_finishes_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    shutil.copy(SHORT, tmp_path / "clip.flac")
    short = {"max_new_tokens": 4}
    # Three slow requests fill all three slots once the first six are answered, so the
    # interrupt finds them in flight and nothing else running. They are long enough
    # (seconds of decoding) that a loaded machine cannot finish one before it is seen.
    slow = {"max_new_tokens": 3072, "ignore_eos": True}
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

    # Ctrl-C as a terminal delivers it: a shell that starts the tests in the background
    # (nohup, `&` without job control) leaves SIGINT ignored, and children inherit that.
    proc = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while len(lines_of(out)) < 6:
        assert proc.poll() is None and time.monotonic() < deadline, "batch ended early"
        time.sleep(0.05)
    deadline = time.monotonic() + 60
    while (running := engine_metrics(server)["running"]) < 3:
        assert time.monotonic() < deadline, f"{running} of the 3 slow requests running"
        assert len(lines_of(out)) == 6, "a slow request finished before it was seen running"
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


def test_a_line_with_parameters_at_the_top_level_says_where_they_go(tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    write_jsonl(batch, [{"audio": str(SHORT)}, {"audio": str(SHORT), "max_new_tokens": 4}])
    result = audiotext("ask", "--batch", str(batch), "--base-url", "http://127.0.0.1:9/v1")
    assert result.returncode == 1
    assert f"{batch}:2: unknown request key: max_new_tokens" in result.stderr
    assert '"parameters"' in result.stderr


def test_ask_reads_stdin_and_takes_the_openai_sampling_flags(server: ServerProcess) -> None:
    flags = ["--max-tokens", "6", "--temperature", "0", "--top-p", "0.9", "--seed", "7"]
    flags += ["--stop", "zzz", "--timeout", "60"]
    from_file = audiotext(*at(server, "ask", str(SHORT), "Who?", *flags))
    from_stdin = audiotext(*at(server, "ask", "-", "Who?", *flags), stdin=SHORT.read_bytes())
    assert from_file.returncode == 0 and from_stdin.returncode == 0, from_stdin.stderr
    with AudioTextClient(base_url=server.base_url) as sdk:
        expected = sdk.generate(
            {"audio": str(SHORT), "text": "Who?"},
            max_tokens=6, temperature=0, top_p=0.9, seed=7, stop=["zzz"],
        )["generated_text"]  # fmt: skip
    assert from_file.stdout == from_stdin.stdout == expected + "\n"


def test_no_normalize_json_reports_the_seconds_the_server_heard(server: ServerProcess) -> None:
    result = audiotext(
        *at(server, "ask", str(SHORT), "--no-normalize", "--json", "--max-tokens", "2")
    )
    assert result.returncode == 0, result.stderr
    info = soundfile.info(SHORT)
    assert json.loads(result.stdout)["audio_seconds"] == pytest.approx(info.duration, abs=1e-3)


def test_ask_honours_the_servers_host_and_port_variables(server: ServerProcess) -> None:
    port = server.base_url.rsplit(":", 1)[1].removesuffix("/v1")
    env = {"AUDIOTEXT_HOST": "127.0.0.1", "AUDIOTEXT_PORT": port, "AUDIOTEXT_BASE_URL": ""}
    result = audiotext("ask", str(SHORT), "--max-tokens", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_errors_say_what_to_do(server: ServerProcess, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    refused = audiotext("ask", str(SHORT), "--base-url", closed)
    assert refused.returncode == 1
    assert f"cannot reach the server at {closed} (connection refused)" in refused.stderr
    assert "--base-url" in refused.stderr and "AUDIOTEXT_BASE_URL" in refused.stderr

    folder = audiotext(*at(server, "ask", str(DATA), "What?"))
    assert folder.returncode == 2 and f"--batch {DATA}" in folder.stderr

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not audio at all\n")
    not_audio = audiotext(*at(server, "ask", str(text_file)))
    assert not_audio.returncode == 1
    assert f"{text_file}: could not decode: not audio" in not_audio.stderr
    assert "Errno" not in not_audio.stderr

    bad_flag = audiotext(*at(server, "ask", str(SHORT), "--no-such-flag"))
    assert bad_flag.returncode == 2
    assert bad_flag.stderr.startswith("usage: audiotext ask")
    assert "unrecognized arguments: --no-such-flag" in bad_flag.stderr

    bad_value = audiotext(*at(server, "ask", str(SHORT), "--max-new-tokens", "0"))
    assert bad_value.returncode == 2
    assert "argument --max-new-tokens/--max-tokens: must be >= 1, not 0" in bad_value.stderr

    help_text = " ".join(audiotext("ask", "--help").stdout.split())
    assert "Visible to other users of this machine in `ps`" in help_text
    key_file = tmp_path / "key"
    key_file.write_text("EMPTY\n")
    keyed = audiotext(
        *at(server, "ask", str(SHORT), "--api-key-file", str(key_file), "--max-tokens", "2")
    )
    assert keyed.returncode == 0, keyed.stderr


def test_models_and_health(server: ServerProcess) -> None:
    models = audiotext(*at(server, "models"))
    assert (models.returncode, models.stdout) == (0, "tiny\n")
    assert json.loads(audiotext(*at(server, "models", "--json")).stdout)[0]["id"] == "tiny"
    health = audiotext(*at(server, "health"))
    assert health.returncode == 0 and health.stdout.startswith("ok: ")
    down = audiotext("health", "--base-url", f"http://127.0.0.1:{free_port()}/v1")
    assert down.returncode == 1 and "connection refused" in down.stderr


def test_transcribe_command_prints_each_format(server: ServerProcess) -> None:
    with AudioTextClient(base_url=server.base_url) as sdk:
        expected = sdk.transcribe(str(SHORT), response_format="verbose_json")
    assert not isinstance(expected, str)
    as_text = audiotext(*at(server, "transcribe", str(SHORT)))
    assert as_text.returncode == 0, as_text.stderr
    assert as_text.stdout == expected.text + "\n"
    srt = audiotext(*at(server, "transcribe", "-", "--format", "srt"), stdin=SHORT.read_bytes())
    [segment] = expected.segments
    assert srt.stdout.startswith(f"1\n00:00:00,000 --> 00:00:0{segment.end:.3f}".replace(".", ","))
    assert segment.text in srt.stdout
