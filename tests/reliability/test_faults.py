"""Lifecycle faults: SIGTERM drains in-flight work; a dead engine takes the server down."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import psutil
import pytest

from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from tests.conftest import left_alive, lower_priority, process_tree, running_server
from tests.metrics import parse

from .test_load import request as chat_body


def data_parallel(config: ServerConfig) -> ServerConfig:
    """Two engines (one core each), hence two API server processes on one port."""
    cores = sorted(os.sched_getaffinity(0))
    half = len(cores) // 2
    return replace(
        config,
        cpu_cores="|".join(",".join(map(str, c)) for c in (cores[:half], cores[half:])),
        kv_cache_gib=1,
        extra_args=("--data-parallel-size", "2", "--data-parallel-address", "127.0.0.1"),
    )


@pytest.fixture(params=["one API server", "two API servers", "data parallel"])
def own_server(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    config = ServerConfig(model="tiny", port=free_port(), enforce_eager=True, drain_timeout_s=60)
    if request.param == "two API servers":
        config = replace(config, extra_args=("--api-server-count", "2"))
    if request.param == "data parallel":
        config = data_parallel(config)
        monkeypatch.setenv("VLLM_HOST_IP", "127.0.0.1")  # engines talk over loopback only
    with running_server(config, tmp_path) as server:
        assert server.proc is not None
        lower_priority(server.proc.pid)  # the test's probes answer on time, not seconds late
        yield server


# Tokens of the answer to the request in flight at SIGTERM, all generated while draining.
LONG = 256

# HTTP-serving processes per mode: vLLM's process itself, or the API servers it starts.
API_SERVERS = {"one API server": 1, "two API servers": 2, "data parallel": 2}


def api_servers(server: ServerProcess) -> list[psutil.Process]:
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    children = [
        p for p in root.children(recursive=True) if "APIServer" in p.name() + " ".join(p.cmdline())
    ]
    return children or [psutil.Process(server.api_server_pid)]


def asked_anew(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """`url` on a new connection each time, as a client that retries a dropped connection
    (the OpenAI SDK does) asks it: up to 5 times."""
    for _ in range(4):
        try:
            return httpx.request(method, url, timeout=30, **kwargs)
        except httpx.TransportError:
            time.sleep(0.2)
    return httpx.request(method, url, timeout=30, **kwargs)


def base(server: ServerProcess) -> str:
    return server.base_url.removesuffix("/v1")


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(
    own_server: ServerProcess, request: pytest.FixtureRequest
) -> None:
    assert own_server.proc is not None
    http = httpx.Client(base_url=base(own_server), timeout=120)
    # Every API server process answers (several with --api-server-count or data parallel).
    with ThreadPoolExecutor(max_workers=4) as pool:
        warm = list(
            pool.map(lambda _: http.post("/v1/chat/completions", json=chat_body(4)), range(8))
        )
    assert [r.status_code for r in warm] == [200] * 8
    # Each scrape, whichever API server answers it (a new connection each), counts every
    # process's decodes: the processes share one Prometheus multiprocess folder.
    scrapes = [httpx.get(base(own_server) + "/metrics", timeout=30) for _ in range(6)]
    assert [parse(r.text).value("audiotext_audio_decodes_total") for r in scrapes] == [8.0] * 6
    assert len(api_servers(own_server)) == API_SERVERS[request.node.callspec.params["own_server"]]
    # In flight at the signal, however fast the engine and however starved this process: a
    # request sent but for the last byte of its body (the server counts it from its first
    # line), finished only once the server drains; its whole answer is generated then.
    release = threading.Event()
    body = json.dumps(chat_body(LONG)).encode()

    def held_body() -> Iterator[bytes]:
        yield body[:-1]
        release.wait(120)
        yield body[-1:]

    results: list[httpx.Response] = []
    headers = {"content-type": "application/json"}
    worker = threading.Thread(
        target=lambda: results.append(
            http.post("/v1/chat/completions", content=held_body(), headers=headers)
        )
    )
    worker.start()
    time.sleep(1)  # the server reads the request's head
    processes = process_tree(own_server.proc.pid)
    os.kill(own_server.proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    # Draining: not ready, and new work is refused with a retry hint, not a 500. A new
    # client asks (a fresh connection each): an idle API server may already have closed
    # its kept-alive connections, as servers do when they stop; the port still answers.
    # With several API servers, an idle one that is exiting can drop a connection it had
    # just accepted; a client that retries it (the OpenAI SDK does) gets the 503.
    health = asked_anew("GET", base(own_server) + "/health")
    refused = asked_anew("POST", base(own_server) + "/v1/chat/completions", json=chat_body(4))
    assert not results, "the request in flight was answered before its body was sent"
    release.set()
    worker.join(timeout=120)
    assert health.status_code == 503
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    # The request in flight is served whole, by the engine, during the drain.
    assert results and results[0].status_code == 200, results
    assert results[0].json()["usage"]["completion_tokens"] == LONG
    assert own_server.proc.wait(timeout=60) == 0
    assert left_alive(processes) == []


def test_dead_engine_fails_health_and_exits_non_zero(own_server: ServerProcess) -> None:
    assert own_server.proc is not None
    engines = [
        p for p in psutil.Process(own_server.proc.pid).children(recursive=True)
        if "EngineCore" in " ".join(p.cmdline()) or p.name().startswith("VLLM::EngineCore")
    ]  # fmt: skip
    assert engines
    for engine in engines:
        engine.kill()
    unhealthy = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and own_server.proc.poll() is None:
        try:
            unhealthy = httpx.get(base(own_server) + "/health", timeout=2).status_code
        except httpx.TransportError:
            unhealthy = -1  # no longer listening
        if unhealthy != 200:
            break
        time.sleep(0.2)
    assert unhealthy != 200
    assert own_server.proc.wait(timeout=60) != 0
