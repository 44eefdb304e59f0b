"""Data parallel across nodes, on loopback: a `--headless` engine node and an API server
node, each `audiotext serve` with one engine on one core, as the README's multi-node
commands run them (one machine stands in for two; the engines talk over 127.0.0.1)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import pytest

from audiotext.server.config import ServerConfig, to_cli_args
from audiotext.server.launcher import free_port
from tests.conftest import DATA, left_alive, lower_priority, process_tree, running_server
from tests.metrics import parse

TOKENS = 8
REQUESTS = 8


def data_parallel_flags(rpc_port: int) -> tuple[str, ...]:
    return (
        "--data-parallel-size", "2", "--data-parallel-size-local", "1",
        "--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port", str(rpc_port),
    )  # fmt: skip


class HeadlessNode:
    """`audiotext serve --headless` as a child; `ready` is set by its `ready:` line."""

    def __init__(self, config: ServerConfig, log: IO[str]) -> None:
        args, env = to_cli_args(config)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audiotext.server.cli", "serve", *args],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.log = log
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.log.write(line)
            if line.startswith("ready:"):
                self.ready.set()


@pytest.fixture
def nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    cores = sorted(os.sched_getaffinity(0))
    rpc_port = free_port()
    monkeypatch.setenv("VLLM_HOST_IP", "127.0.0.1")  # engines talk over loopback only
    common: dict[str, Any] = {"model": "tiny", "kv_cache_gib": 1, "enforce_eager": True}
    headless = ServerConfig(
        **common, cpu_cores=str(cores[-1]),
        extra_args=(*data_parallel_flags(rpc_port), "--data-parallel-start-rank", "1",
                    "--headless"),
    )  # fmt: skip
    head = ServerConfig(
        **common, port=free_port(), cpu_cores=str(cores[0]),
        extra_args=data_parallel_flags(rpc_port),
    )  # fmt: skip
    with (tmp_path / "headless.log").open("w") as log:
        node = HeadlessNode(headless, log)
        try:
            # The API server is ready only once every engine, the remote one too, has joined.
            with running_server(head, tmp_path) as server:
                assert server.proc is not None
                assert node.ready.wait(timeout=120), "".join(node.lines[-40:])
                lower_priority(server.proc.pid)
                lower_priority(node.proc.pid)
                yield server, node
        finally:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
                try:
                    node.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    node.proc.kill()


def test_a_headless_node_serves_its_share_and_both_stop_cleanly(nodes: Any) -> None:
    server, node = nodes
    assert "1 headless engine(s) serving the API server at 127.0.0.1:" in "".join(node.lines)
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    audio = base64.b64encode((DATA / "speech_short.flac").read_bytes()).decode()

    def ask(i: int) -> int:
        part = {"type": "input_audio", "input_audio": {"data": audio, "format": "flac"}}
        text = {"type": "text", "text": f"Question {i}: what does the person say?"}
        answer = client.chat.completions.create(
            model="tiny", max_tokens=TOKENS, temperature=0,
            messages=[{"role": "user", "content": [part, text]}],
        )  # fmt: skip
        assert answer.usage is not None
        return answer.usage.completion_tokens

    with ThreadPoolExecutor(REQUESTS) as pool:
        assert list(pool.map(ask, range(REQUESTS))) == [TOKENS] * REQUESTS
    # The API server counts each engine's finished requests: the remote engine is 1.
    scrape = parse(httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text)
    served = {
        engine: sum(
            value for (name, labels), value in scrape.samples.items()
            if name == "vllm:request_success_total" and ("engine", engine) in labels
        )
        for engine in ("0", "1")
    }  # fmt: skip
    assert served["0"] + served["1"] == REQUESTS and served["1"] > 0, served

    # The API server node stops first; the headless node serves nobody then and is stopped
    # by its operator: both exit 0 and leave no process behind.
    assert server.proc is not None
    head_tree, node_tree = process_tree(server.proc.pid), process_tree(node.proc.pid)
    assert server.stop() == 0
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=60) == 0, "".join(node.lines[-30:])
    assert not left_alive(head_tree + node_tree)
