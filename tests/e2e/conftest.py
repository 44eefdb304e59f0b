"""One real vLLM server on the tiny checkpoint for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from tests.conftest import DecodeLog, running_server

MODEL = "tiny"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "e2e":
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    return checkpoint.ensure_built(MODEL)


@pytest.fixture(scope="session")
def decodes(tmp_path_factory: pytest.TempPathFactory) -> DecodeLog:
    """Every audio decode in the session server's processes."""
    return DecodeLog(tmp_path_factory.mktemp("decodes") / "decodes.log")


@pytest.fixture(scope="session")
def server(
    tiny_path: Path, tmp_path_factory: pytest.TempPathFactory, decodes: DecodeLog
) -> Iterator[ServerProcess]:
    # float32 so that outputs can be compared exactly with transformers.
    config = ServerConfig(model=MODEL, port=free_port(), dtype="float32")
    with running_server(config, tmp_path_factory.mktemp("server"), decodes) as proc:
        yield proc


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="session")
def reference(tiny_path: Path) -> Any:
    """The seed's raw approach: transformers' processor and generate, in-process, float32."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_path, dtype=torch.float32)
    return processor, model.eval()
