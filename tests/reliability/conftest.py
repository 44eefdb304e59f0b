"""A real server configured with tight limits, so that every guard can be reached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from tests.conftest import DecodeLog, Listener, running_server

API_KEY = "reliability-key"
MAX_SECONDS = 60
MAX_BODY_MB = 2
MAX_IN_FLIGHT = 8
MAX_QUEUED_AUDIO_S = 50
# Realtime sessions: few at once, short idle time and length, so each limit can be reached.
REALTIME_SESSIONS = 3
REALTIME_IDLE_S = 3.0
REALTIME_SESSION_S = 12.0


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
def decodes(tmp_path_factory: pytest.TempPathFactory) -> DecodeLog:
    """Every audio decode in the guarded server's processes."""
    return DecodeLog(tmp_path_factory.mktemp("decodes") / "decodes.log")


@pytest.fixture(scope="session")
def guarded(
    media_folder: Path, tmp_path_factory: pytest.TempPathFactory, decodes: DecodeLog
) -> Iterator[ServerProcess]:
    checkpoint.ensure_built("tiny")
    config = ServerConfig(
        model="tiny", port=free_port(), api_key=API_KEY, max_audio_seconds=MAX_SECONDS,
        max_body_mb=MAX_BODY_MB, max_queued_requests=MAX_IN_FLIGHT, media_folder=str(media_folder),
        max_queued_audio_s=MAX_QUEUED_AUDIO_S, realtime_max_sessions=REALTIME_SESSIONS,
        realtime_idle_timeout_s=REALTIME_IDLE_S, realtime_max_session_s=REALTIME_SESSION_S,
        enforce_eager=True,
    )  # fmt: skip
    with running_server(config, tmp_path_factory.mktemp("guarded"), decodes) as proc:
        yield proc


@pytest.fixture(scope="session")
def http(guarded: ServerProcess) -> Iterator[httpx.Client]:
    base = guarded.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def listener() -> Iterator[Listener]:
    probe = Listener()
    yield probe
    probe.close()
