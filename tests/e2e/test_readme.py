"""The README's request examples run as written, against the session's real server."""

from __future__ import annotations

import re
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


def test_python_example(server: ServerProcess) -> None:
    [example] = request_examples("python")
    result = subprocess.run(
        [sys.executable, "-c", aimed_at(example, server)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("{'generated_text': '")
    assert result.stdout.strip() != "{'generated_text': ''}"


def test_curl_example(server: ServerProcess) -> None:
    [example] = request_examples("bash")
    result = subprocess.run(
        ["bash", "-c", aimed_at(example, server)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"finish_reason"' in result.stdout
    assert '"content":"' in result.stdout.replace(" ", "")
