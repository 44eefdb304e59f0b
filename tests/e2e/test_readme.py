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
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (argv, result.stderr)
    return result.stdout


def test_python_examples(server: ServerProcess) -> None:
    sdk, batch, openai_sdk = request_examples("python")
    for example in (sdk, openai_sdk):
        out = run([sys.executable, "-c", aimed_at(example, server)])
        assert out.startswith("{'generated_text': '")
        assert out.strip() != "{'generated_text': ''}"
    lines = run([sys.executable, "-c", aimed_at(batch, server)]).splitlines()
    assert len(lines) == 4
    assert all(line.startswith("{'generated_text': '") for line in lines)


def test_audiotext_ask_examples(server: ServerProcess, tmp_path: Path) -> None:
    block = next(b for b in code_blocks("bash") if "audiotext ask" in b)
    for line in block.strip().splitlines():
        argv = shlex.split(line.replace("results.jsonl", str(tmp_path / "results.jsonl")))
        assert argv[0] == ".venv/bin/audiotext"
        cli = [sys.executable, "-m", "audiotext.server.cli", *argv[1:]]
        out = run([*cli, "--base-url", server.base_url, "--max-new-tokens", "8"])
        assert out.strip() or (tmp_path / "results.jsonl").read_text().strip()


def test_curl_examples(server: ServerProcess) -> None:
    task, transcription, chat = request_examples("bash")
    answer = json.loads(run(["bash", "-c", aimed_at(task, server)]))
    assert answer["generated_text"] and answer["audio"]["windows"] == 1
    completion = json.loads(run(["bash", "-c", aimed_at(chat, server)]))
    assert completion["choices"][0]["message"]["content"]
    assert json.loads(run(["bash", "-c", aimed_at(transcription, server)]))["text"]
