"""A real server configured with tight limits, so that every guard can be reached."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from tests.conftest import running_server

API_KEY = "reliability-key"
MAX_SECONDS = 60
MAX_BODY_MB = 2
MAX_IN_FLIGHT = 8
MAX_QUEUED_AUDIO_S = 50


# Lines the suite reports at the end of the run (corpus size and results, load figures).
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("reliability")
        for line in REPORT:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "reliability":
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def media_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    (folder / "clip.flac").write_bytes(
        (Path(__file__).parents[1] / "data" / "speech_short.flac").read_bytes()
    )
    return folder


@pytest.fixture(scope="session")
def guarded(
    media_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    checkpoint.ensure_built("tiny")
    config = ServerConfig(
        model="tiny", port=free_port(), api_key=API_KEY, max_audio_seconds=MAX_SECONDS,
        max_body_mb=MAX_BODY_MB, max_queued_requests=MAX_IN_FLIGHT, media_folder=str(media_folder),
        max_queued_audio_s=MAX_QUEUED_AUDIO_S,
        enforce_eager=True,
    )  # fmt: skip
    with running_server(config, tmp_path_factory.mktemp("guarded")) as proc:
        yield proc


@pytest.fixture(scope="session")
def http(guarded: ServerProcess) -> Iterator[httpx.Client]:
    base = guarded.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        yield client


class Listener:
    """A TCP listener on loopback that counts connections: SSRF must never reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="session")
def listener() -> Iterator[Listener]:
    probe = Listener()
    yield probe
    probe.close()
