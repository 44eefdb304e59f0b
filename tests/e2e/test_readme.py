"""The README's request examples run as written, against the session's real server."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from audiotext.server.launcher import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
README_URL = "http://localhost:8000"


def code_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def aimed_at(block: str, server: ServerProcess) -> str:
    assert README_URL in block
    return block.replace(README_URL, server.base_url.removesuffix("/v1"))


def request_examples(language: str) -> list[str]:
    return [b for b in code_blocks(language) if README_URL in b]


def run(argv: list[str]) -> str:
    return completed(argv).stdout


def completed(argv: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (argv, result.stderr)
    return result


def test_python_examples(server: ServerProcess) -> None:
    sdk, batch, timed, openai_sdk = request_examples("python")
    for example in (sdk, openai_sdk):
        out = run([sys.executable, "-c", aimed_at(example, server)])
        assert out.startswith("{'generated_text': '")
        assert out.strip() != "{'generated_text': ''}"
    lines = run([sys.executable, "-c", aimed_at(batch, server)]).splitlines()
    assert len(lines) == 4
    assert all(line.startswith("{'generated_text': '") for line in lines)
    segment, srt = run([sys.executable, "-c", aimed_at(timed, server)]).split("\n", 1)
    assert re.match(r"^  0\.00- 2\d\.\d\d ", segment)  # the 25 s clip: one window
    assert srt.startswith("1\n00:00:00,000 --> 00:00:06,")


CLIENT_COMMANDS = ("ask", "transcribe", "translate", "models", "health")


def shell_examples() -> list[str]:
    """The lines of the README's blocks of client commands (`.venv/bin/audiotext ask ...`)."""
    return [
        line
        for block in code_blocks("bash")
        if all(
            line.startswith(".venv/bin/audiotext ") and line.split()[1] in CLIENT_COMMANDS
            for line in block.strip().splitlines()
        )
        for line in block.strip().splitlines()
    ]


def test_client_command_examples(server: ServerProcess, tmp_path: Path) -> None:
    lines = shell_examples()
    assert {line.split()[1] for line in lines} == set(CLIENT_COMMANDS)
    results = tmp_path / "results.jsonl"
    cli = f"{shlex.quote(sys.executable)} -m audiotext.server.cli"
    for line in lines:
        command = line.replace(".venv/bin/audiotext", cli).replace("results.jsonl", str(results))
        command += f" --base-url {server.base_url}"
        if line.split()[1] == "ask":
            command += " --max-new-tokens 8"  # short answers: the examples' shape is the point
        result = completed(["bash", "-c", command])
        assert result.stdout.strip() or results.read_text().strip(), line
        if "--resume" in line:
            assert "resuming: " in result.stderr
        if " models" in line:
            assert result.stdout == "tiny\n"
        if " health" in line:
            assert result.stdout.startswith("ok: ")
        if "--format srt" in line:
            assert result.stdout.startswith("1\n00:00:00,000 --> 00:00:06,")


def test_curl_examples(server: ServerProcess) -> None:
    task, transcription, chat = request_examples("bash")
    answer = json.loads(run(["bash", "-c", aimed_at(task, server)]))
    assert answer["generated_text"] and answer["audio"]["windows"] == 1
    completion = json.loads(run(["bash", "-c", aimed_at(chat, server)]))
    assert completion["choices"][0]["message"]["content"]
    assert json.loads(run(["bash", "-c", aimed_at(transcription, server)]))["text"]
