"""The README's request examples run as written, against the session's real server."""

from __future__ import annotations

import json
import os
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


def example(blocks: list[str], marker: str) -> str:
    """The one block that contains `marker`."""
    (block,) = [b for b in blocks if marker in b]
    return block


def run(argv: list[str]) -> str:
    # As the README says: LiteLLM is told it is offline, or it downloads its price list.
    env = {**os.environ, "LITELLM_OFFLINE_MODE": "true"}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, (argv, result.stderr)
    return result.stdout


# Python examples that print one answer, by a line each contains: audiotext's SDK, the
# OpenAI SDK, Hugging Face's InferenceClient, LiteLLM.
ONE_ANSWER = ("client = AudioTextClient(", "from openai import", "InferenceClient(", "litellm.")


def test_python_examples(server: ServerProcess) -> None:
    blocks = request_examples("python")
    one_answer = [example(blocks, marker) for marker in ONE_ANSWER]
    batch = example(blocks, "generate_batch")
    assert sorted([*one_answer, batch]) == sorted(blocks), "a README example no test runs"
    for block in one_answer:
        out = run([sys.executable, "-c", aimed_at(block, server)])
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
