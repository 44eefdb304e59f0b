"""The README's request examples run as written, against the session's real server."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from audiotext.server.cli import parse_args
from audiotext.server.config import ServerConfig, config_from_args
from audiotext.server.launcher import ServerProcess
from tests.reliability.test_faults import data_parallel

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
    return completed(argv).stdout


def completed(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # As the README says: LiteLLM is told it is offline, or it downloads its price list.
    env = {**os.environ, "LITELLM_OFFLINE_MODE": "true"}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, (argv, result.stderr)
    return result


# Python examples that print one answer, by a line each contains: audiotext's SDK, the
# OpenAI SDK, Hugging Face's InferenceClient, LiteLLM.
ONE_ANSWER = ("client = AudioTextClient(", "from openai import", "InferenceClient(", "litellm.")


def test_python_examples(server: ServerProcess) -> None:
    blocks = request_examples("python")
    one_answer = [example(blocks, marker) for marker in ONE_ANSWER]
    batch = example(blocks, "generate_batch")
    timed = example(blocks, 'response_format="verbose_json"')
    realtime = [example(blocks, "client.realtime.connect("), example(blocks, "client.realtime(")]
    assert sorted([*one_answer, batch, timed, *realtime]) == sorted(blocks), (
        "a README example no test runs"
    )
    for block in realtime:  # a spoken turn, answered over /v1/realtime
        printed = ast.literal_eval(run([sys.executable, "-c", aimed_at(block, server)]))
        assert printed["generated_text"]
        # Answered, not cut off by barge-in or refused (tiny talks until max_output_tokens).
        assert printed.get("status", "completed") in ("completed", "incomplete")
    for block in one_answer:
        out = run([sys.executable, "-c", aimed_at(block, server)])
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


def test_data_parallel_command_is_the_one_the_reliability_tests_run() -> None:
    (block,) = [b for b in code_blocks("bash") if "--data-parallel-address" in b]
    env, *argv = shlex.split(block.replace("\\\n", " "))
    assert env == "VLLM_HOST_IP=127.0.0.1" and argv[:2] == ["audiotext", "serve"]
    args, vllm_flags = parse_args(argv[1:])
    documented = config_from_args(args, vllm_flags, environ={})
    tested = data_parallel(ServerConfig(model="tiny"))
    assert documented.extra_args == tested.extra_args
    assert documented.kv_cache_gib == tested.kv_cache_gib
    assert documented.cpu_cores.count("|") == tested.cpu_cores.count("|") == 1


def serve_commands() -> list[list[str]]:
    """Every `audiotext serve` command line in the README's shell blocks, as arguments."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            argv = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # no VAR=value
            if argv[:2] in (["audiotext", "serve"], [".venv/bin/audiotext", "serve"]):
                commands.append(argv[1:])
    return commands


def test_serve_commands_parse_with_audiotext_and_vllm() -> None:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from audiotext.server.config import to_vllm

    commands = serve_commands()
    assert len(commands) >= 8
    for argv in commands:
        args, vllm_flags = parse_args(argv)
        config = config_from_args(args, vllm_flags, environ={})
        parser = make_arg_parser(FlexibleArgumentParser())
        parser.parse_args(list(to_vllm(config).argv))  # exits on a flag vLLM lacks
